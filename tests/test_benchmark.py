"""The benchmark script's measurements at toy sizes, each in its own process as the script runs them (the figures
themselves come from `scripts/benchmark.py`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
OURS = ["ours (SDAPM, dense)", "ours (SDAPM, top-8 of 32)", "ours (SDAPM, chunks of 4)",
        "ours (classic DNC memory, links)"]


def measure(**task) -> dict:
    """``scripts/benchmark.py _measure TASK``: one measurement in a subprocess, its JSON result."""
    result = subprocess.run([sys.executable, str(SCRIPT), "_measure", json.dumps(task), "--threads", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", OURS)
def test_a_training_step_of_each_of_our_copy_models(name):
    result = measure(kind="step", name=name, slots=32, steps=1, device="cpu")
    assert result["cpu_ms"] > 0 and result["params"] > 0


def test_a_step_s_operators_are_counted_at_the_top_level_only():
    sys.path.insert(0, str(SCRIPT.parent))
    import benchmark
    import torch

    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        torch.matmul(a, b).sum()  # matmul calls bmm (and views) inside it: two operators at the top level
    names = [event.name for event in profile.events()]
    assert "aten::bmm" in names and len([n for n in names if n.startswith("aten::")]) > 2
    assert benchmark.top_level_ops(profile.events()) == 2
    result = measure(kind="step", name="ours (SDAPM, chunks of 4)", slots=8, steps=1, device="cpu", count_ops=True)
    assert result["top_level_ops"] > 100


def test_the_peer_runs_when_the_bench_extra_is_installed():
    pytest.importorskip("dnc")
    assert measure(kind="step", name="pytorch-dnc 1.1.0 (DNC)", slots=4, steps=1, device="cpu")["cpu_ms"] > 0


def test_a_scaling_case_of_the_training_step_times_the_empty_memory_it_starts_from():
    result = measure(kind="scaling", slots=64, mode="train", steps=1, device="cpu")
    assert result["cpu_ms"] > result["forward_cpu_ms"] > 0 and result["empty_memory_cpu_ms"] > 0
    assert "empty_memory_cpu_ms" not in measure(kind="scaling", slots=64, mode="stream", steps=1, device="cpu")
    kept = measure(kind="scaling", slots=64, mode="train", steps=1, device="cpu", keep_freed=True)
    assert kept["cpu_ms"] > kept["forward_cpu_ms"] > 0


def test_capacity_recall_separates_consolidation_from_overwriting():
    kinds = {kind: measure(kind="capacity", kind_of_memory=kind, pairs=32, slots=8, word=16, batch=2, seed=0)["recall"]
             for kind in ("consolidating", "overwriting", "dnc")}
    assert kinds["consolidating"] > 0.95 and kinds["overwriting"] <= 0.3 and kinds["dnc"] <= 0.3


def test_act_compression_collapses_the_reads_into_one():
    result = measure(kind="act", dim=2, layers=3, gain=1.5, cells_per_layer=8, compressed=[1, 16], train=2000,
                     test=256, seed=0)
    assert result["steps_before"] == 3
    assert result["after"]["16"]["error"] < result["after"]["1"]["error"]  # more slots, finer pieces


def test_interleaved_rounds_warm_up_once_and_rotate_the_order():
    from sdapm_hf.reporting import interleaved_seconds

    calls = []
    seconds = interleaved_seconds({name: (lambda name=name: calls.append(name)) for name in "abc"}, rounds=3)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(s >= 0 for values in seconds.values() for s in values)

"""The benchmark script's measurements at toy sizes (the figures themselves come from `scripts/benchmark.py`)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import benchmark  # noqa: E402


@pytest.mark.parametrize("name", [n for n in benchmark.MODELS if n != benchmark.PEER])
def test_a_training_step_of_each_of_our_copy_models(name):
    result = benchmark.measure_step(name, slots=32, steps=1, device="cpu")
    assert result["cpu_ms"] > 0 and result["params"] > 0


def test_the_peer_runs_when_the_bench_extra_is_installed():
    pytest.importorskip("dnc")
    assert benchmark.measure_step(benchmark.PEER, slots=4, steps=1, device="cpu")["cpu_ms"] > 0


def test_capacity_recall_separates_consolidation_from_overwriting():
    kinds = {kind: benchmark.capacity_recall(kind, pairs=32, slots=8, word=16, batch=2, seed=0)
             for kind in ("consolidating", "overwriting", "dnc")}
    assert kinds["consolidating"] > 0.95 and kinds["overwriting"] <= 0.3 and kinds["dnc"] <= 0.3


def test_act_compression_collapses_the_reads_into_one():
    result = benchmark.act_case(dim=2, layers=3, gain=1.5, cells_per_layer=8, compressed=[1, 16], train=2000,
                                test=256, seed=0)
    assert result["steps_before"] == 3
    assert result["after"][16]["error"] < result["after"][1]["error"]  # more slots, finer pieces

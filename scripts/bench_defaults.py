#!/usr/bin/env python
"""The defaults of a first plugged model: how fast they train against the per-token settings that were the
default before, and what they learn in a first experiment.

* Step: ``DNCSDAPMForCausalLM.from_base(tiny random Llama, memory_slots=8, segment_length=32)`` with every other
  setting at its default, against the same with the former defaults (``chunk_size=None, clock_keys=True,
  consolidation="learned", predictive_writes=False``: the per-token recurrence); one forward and backward of a batch of 32 × 128 tokens,
  CPU time, median over interleaved rounds after one warm-up call each. Target: the defaults ≥ 20× faster.
* Learning: ``configs/defaults_mqar_distractors.yaml`` (the defaults on plugged MQAR with random distractors, four
  CPU minutes of training) through ``sdapm_hf.training.train`` at each seed; its test accuracy against chance and
  against the base alone. Target: ≥ 90% at every seed.

Usage::

    python scripts/bench_defaults.py [--rounds 3] [--seeds 0 1 2] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

from sdapm_hf import DNCSDAPMForCausalLM  # noqa: E402
from sdapm_hf.reporting import (  # noqa: E402
    add_page_arguments, code_revision, command_line, fmt, interleaved_seconds, machine, table, write_section,
)
from sdapm_hf.training import train  # noqa: E402
from sdapm_hf.training.arguments import load_experiment  # noqa: E402
from sdapm_hf.training.loop import build_model  # noqa: E402

CONFIG = REPO / "configs" / "defaults_mqar_distractors.yaml"
EXPERIMENT = load_experiment(CONFIG)  # its base, memory, batch and sequence length are the timed step's
BATCH, TOKENS, VOCAB = EXPERIMENT.batch_size, EXPERIMENT.task_args["seq_len"], EXPERIMENT.task_args["vocab_size"]
FORMER_DEFAULTS = {"chunk_size": None, "clock_keys": True, "consolidation": "learned", "predictive_writes": False}
VARIANTS = {"defaults (chunked, chunk_size=32, predictive writes)": {},
            "former defaults (per-token, learned consolidation, clock keys)": FORMER_DEFAULTS}
TARGET = 20.0
MARK = "bench_defaults:{}:{}"


def plugged(settings: dict) -> DNCSDAPMForCausalLM:
    """The model of ``CONFIG`` (its memory on its frozen tiny random Llama) with ``settings`` over its memory's,
    seeded."""
    torch.manual_seed(0)
    experiment = load_experiment(CONFIG, model={**EXPERIMENT.model, **settings})
    return build_model(experiment, None).train()


def measure_steps(rounds: int) -> dict[str, float]:
    """Median CPU seconds of one forward and backward (labels = ids) of every variant."""
    ids = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))
    models = {name: plugged(settings) for name, settings in VARIANTS.items()}

    def step(model: DNCSDAPMForCausalLM) -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad()

    seconds = interleaved_seconds({name: partial(step, model) for name, model in models.items()}, rounds)
    return {name: statistics.median(values) for name, values in seconds.items()}


def learn(seed: int) -> dict:
    """Train ``CONFIG`` at ``seed`` in a scratch folder: its final metrics (test accuracy with the memory and of the
    base alone, steps, CPU seconds)."""
    with tempfile.TemporaryDirectory() as scratch:
        return train(load_experiment(CONFIG, seed=seed, output_dir=str(Path(scratch) / "run")))


def section(args: argparse.Namespace, seconds: dict[str, float], learned: dict[int, dict]) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    defaults, former = seconds.values()
    speedup = former / defaults
    budget = EXPERIMENT.time_budget_s
    chance = 1 / (VOCAB - VOCAB // 2)  # values are drawn from the upper half of the vocabulary
    accuracies = [run["test/token_accuracy"] for run in learned.values()]
    rows = [[name, fmt(1000 * s), f"{budget / s:,.0f}"] for name, s in seconds.items()]
    runs = [[str(seed), f"{run['steps']:,}", f"{run['train_cpu_seconds']:.0f}", f"{run['test/token_accuracy']:.4f}",
             f"{run['test/base_alone/token_accuracy']:.4f}"] for seed, run in learned.items()]
    verdict = "met" if speedup >= TARGET else "**missed**"
    learns = "met" if min(accuracies) >= 0.9 else "**missed**"
    return f"""## Defaults: a first plugged model

Command: `{args.command}` (from the repository root)  
Date: {date}  
Code: {code_revision()}  
Machine: {args.machine}

Setup: `DNCSDAPMForCausalLM.from_base(tiny random Llama, memory_slots=8, segment_length=32)` (Llama: hidden 64,
2 layers, 4 heads, vocabulary {VOCAB}, window 32), every other setting at its default, against the same model with
the former defaults (`chunk_size=None, clock_keys=True, consolidation="learned"`, `predictive_writes=False`: the
per-token recurrence). One
forward and backward of a batch of {BATCH} × {TOKENS} tokens, CPU seconds on one thread, median of {args.rounds}
interleaved rounds after one warm-up call each.

{table(["settings", "CPU ms per forward + backward", f"such steps in {budget:.0f} CPU s"], rows)}

Then `configs/defaults_mqar_distractors.yaml` trains the defaults for {budget:.0f} CPU seconds on plugged MQAR with
random distractors (4 pairs in the first of four 32-token segments, queried after 64 more tokens; chance
{chance:.4f}) at each seed:

{table(["seed", "steps", "CPU s", "test accuracy with the memory", "the base alone"], runs)}

* defaults ≥ {TARGET:.0f}× faster than the former defaults: {speedup:.1f}× — {verdict}
* the defaults learn the first experiment (≥ 90% in its budget, every seed): mean
  {100 * statistics.mean(accuracies):.1f}%, worst {100 * min(accuracies):.1f}% — {learns}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    add_page_arguments(p)
    args = p.parse_args(argv)
    args.command = command_line(argv, "scripts/bench_defaults.py")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    args.machine = machine()
    body = section(args, measure_steps(args.rounds), {seed: learn(seed) for seed in args.seeds})
    print(body, flush=True)
    if args.write:
        write_section(args.out, "defaults", body, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())

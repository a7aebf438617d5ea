#!/usr/bin/env python
"""The memory on the real SmolLM2-135M-Instruct: generation with a KV cache and training throughput, against the
base alone, side by side in one run.

The plugged model is the one of ``configs/smollm2_passkey.yaml`` as it is measured (its ``eval_model``: 32 slots,
chunks of 8, segments of 256, reading layer 2 and adding at the top layer), with fresh memory weights; the base is
the frozen SmolLM2 of ``sdapm_hf.pretrained``. The input is the first 1,024 tokens of the haystack essays.

* Generation (batch 1, greedy, ``generate`` with its KV cache): the prompt, then G new tokens. Decoding tokens/s is
  ``G / (t(G + 1 new tokens) − t(1 new token))``, medians, so the prompt's prefill cancels. Three variants: the base's
  own ``generate`` (the whole prompt in its window, one cache), the plugged model with its memory, and the plugged
  model under ``ablation("base_alone")`` (the base segment by segment, the same code path without the memory).
  Target: the plugged model decodes at ≥ 0.7× the tokens/s of the base alone.
* Training (batch 1, 1,024 tokens, labels = the input): one forward and backward. The base's own step computes the
  gradients of all its weights over the whole window; the plugged step the memory's (the base frozen, segments of
  256). The base's forward alone (no grad) is the floor of any plugged step. Target: plugged tokens/s within 1.3× of
  the base's own forward and backward.

CPU time on one thread, medians of interleaved rounds after a warm-up call each (``--rounds``).

Usage::

    python scripts/bench_smollm2.py [--rounds 3] [--new-tokens 32] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parent.parent

from sdapm_hf.pretrained import model_path  # noqa: E402
from sdapm_hf.reporting import (  # noqa: E402
    add_page_arguments, code_revision, command_line, fmt, interleaved_cpu_seconds, machine, table, write_section,
)
from sdapm_hf.tasks.haystack import essays  # noqa: E402
from sdapm_hf.training.arguments import load_experiment  # noqa: E402
from sdapm_hf.training.loop import build_model  # noqa: E402

CONFIG = REPO / "configs" / "smollm2_passkey.yaml"
TOKENS = 1024
GENERATION_TARGET, TRAINING_TARGET = 0.7, 1.3
MARK = "bench_smollm2:{}:{}"


def models() -> tuple[AutoModelForCausalLM, torch.nn.Module]:
    """The base alone (its weights trainable, as in its own training) and the plugged model of ``CONFIG`` at its
    measured settings, seeded."""
    experiment = load_experiment(CONFIG)
    experiment = load_experiment(CONFIG, model={**experiment.model, **experiment.eval_model})
    torch.manual_seed(0)
    plugged = build_model(experiment, None)
    base = AutoModelForCausalLM.from_pretrained(model_path(experiment.base_model))
    return base, plugged


def prompt(base_name: str) -> torch.Tensor:
    """(1, TOKENS) ids: the start of the haystack essays, in their sorted order."""
    tokenizer = AutoTokenizer.from_pretrained(model_path(base_name))
    text = "\n\n".join(essays()[name] for name in sorted(essays()))
    return tokenizer(text, return_tensors="pt").input_ids[:, :TOKENS]


def generation(base, plugged, ids: torch.Tensor, new_tokens: int, rounds: int) -> dict[str, float]:
    """Decoding tokens/s of each variant (module docstring)."""
    ones = torch.ones_like(ids)

    def generate(model, n: int, ablation: str | None = None):
        def run() -> None:
            with torch.no_grad(), (plugged.ablation(ablation) if ablation else nullcontext()):
                model.generate(ids, attention_mask=ones, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return run

    variants = {"base alone (whole prompt in its window)": (base, None), "plugged, with the memory": (plugged, None),
                "plugged, base alone (segments of 256, no memory)": (plugged, "base_alone")}
    cases = {}
    for name, (model, ablation) in variants.items():
        for n in (1, new_tokens + 1):
            cases[f"{name}, {n} new"] = generate(model, n, ablation)
    seconds = {key: statistics.median(values) for key, values in interleaved_cpu_seconds(cases, rounds).items()}
    return {name: new_tokens / (seconds[f"{name}, {new_tokens + 1} new"] - seconds[f"{name}, 1 new"])
            for name in variants}


def training(base, plugged, ids: torch.Tensor, rounds: int) -> dict[str, float]:
    """Tokens/s of one forward and backward (or forward alone) of each variant (module docstring)."""

    def step(model) -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.no_grad():
            base(input_ids=ids)

    cases = {"base's own forward and backward (all its weights)": lambda: step(base),
             "plugged forward and backward (the memory's weights)": lambda: step(plugged),
             "base forward alone (no grad)": forward}
    seconds = interleaved_cpu_seconds(cases, rounds)
    return {name: ids.shape[1] / statistics.median(values) for name, values in seconds.items()}


def section(args: argparse.Namespace, decode: dict[str, float], train: dict[str, float]) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    base_rate, plugged_rate, segmented_rate = decode.values()
    own, plugged_train, forward = train.values()
    gen_rows = [[name, f"{rate:,.1f}", fmt(1000 / rate), f"{rate / base_rate:.2f}×"] for name, rate in decode.items()]
    train_rows = [[name, f"{rate:,.0f}", fmt(1000 * TOKENS / rate), f"{own / rate:.2f}×"]
                  for name, rate in train.items()]
    gen_ratio, step_ratio = plugged_rate / base_rate, own / plugged_train
    gen_verdict = "met" if gen_ratio >= GENERATION_TARGET else "**missed**"
    step_verdict = "met" if step_ratio <= TRAINING_TARGET else "**missed**"
    return f"""## The memory on the real SmolLM2: generation and training throughput

Command: `{args.command}` (from the repository root)  
Date: {date}  
Code: {code_revision()}  
Machine: {args.machine}

Setup: the frozen real SmolLM2-135M-Instruct (30 layers × 576, float32) alone and with the memory of
`configs/smollm2_passkey.yaml` at its measured settings (32 slots, word size 64, rank ≤ 8, chunks of 8, segments of
256 tokens, reading layer 2, adding at the top layer; fresh memory weights). Input: the first {TOKENS:,} tokens of
the haystack essays, batch 1. CPU time on one thread, medians of {args.rounds} interleaved rounds after one warm-up
call each. Neither side computes temporal links.

Generation with the KV cache (greedy `generate`; tokens/s of decoding = {args.new_tokens} / (time with
{args.new_tokens + 1} new tokens − time with 1), so the prefill of the prompt cancels):

{table(["variant", "tokens/s", "ms per token", "× base alone"], gen_rows)}

The plugged model's base attends within its current segment (at most 256 cached positions), the base alone over the
whole prompt and what it generated; against the base in the same segments the memory's own cost shows.

Training, one forward and backward of {TOKENS:,} tokens (labels = the input):

{table(["variant", "tokens/s", "CPU ms per step", "time × the base's own step"], train_rows)}

The plugged model adds at the top layer, so its backward runs through the LM head and the memory only; with the
memory deeper in the base it would also run through the layers above. Its step costs
{forward / plugged_train:.2f}× the base's forward alone.

* plugged generation ≥ {GENERATION_TARGET}× the base alone's tokens/s: {gen_ratio:.2f}× ({plugged_rate:.1f} against
  {base_rate:.1f} tokens/s; {plugged_rate / segmented_rate:.2f}× the base in the same segments) — {gen_verdict}
* plugged training within {TRAINING_TARGET}× of the base's own forward and backward: the plugged step takes
  {step_ratio:.2f}× the base's time ({plugged_train:,.0f} against {own:,.0f} tokens/s) — {step_verdict}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--new-tokens", type=int, default=32, help="decoded tokens G (default 32)")
    add_page_arguments(p)
    args = p.parse_args(argv)
    args.command = command_line(argv, "scripts/bench_smollm2.py")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    args.machine = machine()
    base, plugged = models()
    ids = prompt(load_experiment(CONFIG).base_model)
    body = section(args, generation(base.eval(), plugged.eval(), ids, args.new_tokens, args.rounds),
                   training(base.train(), plugged.train(), ids, args.rounds))
    print(body, flush=True)
    if args.write:
        write_section(args.out, "throughput", body, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

CPU time on one thread, medians of interleaved rounds after a warm-up call each (``--rounds``). With ``--device cuda``
the same cases run on the GPU, timed by the wall clock with the device synchronised around each call, and the base's
own steps are also given as a rate of model FLOPs against the float32 matrix product measured on the chip in the
same run (the models compute in float32); that section is written apart from the CPU's.

Usage::

    python scripts/bench_smollm2.py [--rounds 3] [--new-tokens 32] [--device cpu|cuda] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parent.parent

from sdapm_hf.pretrained import model_path  # noqa: E402
from sdapm_hf.reporting import (  # noqa: E402
    add_page_arguments, code_revision, command_line, device_name, fmt, interleaved_seconds, machine, table,
    write_section,
)
from sdapm_hf.tasks.haystack import essays  # noqa: E402
from sdapm_hf.training.arguments import load_experiment  # noqa: E402
from sdapm_hf.training.evaluation import load_base  # noqa: E402
from sdapm_hf.training.loop import build_model  # noqa: E402

CONFIG = REPO / "configs" / "smollm2_passkey.yaml"
TOKENS = 1024
GENERATION_TARGET, TRAINING_TARGET = 0.7, 1.3
MARK = "bench_smollm2:{}:{}"
MATMUL = 8192  # the side of the float32 matrix product that measures the chip's rate


def models(device: str) -> tuple[AutoModelForCausalLM, torch.nn.Module]:
    """The base alone (its weights trainable, as in its own training) and the plugged model of ``CONFIG`` at its
    measured settings, seeded, on ``device``."""
    experiment = load_experiment(CONFIG)
    experiment = load_experiment(CONFIG, model={**experiment.model, **experiment.eval_model})
    torch.manual_seed(0)
    plugged = build_model(experiment, None)
    base = load_base(experiment.base_model, "causal_lm")
    return base.to(device), plugged.to(device)


def prompt(base_name: str) -> torch.Tensor:
    """(1, TOKENS) ids: the start of the haystack essays, in their sorted order."""
    tokenizer = AutoTokenizer.from_pretrained(model_path(base_name))
    text = "\n\n".join(essays()[name] for name in sorted(essays()))
    return tokenizer(text, return_tensors="pt").input_ids[:, :TOKENS]


def generation(base, plugged, ids: torch.Tensor, new_tokens: int, rounds: int, device: str) -> dict[str, float]:
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
    seconds = {key: statistics.median(values) for key, values in interleaved_seconds(cases, rounds, device).items()}
    return {name: new_tokens / (seconds[f"{name}, {new_tokens + 1} new"] - seconds[f"{name}, 1 new"])
            for name in variants}


def training(base, plugged, ids: torch.Tensor, rounds: int, device: str) -> dict[str, float]:
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
    seconds = interleaved_seconds(cases, rounds, device)
    return {name: ids.shape[1] / statistics.median(values) for name, values in seconds.items()}


def forward_flops_per_token(base: AutoModelForCausalLM, context: int) -> float:
    """Model FLOPs of the base's forward per token over a causal context of ``context`` tokens: two per weight of
    every linear map (the LM head included) and two each for the scores and the weighted values of every layer's
    attention over (context + 1) / 2 positions on average."""
    linear = sum(m.weight.numel() for m in base.modules() if isinstance(m, nn.Linear))
    config = base.config
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    return 2 * linear + 4 * config.num_hidden_layers * width * (context + 1) / 2


def matmul_flops(device: str, size: int = MATMUL, repeats: int = 10) -> float:
    """FLOP/s of a float32 (size × size) matrix product on ``device``: the chip's float32 rate in this run."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = interleaved_seconds({"matmul": lambda: a @ b}, repeats, device)["matmul"]
    return 2 * size**3 / statistics.median(seconds)


def flops_lines(base, train: dict[str, float], device: str) -> str:
    """The base's own training step and forward as model FLOP/s against the chip's float32 matrix product."""
    peak = matmul_flops(device)
    forward = forward_flops_per_token(base, TOKENS)
    own, _, alone = train.values()

    def share(rate: float, factor: int) -> str:
        achieved = rate * factor * forward
        return f"{achieved / 1e12:,.1f} TFLOP/s, {achieved / peak:.1%}"

    return f"""
Model FLOPs ({forward / 1e6:,.0f} MFLOP per token for the base's forward over {TOKENS:,} tokens, three times that
for a forward and backward of all its weights) against a float32 {MATMUL}² matrix product on the same chip in the same
run, {peak / 1e12:,.1f} TFLOP/s: the base's own forward and backward {share(own, 3)} of it; its forward alone
{share(alone, 1)}.
"""


def section(args: argparse.Namespace, decode: dict[str, float], train: dict[str, float], flops: str = "") -> str:
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
Machine: {args.machine}; device: {device_name(args.device)}

Setup: the frozen real SmolLM2-135M-Instruct (30 layers × 576, float32) alone and with the memory of
`configs/smollm2_passkey.yaml` at its measured settings (32 slots, word size 64, rank ≤ 8, chunks of 8, segments of
256 tokens, reading layer 2, adding at the top layer; fresh memory weights). Input: the first {TOKENS:,} tokens of
the haystack essays, batch 1. {"CPU time on one thread" if args.device == "cpu" else "Wall time on the GPU"}, medians of {args.rounds}
interleaved rounds after one warm-up call each. Neither side computes temporal links.

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
{flops}
* plugged generation ≥ {GENERATION_TARGET}× the base alone's tokens/s: {gen_ratio:.2f}× ({plugged_rate:.1f} against
  {base_rate:.1f} tokens/s; {plugged_rate / segmented_rate:.2f}× the base in the same segments) — {gen_verdict}
* plugged training within {TRAINING_TARGET}× of the base's own forward and backward: the plugged step takes
  {step_ratio:.2f}× the base's time ({plugged_train:,.0f} against {own:,.0f} tokens/s) — {step_verdict}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--new-tokens", type=int, default=32, help="decoded tokens G (default 32)")
    p.add_argument("--device", default="cpu", help="where the models run (cpu, cuda)")
    add_page_arguments(p)
    args = p.parse_args(argv)
    args.command = command_line(argv, "scripts/bench_smollm2.py")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    args.machine = machine()
    base, plugged = models(args.device)
    ids = prompt(load_experiment(CONFIG).base_model).to(args.device)
    decode = generation(base.eval(), plugged.eval(), ids, args.new_tokens, args.rounds, args.device)
    train = training(base.train(), plugged.train(), ids, args.rounds, args.device)
    cuda = torch.device(args.device).type == "cuda"
    body = section(args, decode, train, flops_lines(base, train, args.device) if cuda else "")
    print(body, flush=True)
    if args.write:
        write_section(args.out, "throughput-cuda" if cuda else "throughput", body, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())

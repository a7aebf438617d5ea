"""`make demo-memory`: the SDAPM memory on its own, storing far more pairs than it has slots.

Writes a stream of random unit (key, value) pairs into a fixed number of slots, consolidating the closest pair
of slots whenever the memory is full, then reads every key back and decodes it to the nearest stored value.
The same stream with consolidation off (the oldest slot is overwritten) is the baseline. Finally a self-feeding
stream checks that stored norms stay under the documented bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from . import sdapm
from .sdapm import SDAPMSettings


def stream_recall(
    settings: SDAPMSettings, pairs: int, batch: int, consolidate: bool, seed: int
) -> tuple[float, sdapm.MemoryState]:
    """Write a stream of random unit pairs (consolidating the closest pair when full, or overwriting), then
    return the fraction of keys whose read decodes to their own value, and the memory."""
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(batch, pairs, settings.word_size, generator=g), dim=-1)
    values = F.normalize(torch.randn(batch, pairs, settings.word_size, generator=g), dim=-1)
    state = write_stream(settings, keys, values, consolidate)
    decoded = torch.cdist(read_back(settings, state, keys), values).argmin(-1)
    return (decoded == torch.arange(pairs)).float().mean().item(), state


def write_stream(
    settings: SDAPMSettings, keys: torch.Tensor, values: torch.Tensor, consolidate: bool
) -> sdapm.MemoryState:
    """An empty memory after the pairs keys, values (B, P, W) written one at a time, the closest pair of slots
    merged whenever it is full (``consolidate``; otherwise a full memory overwrites its least-used slot)."""
    state = sdapm.init_state(settings, keys.shape[0])
    for i in range(keys.shape[1]):
        if consolidate:
            full = sdapm.is_full(state)
            state = sdapm.consolidate(state, sdapm.closest_pair_selection(state), settings, 2, mask=full)
        state = sdapm.write(state, keys[:, i], values[:, i], settings)
    return state


def read_back(settings: SDAPMSettings, state: sdapm.MemoryState, keys: torch.Tensor) -> torch.Tensor:
    """(B, P, W) the memory's sharp read of each key (B, P, W), one head per key."""
    heads = dataclasses.replace(settings, read_heads=keys.shape[1])
    state = dataclasses.replace(state, read_weights=torch.zeros(*keys.shape[:2], settings.slots))
    out, _ = sdapm.read(state, keys, torch.full(keys.shape[:2], 1e4), heads)
    return out


def largest_read_norm(settings: SDAPMSettings, steps: int, batch: int, seed: int) -> float:
    """Largest read norm on a stream that feeds its reads back as keys and values (design study §5.3)."""
    g = torch.Generator().manual_seed(seed)
    w = settings.word_size
    state = sdapm.init_state(settings, batch)
    y = torch.zeros(batch, w)
    largest = 0.0
    for _ in range(steps):
        fresh = torch.rand(batch, 1, generator=g) < 0.5
        x = torch.where(fresh, torch.randn(batch, w, generator=g), y + 0.1 * torch.randn(batch, w, generator=g))
        out, state = sdapm.read(state, x[:, None], torch.full((batch, 1), 10.0), settings, check=False)
        y = out[:, 0]
        if not torch.isfinite(y).all():  # the stream overflowed (only without the stability rules)
            return float("inf")
        full = sdapm.is_full(state)
        state = sdapm.consolidate(state, state.read_weights[:, 0], settings, 8, mask=full, check=False)
        state = sdapm.write(state, x, y, settings, check=False)
        largest = max(largest, y.norm(dim=-1).max().item())
    return largest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--word-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = SDAPMSettings(slots=args.slots, word_size=args.word_size)

    print(f"SDAPM memory: {settings.slots} slots, word size {settings.word_size}, batch {args.batch}")
    print(f"{'pairs':>6} {'pairs/slot':>10} {'recall, consolidating':>22} {'recall, overwriting':>20} {'s':>6}")
    for per_slot in (1, 4, 8, 16, 24, 32):
        pairs = per_slot * settings.slots
        start = time.perf_counter()
        with_merge, _ = stream_recall(settings, pairs, args.batch, True, args.seed)
        without, _ = stream_recall(settings, pairs, args.batch, False, args.seed)
        print(f"{pairs:>6} {per_slot:>10} {with_merge:>22.3f} {without:>20.3f} {time.perf_counter() - start:>6.1f}")

    stream = SDAPMSettings(slots=64, word_size=args.word_size)
    bare = dataclasses.replace(stream, ridge=0.0, value_max=None, gain_max=None, mass_max=None, normalize_words=False)
    bound = sdapm.stability_bound(stream)
    print(f"\nself-feeding stream, 2000 steps: largest read norm with the stability rules "
          f"{largest_read_norm(stream, 2000, args.batch, args.seed):.2f} (bound {bound:.1f}); "
          f"without them {largest_read_norm(bare, 2000, args.batch, args.seed):.3g}")


if __name__ == "__main__":
    main()

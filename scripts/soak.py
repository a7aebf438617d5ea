"""Soak: stream tokens through a DNC-SDAPM model in pieces, carrying ``memory_state``, as streaming inference does.

    python scripts/soak.py --steps 100000            # the full soak (docs/reliability.md has its result)
    python scripts/soak.py --steps 2000 --piece 50   # the short version the tests run

Every memory step writes (and, the memory being full after ``memory_slots`` steps, consolidates) through the
model's own controller. Checked along the way: every output finite, every stored value and key norm within the
SDAPM's bounds (‖value‖ ≤ value_max, ‖key‖ ≤ 1, ‖read‖ ≤ ``stability_bound``), and the process's resident memory
flat: after the first tenth of the stream it may grow by at most ``--rss-slack-mb``. Prints one JSON line; the
exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from sdapm_hf import DNCSDAPMConfig, DNCSDAPMForCausalLM
from sdapm_hf.access import memory_settings
from sdapm_hf.sdapm import stability_bound


def resident_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc``; peak RSS elsewhere)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * resource.getpagesize() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def soak(steps: int, piece: int, seed: int, chunk_size: int | None) -> dict[str, float]:
    torch.manual_seed(seed)
    config = DNCSDAPMConfig(vocab_size=64, hidden_size=64, controller_size=64, memory_slots=16, word_size=32,
                            consolidation="auto", clock_keys=chunk_size is None, chunk_size=chunk_size)
    model = DNCSDAPMForCausalLM(config).eval()
    settings = memory_settings(config)
    tokens = torch.Generator().manual_seed(seed)
    state, done = None, 0
    largest = {"value": 0.0, "key": 0.0, "read": 0.0}
    rss_start = rss_peak = None
    started = time.perf_counter()
    with torch.no_grad():
        while done < steps:
            ids = torch.randint(0, config.vocab_size, (1, min(piece, steps - done)), generator=tokens)
            out = model(input_ids=ids, memory_state=state)
            state = out.memory_state
            done += ids.shape[1]
            if not torch.isfinite(out.logits).all():
                raise FloatingPointError(f"non-finite output after {done} steps")
            for name, key in (("value", "memory.value"), ("key", "memory.key"), ("read", "reads")):
                largest[name] = max(largest[name], state[key].norm(dim=-1).max().item())
            if rss_start is None and done >= steps // 10:
                rss_start = resident_mb()
            if rss_start is not None:
                rss_peak = max(rss_peak or 0.0, resident_mb())
    return {
        "steps": done,
        "seconds": time.perf_counter() - started,
        "largest_value_norm": largest["value"],
        "value_bound": settings.value_max,
        "largest_key_norm": largest["key"],
        "largest_read_norm": largest["read"],
        "read_bound": stability_bound(settings),
        "rss_mb_after_first_tenth": rss_start,
        "rss_mb_peak_after": rss_peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--piece", type=int, default=200, help="tokens per call (memory_state carried between)")
    parser.add_argument("--chunk-size", type=int, help="chunked mode (default: the per-token recurrence)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-slack-mb", type=float, default=64.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = soak(args.steps, args.piece, args.seed, args.chunk_size)
    failures = [
        name
        for name, ok in (
            ("value norm", result["largest_value_norm"] <= result["value_bound"] + 1e-5),
            ("key norm", result["largest_key_norm"] <= 1 + 1e-5),
            ("read norm", result["largest_read_norm"] <= result["read_bound"]),
            ("resident memory", result["rss_mb_peak_after"] - result["rss_mb_after_first_tenth"] <= args.rss_slack_mb),
        )
        if not ok
    ]
    print(json.dumps({**result, "failures": failures}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

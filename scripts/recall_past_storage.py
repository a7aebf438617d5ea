#!/usr/bin/env python
"""A trained associative-recall run past what its memory stores exactly: the D pairs, then filler, then the D queries.

For each ratio ρ of the writes before the first query (one per position: the per-token model writes at every
token) to the memory's exact storage (slots × (max_rank + 1) pairs), the run's test split is rebuilt with
``queries_after`` = ρ · exact − 2D filler tokens between the pairs and the queries, which come packed at the end,
with two fillers:

* ``repeated``: one token (0) again and again: repeated pairs, which consolidation merges without loss;
* ``random``: tokens drawn from the whole vocabulary, keys and values among them: nothing to compress.

Each is measured with the run's consolidation and with ``consolidation="off"`` (a full memory then overwrites its
least-used slot), which tells what consolidation holds; a memory without consolidation (the classic DNC) once, on
the inputs of the SDAPM's ratios (``--exact``). The run was trained without filler (its queries follow its
pairs), so this also measures how the write gates treat inputs they never saw. Writes one JSON: the exact storage,
and per filler, ratio and consolidation the task arguments and the test split's token and sequence accuracy.

    python scripts/recall_past_storage.py runs/associative_recall_seed0 \\
        --out docs/runs/associative_recall/seed0/past_storage.json
    python scripts/recall_past_storage.py runs/associative_recall_dnc_equal_cpu_seed0 --exact 136 \\
        --out docs/runs/associative_recall_dnc_equal_cpu/seed0/past_storage.json   # a baseline on the same inputs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdapm_hf.training import evaluate_model, load_run

FILLERS = {"repeated": False, "random": True}  # filler name: MQAR's random_non_queries
UNUSED_SPLITS = {"train_size": 1, "validation_size": 1}  # only the test split is evaluated


def past_storage(run: Path, ratios: list[float], test_size: int, exact: int | None = None) -> dict:
    """The evaluations of the module docstring for the run folder ``run``; ``exact`` sets the writes that the
    ratios count in (default: the run's own exact storage; give the SDAPM's to put a baseline on the same inputs)."""
    config = json.loads((run / "model" / "config.json").read_text())
    consolidating = config["memory_type"] == "sdapm"
    if exact is None:
        if not consolidating:
            raise ValueError(f"{run} holds a {config['memory_type']!r} memory: give the writes to count in (--exact)")
        exact = config["memory_slots"] * (config["max_rank"] + 1)
    pairs = json.loads((run / "experiment.json").read_text())["task_args"]["num_kv_pairs"]
    results = []
    for filler, random_tokens in FILLERS.items():
        for ratio in ratios:
            gap = round(ratio * exact) - 2 * pairs
            if gap < 0:
                raise ValueError(f"ratio {ratio}: {2 * pairs} pair tokens already exceed {ratio} x {exact} writes")
            task_args = {"seq_len": 4 * pairs + gap, "queries_after": gap, "random_non_queries": random_tokens,
                         "test_size": test_size}
            for consolidation in (config["consolidation"], "off") if consolidating else ("none (no consolidation)",):
                overrides = {"consolidation": consolidation} if consolidating else {}
                _, model, dataset = load_run(run, {**task_args, **UNUSED_SPLITS}, final=True, **overrides)
                scores = evaluate_model(model, dataset["test"])
                results.append({"filler": filler, "ratio": ratio, "writes_before_queries": 2 * pairs + gap,
                                "consolidation": consolidation, "task_args": task_args, **scores})
                print(json.dumps(results[-1]), flush=True)
    return {"exact_storage": exact, "pairs": pairs, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished associative-recall run folder")
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--test-size", type=int, default=512)
    parser.add_argument("--exact", type=int, help="the writes the ratios count in (required for a memory without "
                                                  "consolidation; default the run's exact storage)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out = past_storage(args.run, args.ratios, args.test_size, args.exact)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

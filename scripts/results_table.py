"""Print markdown rows for finished runs: command, seed, steps, wall and CPU time, and chosen metrics.

    python scripts/results_table.py runs/copy_beyond_capacity runs/copy_beyond_capacity_dnc \
        --metrics test_len32/token_accuracy test_len64/token_accuracy

Each run folder holds ``experiment.json`` (the arguments it ran with) and ``metrics.json`` (what training
reported at its end). The command column is the YAML it came from, named by the run's ``output_dir``.

    python scripts/results_table.py runs/copy_beyond_capacity_long --stability test_len64/token_accuracy

prints instead, from ``log.jsonl``, the training loss per quarter of the run (median and largest), the largest
stored value norm and read norm seen, and the evaluations over time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(run: Path, metrics: list[str]) -> str:
    experiment = json.loads((run / "experiment.json").read_text())
    results = json.loads((run / "metrics.json").read_text())
    config = f"configs/{run.name}.yaml"
    values = [f"{results[m]:.4f}" if m in results else "–" for m in metrics]
    return (
        f"| `{run.name}` | `sdapm-hf train {config}` | {experiment['seed']} | {results['steps']} | "
        f"{results['train_seconds'] / 60:.1f} | {results.get('train_cpu_seconds', float('nan')) / 60:.1f} | "
        + " | ".join(values)
        + " |"
    )


def stability(run: Path, metric: str) -> None:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    last = train[-1]["step"]
    print("| quarter of training | steps | median loss | largest loss | largest ‖value‖ | largest ‖read‖ |")
    print("|---|---|---|---|---|---|")
    for q in range(4):
        part = [r for r in train if q * last / 4 < r["step"] <= (q + 1) * last / 4]
        losses = sorted(r["loss"] for r in part)
        print(
            f"| {q + 1} | {part[0]['step']}–{part[-1]['step']} | {losses[len(losses) // 2]:.4f} | {losses[-1]:.4f} | "
            f"{max(r.get('memory_value_max', 0) for r in part):.3f} | {max(r.get('read_max', 0) for r in part):.3f} |"
        )
    evaluations = [(r["step"], r[metric]) for r in records if metric in r]
    print(f"\n{metric} by step: " + ", ".join(f"{step}: {value:.4f}" for step, value in evaluations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--metrics", nargs="+", default=[])
    parser.add_argument("--stability", metavar="METRIC", help="summarise log.jsonl of the (single) run instead")
    args = parser.parse_args()
    if args.stability:
        stability(args.runs[0], args.stability)
        return
    print("| run | command | seed | steps | wall min | CPU min | " + " | ".join(args.metrics) + " |")
    print("|---" * (6 + len(args.metrics)) + "|")
    for run in args.runs:
        print(row(run, args.metrics))


if __name__ == "__main__":
    main()

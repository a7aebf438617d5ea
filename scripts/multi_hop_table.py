#!/usr/bin/env python
"""A trained multi-hop recall run, answer by answer: accuracy and inner read steps against the number of hops asked.

Each answer of the run's test split (``sdapm_hf.tasks.multi_hop_recall``: k links to follow from a start symbol) is
scored and its ponder steps counted (``example_outcomes``); the answers are grouped by k. Adaptive computation
that follows the chain should take more inner steps for more hops; a fixed loop takes the same number for all.
Prints and writes one JSON: per k the answers, their accuracy and mean inner steps, and the totals. For a PonderNet
run also ``by_step``: per k the accuracy had every answer been read at inner step n = 1 … cap (every read runs, as in
training, with dropout off), which shows whether the n-th read follows n links. For an ACT run also
``as_fixed_loop``: per k the accuracy of the same weights run as a fixed loop of n reads (``act_mode="fixed"``,
``act_max_steps=n``; the halting unit unused), n = 1 … cap. ACT's inner reads do not depend on its halting, but
there the read that goes on to the next position is y_n instead of ACT's mixture, so later positions see other
inputs than in ACT. ``--set KEY=VALUE`` changes the trained model's config before scoring (e.g. ACT's
``act_epsilon``).

    python scripts/multi_hop_table.py runs/multi_hop_act_seed0 --out docs/runs/multi_hop_act/seed0/by_hops.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sdapm_hf.training import example_outcomes, load_run
from sdapm_hf.training.arguments import parse_assignment
from sdapm_hf.training.data import batches
from sdapm_hf.training.evaluation import batch_positions


def by_hops(run: Path, split: str = "test", **settings) -> dict:
    """The module docstring's table for the run folder ``run``, its model's config changed by ``settings``."""
    _, model, dataset = load_run(run, **settings)
    data = dataset[split]
    if "hops" not in data.column_names:
        raise ValueError(f"{run} was not trained on multi_hop_recall: its {split} split has no 'hops' column")
    out = example_outcomes(model, data)
    hops = np.concatenate([np.asarray(h) for h in data["hops"]])
    steps = out["ponder_steps"] if out["ponder_steps"].size else np.ones(len(hops))
    rows = {}
    for k in sorted(set(hops.tolist())):
        chosen = hops == k
        rows[str(k)] = {"answers": int(chosen.sum()), "accuracy": float(out["answer_correct"][chosen].mean()),
                        "ponder_mean": float(steps[chosen].mean())}
    table = {"split": split, "answers": len(hops), "accuracy": float(out["answer_correct"].mean()),
             "ponder_mean": float(steps.mean()), "by_hops": rows, **({"settings": settings} if settings else {})}
    if model.config.act_mode == "pondernet":
        table["by_step"] = per_hop_count(answers_by_step(model, data), hops)
    if model.config.act_mode == "act":
        right = np.stack([example_outcomes(load_run(run, **{**settings, "act_mode": "fixed", "act_max_steps": n})[1],
                                           data)["answer_correct"]
                          for n in range(1, model.config.act_max_steps + 1)], 1)
        table["as_fixed_loop"] = per_hop_count(right, hops)
    return table


def per_hop_count(right: np.ndarray, hops: np.ndarray) -> dict[str, list[float]]:
    """Per hop count k, the share of its answers right at each inner step n: right (P, K) bool, answers in the order
    of hops (P,)."""
    return {str(k): [float(a) for a in right[hops == k].mean(0)] for k in sorted(set(hops.tolist()))}


@torch.no_grad()
def answers_by_step(model, data, batch_size: int = 64) -> np.ndarray:
    """(P, K) bool: each answer of ``data`` (examples in order, positions in order) right when read at inner step n.
    The ponder loop alone is put in training mode, where every read runs; the rest stays in evaluation."""
    model.eval()
    ponder = model.model.memory.ponder
    ponder.train()
    rows = []  # per example, in batch order: (A_e, K)
    try:
        for batch in batches(data, batch_size):
            out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            predicted = model.lm_head(out.ponder_hidden[:, :-1]).argmax(-1)  # (B, T − 1, K)
            target = batch["labels"][:, 1:]
            counted = target != -100
            rows += [(predicted[e] == target[e, :, None])[counted[e]] for e in range(len(target))]
    finally:
        ponder.eval()
    return torch.cat([rows[k] for k in batch_positions(data, batch_size)]).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished multi_hop_recall run folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", nargs="*", default=[], type=parse_assignment, metavar="KEY=VALUE",
                        help="changes to the trained model's config")
    args = parser.parse_args(argv)
    table = by_hops(args.run, args.split, **dict(args.set))
    print(json.dumps(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()

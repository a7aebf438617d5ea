"""Where a chunked run's reads go at the queried positions of its test split, and which slot holds the first chunk.

    python scripts/query_reads.py runs/plugin_llama_mqar_long [--examples 32] [--task-args seq_len=512 ...]

For every labelled position (the model predicts the label from the position before it) the script takes, from the
model's ``memory_states`` (one entry per chunk), the slot with the largest read weight at that position, that
weight, and the age of the slot when it was read (0: written by the chunk just before). It also follows the slot
the first chunk was written to: whether that slot still holds exactly what the first chunk wrote after the last
chunk (not merged by a consolidation, not overwritten). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from sdapm_hf.training.arguments import parse_assignment
from sdapm_hf.training.evaluation import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--task-args", nargs="*", default=[], type=parse_assignment, metavar="KEY=VALUE")
    args = parser.parse_args()
    task_args = dict(args.task_args)
    experiment, model, dataset = load_run(args.run, {"train_size": 0, "validation_size": 0, **task_args})
    if model.config.chunk_size is None:
        raise ValueError(f"{args.run} does not run in chunked mode (chunk_size is None)")
    test = dataset["test"].select(range(min(args.examples, len(dataset["test"]))))
    ids, labels = torch.tensor(test["input_ids"]), torch.tensor(test["labels"])
    with torch.no_grad():
        out = model.eval()(input_ids=ids, output_memory_states=True)
    updates = out.memory_states
    ages, weights, correct = Counter(), [], 0
    rows, positions = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    for row, pos in zip(rows.tolist(), positions.tolist()):
        i = next(i for i, u in enumerate(updates) if u.start <= pos < u.end)
        w = updates[i].read_weights[row, pos - updates[i].start, 0]
        ages[int(updates[i - 1].memory["age"][row, w.argmax()])] += 1  # the memory this read was made against
        weights.append(float(w.max()))
        correct += int(out.logits[row, pos].argmax() == labels[row, pos + 1])
    written = [u for u in updates[1:] if u.write_weights.any()]
    first, last = written[0].memory, updates[-1].memory
    slot = first["write_weights"].argmax(-1)
    rows_all = torch.arange(len(slot))
    kept = (last["key"][rows_all, slot] == first["key"][rows_all, slot]).all(-1)
    print(json.dumps({
        "run": args.run, "task_args": task_args, "queries": len(weights), "accuracy": correct / len(weights),
        "largest_read_weight_mean": sum(weights) / len(weights),
        "age_of_the_most_read_slot": dict(sorted(ages.items())),
        "first_chunk_kept_exactly": float(kept.float().mean()),
    }, indent=2))


if __name__ == "__main__":
    main()

"""Where a chunked run's reads go at the queried positions of its test split, and which slot holds the first chunk.

    python scripts/query_reads.py runs/plugin_llama_mqar_long [--examples 32] [--task-args seq_len=512 ...]

For every labelled position (the model predicts the label from the position before it) the script records, from
the chunk read at that position, the slot with the largest read weight, that weight, and the age of the slot (0:
written by the chunk just before). It also follows the slot the first chunk was written to: whether that slot
still holds exactly what the first chunk wrote after the last chunk (not merged by a consolidation, not
overwritten). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from sdapm_hf.cli import parse_assignment
from sdapm_hf.core import MemoryCore
from sdapm_hf.training.evaluation import load_run


def recorded_chunks(access):
    """Wrap ``access.read_chunk`` and ``access.write_chunk`` on this instance; returns the two record lists."""
    reads, writes = [], []
    read_chunk, write_chunk = access.read_chunk, access.write_chunk

    def read(iface, state):
        out, weights = read_chunk(iface, state)
        reads.append((weights.detach(), state.memory.age.detach().clone()))
        return out, weights

    def write(state, chunk, mask):
        new = write_chunk(state, chunk, mask)
        writes.append((new.memory.write_weights.detach().argmax(-1), new.memory.key.detach().clone()))
        return new

    access.read_chunk, access.write_chunk = read, write
    return reads, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--task-args", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    task_args = dict(parse_assignment(item) for item in args.task_args)
    experiment, model, dataset = load_run(args.run, {"train_size": 0, "validation_size": 0, **task_args})
    chunk = model.config.chunk_size
    if chunk is None:
        raise ValueError(f"{args.run} does not run in chunked mode (chunk_size is None)")
    test = dataset["test"].select(range(min(args.examples, len(dataset["test"]))))
    ids, labels = torch.tensor(test["input_ids"]), torch.tensor(test["labels"])
    core = next(module for module in model.modules() if isinstance(module, MemoryCore))
    reads, writes = recorded_chunks(core.access)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits
    ages, weights, correct = Counter(), [], 0
    rows, positions = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    for row, pos in zip(rows.tolist(), positions.tolist()):
        read_weights, age = reads[pos // chunk]
        w = read_weights[row, pos % chunk, 0]
        ages[int(age[row, w.argmax()])] += 1
        weights.append(float(w.max()))
        correct += int(logits[row, pos].argmax() == labels[row, pos + 1])
    (slot, keys_then), (_, keys_now) = writes[0], writes[-1]
    rows_all = torch.arange(len(slot))
    kept = (keys_now[rows_all, slot] == keys_then[rows_all, slot]).all(-1)
    print(json.dumps({
        "run": args.run, "task_args": task_args, "queries": len(weights), "accuracy": correct / len(weights),
        "largest_read_weight_mean": sum(weights) / len(weights),
        "age_of_the_most_read_slot": dict(sorted(ages.items())),
        "first_chunk_kept_exactly": float(kept.float().mean()),
    }, indent=2))


if __name__ == "__main__":
    main()

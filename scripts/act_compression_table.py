#!/usr/bin/env python
"""ACT's chained reads compressed into one consolidated read, in a trained multi-hop recall run.

The seed's idea: record what the ponder loop was given and what it returned as (key, value) pairs, consolidate them
into one linear layer, and the next time the same input comes one read of that layer replaces the loop's reads.
Here, on a stream that repeats its inputs: each test sequence of the run's split (pairs, then Q questions) is
followed by its Q questions again. Per sequence, the loop's first read word ``x_0`` (R·W; each head's word
unit-normalised, as the memory reads it: by its direction) and the read it passed on ``y`` at each question of the
first pass become one SDAPM slot (``sdapm.write_chunk``: the ridge least-squares affine map through the Q pairs,
exact for Q ≤ R·W + 1 affinely independent keys). At each repeated question the loop's output is replaced by that
slot's map applied to the loop's first read word there (one read; ``consolidated_read``); everything else runs as
trained (the loop still runs underneath, so the memory's state after the question is the loop's; its output is not
used). For comparison the same pairs are also kept as Q raw slots, read once by the nearest key
(``raw_slots_read``), or as a table that returns the nearest key's value (``lookup_read``), and, as the bound of any
answer keyed on the question, the first occurrence's recorded ``y`` itself is replayed (not a read: it uses which
question is repeated). A control takes the repeats' place with as many new questions (the task's sequences drawn
with twice the questions; the loop answers the second half): what the loop scores that far into a stream when
nothing repeats. Nine passes are scored per answer, grouped by the number of hops: the first questions, the
repeats answered by the loop, by the consolidated slot, the raw slots, the table and the replay, and the control's
new questions answered by the loop; and, gated, the consolidated slot only where a repeat's first read word has a
recorded key at cosine ≥ τ (``GATES``), the loop elsewhere, after the read that found no key near enough (its
reads plus one): how much of the loop one read replaces at what accuracy. With, per repeat and one-read or gated
pass, the cosine between its first read word and its first occurrence's (``key_cosine``) and the distance of the
answer's read from the loop's output at the first occurrence relative to that output's norm (``read_error``).
``--memory-slots`` evaluates the run with another number of slots (the model's config changed as it loads; no
weight depends on it); ``--queries Q`` with Q questions per sequence before their repeats.

    python scripts/act_compression_table.py runs/multi_hop_act_seed0 --out docs/runs/multi_hop_act/seed0/compression.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sdapm_hf import sdapm
from sdapm_hf.act import PonderStep
from sdapm_hf.training import example_outcomes, load_run
from sdapm_hf.training.evaluation import batch_positions, build_experiment_task

QUESTION = 4  # tokens of a question: QUERY, start symbol, hop token, answer
HOP_TOKEN = 2  # the hop token's place in a question: the answer is predicted there
BATCH_SIZE = 64


def repeated_questions(split):
    """Each sequence followed by its questions again (labels too); ``hops`` repeated."""
    def repeat(row: dict) -> dict:
        tail = QUESTION * len(row["hops"])
        return {"input_ids": row["input_ids"] + row["input_ids"][-tail:], "labels": row["labels"] + row["labels"][-tail:],
                "attention_mask": row["attention_mask"] + row["attention_mask"][-tail:],
                "length": row["length"] + tail, "hops": row["hops"] + row["hops"]}
    return split.map(repeat)


def consolidated_read(keys: torch.Tensor, values: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """keys, values (B, Q, D) the loop's first read words and outputs; words (B, D) → (B, D) the read of one slot
    written with the Q pairs (its affine map applied to ``words``)."""
    b, q, d = keys.shape
    settings = sdapm.SDAPMSettings(slots=1, word_size=d, max_rank=q, normalize_words=False, value_max=None)
    state = sdapm.write_chunk(sdapm.init_state(settings, b, keys.dtype), keys, values, settings,
                              gates=torch.ones(b, q, dtype=keys.dtype))
    key, maps, value = (t[:, 0] for t in sdapm.slot_maps(state))
    return ((words - key)[:, None] @ maps)[:, 0] + value


def nearest(keys: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """keys (B, Q, D), words (B, D) → (B,) the index of each word's nearest key in cosine."""
    return torch.nn.functional.cosine_similarity(words[:, None], keys, dim=-1).argmax(-1)


def raw_slots_read(keys: torch.Tensor, values: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """The same Q pairs kept as Q raw slots (no consolidation), read sharply: the map of the slot whose key is
    nearest in cosine, ``(words − k_n) + v_n`` (a raw slot's map), (B, D)."""
    pick, n = torch.arange(len(keys)), nearest(keys, words)
    return words - keys[pick, n] + values[pick, n]


def lookup_read(keys: torch.Tensor, values: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """The same Q pairs as a table: the value of the key nearest in cosine, ``v_n`` (what a classic DNC memory's
    read returns at sharp addressing; no map of the word), (B, D)."""
    return values[torch.arange(len(keys)), nearest(keys, words)]


# a pass that answers the repeats with one read: (keys, values, words, the repeated question's index) → reads
OneRead = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def of_words(read: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> OneRead:
    """A read of the words alone as a ``OneRead`` (the question's index unused)."""
    return lambda keys, values, words, question: read(keys, values, words)


READS: dict[str, OneRead] = {
    "consolidated": of_words(consolidated_read), "raw_slots": of_words(raw_slots_read), "lookup": of_words(lookup_read),
    "replayed": lambda keys, values, words, question: values[:, question]}


# Cosines a repeat's first read word must reach with its nearest recorded key for the gated passes to answer it
# with the consolidated slot; below, the loop answers it, after the read that found no key near enough.
GATES = (0.95, 0.99)


class Consolidating:
    """A forward hook on the ponder loop that records the first pass's questions and answers the repeats with
    ``read`` (the position of each call counted per forward); with ``gate``, only the repeats whose first read word
    has a recorded key at cosine ≥ ``gate``, the others with the loop's own answer and its reads plus one."""

    def __init__(self, first: list[int], repeats: list[int], read: OneRead, gate: float | None = None) -> None:
        self.first, self.repeats, self.read, self.gate = first, repeats, read, gate
        self.position, self.keys, self.values = 0, [], []
        # per repeated question (sequences in batch order, questions in order): the cosine between its first read
        # word and that of its first occurrence, and the read's distance from the loop's output there relative to
        # that output's norm
        self.key_cosine: list[torch.Tensor] = []
        self.read_error: list[torch.Tensor] = []

    def __call__(self, module, args, output: PonderStep) -> PonderStep | None:
        position, self.position = self.position, self.position + 1
        words = torch.nn.functional.normalize(args[1], dim=-1).flatten(1)  # (B, R·W) the loop's first read word
        if position in self.first:
            self.keys.append(words)
            self.values.append(output.reads.flatten(1))
        if position not in self.repeats:
            return None
        keys, values = torch.stack(self.keys, 1), torch.stack(self.values, 1)
        question = self.repeats.index(position)
        reads = self.read(keys, values, words, question)
        one_read = torch.ones_like(output.steps, dtype=torch.bool)
        if self.gate is not None:
            near = torch.nn.functional.cosine_similarity(words[:, None], keys, dim=-1).amax(-1)
            one_read = near >= self.gate
            reads = torch.where(one_read[:, None], reads, output.reads.flatten(1))
        self.key_cosine.append(torch.nn.functional.cosine_similarity(words, keys[:, question], dim=-1).detach())
        self.read_error.append(((reads - values[:, question]).norm(dim=-1) / values[:, question].norm(dim=-1)).detach())
        return PonderStep(reads=reads.view_as(output.reads), state=output.state,
                          steps=torch.where(one_read, 1, output.steps + 1),
                          cost=torch.where(one_read, 0, output.cost))

    def reset(self) -> None:
        self.position, self.keys, self.values = 0, [], []


def table(run: Path, split: str = "test", memory_slots: int | None = None, queries: int | None = None) -> dict:
    overrides = {} if memory_slots is None else {"memory_slots": memory_slots}
    task_overrides = {} if queries is None else {"queries": queries}
    experiment, model, dataset = load_run(run, task_overrides, **overrides)
    data = repeated_questions(dataset[split])
    questions = len(data[0]["hops"]) // 2
    length = data[0]["length"]
    if len(set(data["length"])) != 1:
        raise ValueError(f"{run}: the {split} sequences differ in length; the hook counts positions of one length")
    repeat_start = length - QUESTION * questions
    first = [repeat_start - QUESTION * (questions - q) + HOP_TOKEN for q in range(questions)]
    repeats = [repeat_start + QUESTION * q + HOP_TOKEN for q in range(questions)]
    hops = np.concatenate([np.asarray(h) for h in data["hops"]])
    second = np.tile(np.arange(2 * questions) >= questions, len(data))
    ranked = batch_positions(data, BATCH_SIZE)
    looped = example_outcomes(model, data, BATCH_SIZE)
    # the control: as many questions again, new ones over the same kind of sequence, answered by the loop
    fresh = build_experiment_task(experiment, model, {**task_overrides, "queries": 2 * questions})[split]
    fresh_hops = np.concatenate([np.asarray(h) for h in fresh["hops"]])
    # per pass: (its answers' outcomes, the answers it scores, their hop counts, per answer scored its diagnostics)
    passes = {"first": (looped, ~second, hops, {}), "repeat_loop": (looped, second, hops, {}),
              "fresh_loop": (example_outcomes(model, fresh, BATCH_SIZE), second, fresh_hops, {})}
    one_read_passes = [(name, read, None) for name, read in READS.items()]
    gated_passes = [(f"consolidated_gated_{gate:g}", READS["consolidated"], gate) for gate in GATES]
    for name, read, gate in one_read_passes + gated_passes:
        hook = Consolidating(first, repeats, read, gate)
        handle = model.model.memory.ponder.register_forward_hook(hook)
        try:
            outcomes = _outcomes_with(model, data, hook)
        finally:
            handle.remove()
        diagnostics = {key: _in_split_order(values, questions, ranked)
                       for key, values in (("key_cosine", hook.key_cosine), ("read_error", hook.read_error))}
        passes[f"repeat_{name}"] = (outcomes, second, hops, diagnostics)

    def scores(hop_count: int | None) -> dict[str, float]:
        out = {}
        for name, (outcomes, scored, asked, diagnostics) in passes.items():
            chosen = np.ones_like(asked, dtype=bool) if hop_count is None else asked == hop_count
            out[f"{name}_accuracy"] = float(outcomes["answer_correct"][chosen & scored].mean())
            out[f"{name}_ponder"] = float(outcomes["ponder_steps"][chosen & scored].mean())
            out.update({f"{name}_{key}": float(values[chosen[scored]].mean()) for key, values in diagnostics.items()})
        return out

    rows = {str(k): {"answers": int((hops[~second] == k).sum()), **scores(k)} for k in sorted(set(hops.tolist()))}
    settings = {**overrides, **task_overrides}
    return {"split": split, "sequences": len(data), "questions_per_sequence": questions,
            **({"settings": settings} if settings else {}),
            **scores(None), "by_hops": rows}


def _outcomes_with(model, data, hook: Consolidating) -> dict[str, np.ndarray]:
    """``example_outcomes`` with the hook's position counter reset before every batch's forward."""
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: hook.reset(), with_kwargs=True)
    try:
        return example_outcomes(model, data, BATCH_SIZE)
    finally:
        handle.remove()


def _in_split_order(values: list[torch.Tensor], questions: int, ranked: list[int]) -> np.ndarray:
    """Per repeated question, split order (sequences, then questions): ``values`` holds a (B_b,) tensor per
    repeated question of each batch, batches in order."""
    per_batch = [torch.stack(values[i : i + questions], 1) for i in range(0, len(values), questions)]
    return torch.cat(per_batch)[torch.as_tensor(ranked)].flatten().numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished ACT multi_hop_recall run folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--memory-slots", type=int, default=None, help="evaluate with this many memory slots")
    parser.add_argument("--queries", type=int, default=None,
                        help="questions per sequence before their repeats (default: the run's task)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = table(args.run, args.split, args.memory_slots, args.queries)
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

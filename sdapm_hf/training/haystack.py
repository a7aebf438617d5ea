"""The plugged causal LM on haystacks of real text (``tasks/haystack.py``): the memory reads every segment of the
haystack, then the frozen LM answers the question in a segment of its own.

Segments pass through the base independently, and what the memory reads of a segment (the output of its read
layer) does not depend on the memory, so ``HaystackStates`` computes it once for every segment of a split's stream
(``DNCSDAPMModel.layer_states``; a cached ``datasets`` column, float16) and ``OverHaystack`` runs the memory over
those states: exactly what the model computes over the whole input, without running the base over the haystack
again. Only the segments that took a sentence run live (up to the read layer), and the question segment runs the
whole model with the memory's state (teacher-forced with ``labels`` for training, ``generate`` for the answers).
"""

from __future__ import annotations

import hashlib
import json
import re
import weakref
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from ..modeling_dnc_sdapm import DNCSDAPMForCausalLM
from ..tasks.haystack import HaystackCorpus
from .data import LengthBucketBatchSampler, batches
from .states import COLUMN, cached_states

_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → its HaystackStates


class HaystackStates:
    """What the memory of ``model`` reads of every segment of each split of ``corpus``, computed once per split
    (``datasets`` caches it by the corpus, the base and the read layer), as (M, segment_length, D) float16."""

    def __init__(self, model: DNCSDAPMForCausalLM, corpus: HaystackCorpus, batch_size: int = 8) -> None:
        if model.config.segment_length != corpus.segment_length:
            raise ValueError(f"the corpus has segments of {corpus.segment_length} tokens, the model "
                             f"segment_length={model.config.segment_length}: give both the same")
        self.model, self.corpus, self.batch_size = model, corpus, batch_size
        self._splits: dict[str, torch.Tensor] = {}

    def __getitem__(self, split: str) -> torch.Tensor:
        if split not in self._splits:
            self._splits[split] = self._compute(split)
        return self._splits[split]

    def _compute(self, split: str) -> torch.Tensor:
        config = self.model.config
        key = json.dumps([COLUMN, self.corpus.identity, split, config.text_config.to_dict(), config.read_from,
                          config.read_layer, config.inject_layer, config.base_model_name_or_path], default=str)
        segments = datasets.Dataset.from_dict({"input_ids": self.corpus.segments(split).tolist()})
        features = segments.features.copy()
        features[COLUMN] = datasets.Array2D(shape=(None, config.hidden_size), dtype="float16")
        memory_model = self.model.model

        what = f"the base's states at the memory's read layer ({config.read_from}, read_layer={config.read_layer})"

        def states(batch):
            ids = torch.tensor(batch["input_ids"], device=self.model.device)
            return {COLUMN: cached_states(memory_model.layer_states(ids), what)}

        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        folder = Path(datasets.config.HF_DATASETS_CACHE) / "sdapm_hf"
        folder.mkdir(parents=True, exist_ok=True)
        cache_file = folder / f"{COLUMN}-{fingerprint}.arrow"
        done = segments.map(states, batched=True, batch_size=self.batch_size, features=features,
                            new_fingerprint=fingerprint, cache_file_name=str(cache_file), desc=f"{split} segments' states")
        stored = torch.from_numpy(np.stack(done.with_format("numpy")[COLUMN]))
        if not torch.isfinite(stored).all():  # cached before values beyond float16 were refused
            raise ValueError(f"{what} in {cache_file} hold values beyond float16's range: read a layer whose states "
                             "stay within it (read_layer), or delete the file")
        return stored


def collate(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """A batch of haystack rows: ``haystack`` (B, n), the insertions per row, the question segments right-padded
    (``input_ids``, ``attention_mask``, ``labels``), ``prompt_length`` (B,) and ``answer``."""
    longest = max(len(row["input_ids"]) for row in rows)
    pad = lambda values, fill: [list(v) + [fill] * (longest - len(v)) for v in values]  # noqa: E731
    return {
        "haystack": torch.tensor([row["haystack"] for row in rows]),
        "inserts": [list(zip(row["insert_at"], row["insert_offset"], row["insert_ids"])) for row in rows],
        "input_ids": torch.tensor(pad([row["input_ids"] for row in rows], pad_token_id)),
        "attention_mask": torch.tensor(pad([[1] * len(row["input_ids"]) for row in rows], 0)),
        "labels": torch.tensor(pad([row["labels"] for row in rows], -100)),
        "prompt_length": torch.tensor([row["prompt_length"] for row in rows]),
        "answer": [row["answer"] for row in rows],
    }


class OverHaystack(nn.Module):
    """The plugged causal LM over batches of one split's haystack rows (``collate``)."""

    def __init__(self, model: DNCSDAPMForCausalLM, states: HaystackStates, split: str) -> None:
        super().__init__()
        self.model = model
        self.states = states
        self.split = split

    def remember(
        self, haystack: torch.Tensor, inserts: list[list[tuple[int, int, list[int]]]], record: bool = False,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, tuple | None]:
        """The memory state after reading the haystacks (B, n) with their insertions, segment by segment, the write
        gates of every haystack position (B, n·segment_length) and, with ``record``, every memory update
        (``core.MemoryUpdate``, positions counted over the whole haystack)."""
        memory_model = self.model.model
        store = self.states[self.split]
        corpus = self.states.corpus
        device = self.model.device
        state, gates, updates = None, [], []
        length = self.states.corpus.segment_length
        for position in range(haystack.shape[1]):
            segments = haystack[:, position]
            reads = store[segments].to(device=device, dtype=memory_model.core().dtype)
            live = {row: [(o, ids) for at, o, ids in row_inserts if at == position]
                    for row, row_inserts in enumerate(inserts)}
            live = {row: found for row, found in live.items() if found}
            if live:
                rows = sorted(live)
                ids = torch.from_numpy(np.stack([corpus.live_segment(self.split, int(segments[r]), live[r]) for r in rows]))
                reads = reads.clone()
                reads[rows] = memory_model.layer_states(ids.to(device)).to(reads.dtype)
            out = memory_model.over_layer_states(reads, memory_state=state, output_memory_states=record)
            state = out.memory_state
            gates.append(out.write_gates)
            if record:  # each segment starts with the memory before it: keep the first such entry only
                updates += [u.shifted(position * length) for u in out.memory_states[(1 if position else 0) :]]
        return state, (None if gates[0] is None else torch.cat(gates, 1)), (tuple(updates) if record else None)

    def forward(self, haystack, inserts, input_ids, attention_mask, labels=None, write_cost: float | None = None,
                **kwargs):
        """The question segments' outputs after the memory read the haystacks (``question``), with the write cost of
        the haystack's positions added to the loss (``write_cost``, None: the config's, × their mean write gate)."""
        cost = self.model.config.write_cost if write_cost is None else write_cost
        state, gates, _ = self.remember(haystack, inserts)
        out = self.question(state, input_ids, attention_mask, labels, write_cost=cost)
        if out.loss is not None and gates is not None and cost > 0:
            out.loss = out.loss + cost * gates.mean()
        return out

    def question(self, state: dict[str, torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor | None = None, write_cost: float | None = None):
        """The question segments (B, Q) with the memory ``state``; with ``labels`` (teacher-forced answers), the
        logits and the loss (``write_cost``: the model's ``forward``) of the positions from the first one that
        predicts a label on."""
        keep = 0
        if labels is not None:
            first = int((labels[:, 1:] != -100).float().argmax(-1).min())  # the first position that predicts a label
            keep = labels.shape[1] - first
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, memory_state=state,
                          logits_to_keep=keep, write_cost=write_cost)

    @torch.no_grad()
    def answers(self, batch: dict[str, Any], state: dict[str, torch.Tensor] | None,
                max_new_tokens: int = 8) -> list[str]:
        """The greedy answers to the questions (prompts left-padded), decoded, with the memory ``state`` after the
        haystacks (``remember``; None: an empty memory)."""
        lengths = batch["prompt_length"].tolist()
        longest = max(lengths)
        pad = self.model.generation_config.pad_token_id or 0
        prompts = torch.full((len(lengths), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(prompts)
        for row, length in enumerate(lengths):
            prompts[row, longest - length :] = batch["input_ids"][row, :length]
            mask[row, longest - length :] = 1
        out = self.model.generate(input_ids=prompts.to(self.model.device), attention_mask=mask.to(self.model.device),
                                  memory_state=state, max_new_tokens=max_new_tokens, do_sample=False)
        tokenizer = self.states.corpus.tokenizer
        return [tokenizer.decode(row[longest:], skip_special_tokens=True) for row in out]


WORD = r"\d+|[A-Za-z]+"


def first_word(text: str) -> str | None:
    """The first word (digits, or letters) of a generated text, None if it starts with neither."""
    found = re.match(rf"\s*({WORD})", text)
    return None if found is None else found.group(1)


def matches(answer: str, generated: str) -> bool:
    """Exact match of the answer with the first word (digits, or letters) of the generated text."""
    return first_word(generated) == answer


def answers_another(answer: str, generated: str, sentences: list[str]) -> bool:
    """Whether a wrong answer is what another inserted sentence holds: the last word of one of ``sentences``
    (the multi-needle and QA1 sentences end with their value: "The code of the red door is 4921.", "Mary went to
    the kitchen."; the passkey's one sentence holds only the answer, so there it stays 0). Tells a memory that
    confused two stored sentences from one that lost them."""
    word = first_word(generated)
    if word is None or word == answer:
        return False
    return any(re.findall(WORD, sentence)[-1:] == [word] for sentence in sentences)


def haystack_states(model: DNCSDAPMForCausalLM, tokenizer=None) -> HaystackStates:
    """The model's ``HaystackStates`` over the corpus of its base's tokenizer (``tokenizer``, or the one saved with
    the base), made once per model."""
    if model not in _STATES:
        if tokenizer is None:
            from transformers import AutoTokenizer

            from .evaluation import base_path

            tokenizer = AutoTokenizer.from_pretrained(base_path(model.config.base_model_name_or_path))
        _STATES[model] = HaystackStates(model, HaystackCorpus(tokenizer, model.config.segment_length))
    return _STATES[model]


def runner(model: DNCSDAPMForCausalLM, split: datasets.Dataset) -> OverHaystack:
    """The ``OverHaystack`` of ``model`` for the rows of ``split`` (which name their split's segments)."""
    return OverHaystack(model, haystack_states(model), str(split.split))


def loader(split: datasets.Dataset, pad_token_id: int, batch_size: int, seed: int = 0, shuffle: bool = False):
    """Equal-length batches of haystack rows (``collate``)."""
    return batches(split, batch_size, seed=seed, shuffle=shuffle, collate=partial(collate, pad_token_id=pad_token_id),
                   columns=None)


@torch.no_grad()
def evaluate_haystack(model: DNCSDAPMForCausalLM, split: datasets.Dataset, batch_size: int = 16,
                      max_new_tokens: int = 8, outcomes: list[bool] | None = None) -> dict[str, float]:
    """Over a split of haystack rows: ``accuracy``, the share of answers the model generates exactly (greedy);
    ``another_sentence``, the share answered wrongly with what another inserted sentence holds
    (``answers_another``); and teacher-forced on the answer tokens, ``token_accuracy``, ``sequence_accuracy`` and
    ``loss``. ``outcomes`` receives whether each row was answered exactly, in the split's order."""
    was_training = model.training
    model.eval()
    run = runner(model, split)
    tokenizer = run.states.corpus.tokenizer
    pad = tokenizer.pad_token_id or 0
    hits = counted = sequences = right = confused = 0
    loss_sum, answered = 0.0, []
    skipped = model.memory_model().ablated == "base_alone"  # the base alone never reads the haystack
    for batch in loader(split, pad, batch_size):
        state = None if skipped else run.remember(batch["haystack"], batch["inserts"])[0]
        generated = run.answers(batch, state, max_new_tokens)
        answered += [matches(answer, text) for answer, text in zip(batch["answer"], generated)]
        for answer, text, inserts in zip(batch["answer"], generated, batch["inserts"]):
            sentences = [tokenizer.decode(ids, skip_special_tokens=True) for _, _, ids in inserts]
            confused += answers_another(answer, text, sentences)
        device = model.device
        out = run.question(state, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                           batch["labels"].to(device))
        target = batch["labels"][:, 1:][:, -(out.logits.shape[1] - 1):].to(device)
        scored = target != -100
        correct = (out.logits[:, :-1].argmax(-1) == target) & scored
        hits += int(correct.sum())
        counted += int(scored.sum())
        right += int((correct | ~scored).all(-1).sum())
        sequences += target.shape[0]
        loss_sum += float(out.loss) * target.shape[0]
    model.train(was_training)
    if outcomes is not None:  # the batches' order back to the split's
        order = [i for chunk in LengthBucketBatchSampler(split["length"], batch_size, shuffle=False) for i in chunk]
        in_order = [False] * len(order)
        for i, right_answer in zip(order, answered):
            in_order[i] = right_answer
        outcomes += in_order
    return {"accuracy": sum(answered) / max(sequences, 1), "token_accuracy": hits / max(counted, 1),
            "sequence_accuracy": right / max(sequences, 1), "loss": loss_sum / max(sequences, 1),
            "another_sentence": confused / max(sequences, 1)}

"""What the memory is measured against on haystacks: the frozen base with the whole input in its window, and a
retrieval memory that keeps every past chunk and attends to the best ones; with the bytes each keeps per sequence.

* ``window_answers``: the base reads the whole haystack and the question at once (only where they fit in its
  ``max_position_embeddings``), with the passkey task's standard instruction first (``tasks.haystack.PASSKEY_INTRO``).
* ``retrieval_answers``: every token of the haystack keeps its state (the same states the memory reads,
  ``HaystackStates``) and its id; a chunk of ``chunk`` tokens scores the best cosine of each question token in it,
  summed over the question, and the base reads the ``top_k`` best chunks (in their order) and the question
  (``retrieved_prompt``; the segments' prefix tokens are left out). Its memory grows with the input.
* ``state_bytes``: the bytes of a memory state per sequence (every tensor of it, in its own dtype).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..tasks.haystack import PASSKEY_INTRO, HaystackCorpus
from .haystack import HaystackStates


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of one sequence's memory state (a batch's state divided by its batch size)."""
    batch = next(iter(state.values())).shape[0]
    return sum(t.numel() * t.element_size() for t in state.values()) // batch


def _generate(base, prompts: list[np.ndarray], max_new_tokens: int, pad: int) -> list[str]:
    """Greedy continuations of token prompts of any lengths (left-padded together), decoded."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.as_tensor(prompt)
        mask[row, longest - len(prompt) :] = 1
    with torch.no_grad():
        out = base.generate(input_ids=ids.to(base.device), attention_mask=mask.to(base.device),
                            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return [out[row, longest:].tolist() for row in range(len(prompts))]


def window_answers(base, corpus: HaystackCorpus, split: str, rows: list[dict[str, Any]], task: str,
                   max_new_tokens: int = 8, batch_size: int = 2) -> list[str] | None:
    """The base's answers with each row's whole input in its window (None where an input does not fit), generated
    ``batch_size`` rows at a time (whole inputs are long)."""
    intro = np.asarray(corpus.encode(PASSKEY_INTRO) if task == "haystack_passkey" else [], dtype=np.int64)
    start = len(corpus.prefix)  # the intro goes after the prefix
    prompts = [np.concatenate([tokens[:start], intro, tokens[start:]])
               for tokens in (corpus.tokens(split, row, segmented=False) for row in rows)]
    if max(len(p) for p in prompts) > base.config.max_position_embeddings:
        return None
    pad = corpus.tokenizer.pad_token_id or 0
    generated = [ids for i in range(0, len(prompts), batch_size)
                 for ids in _generate(base, prompts[i : i + batch_size], max_new_tokens, pad)]
    return [corpus.tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]


def retrieval_answers(base, states: HaystackStates, split: str, rows: list[dict[str, Any]], chunk: int = 32,
                      top_k: int = 8, max_new_tokens: int = 8) -> tuple[list[str], int]:
    """The base's answers over the ``top_k`` retrieved chunks and the question (``retrieved_prompt``), and the bytes
    the retrieval memory keeps per sequence (every kept token's state in float16 and its token as int32)."""
    corpus, memory_model = states.corpus, states.model.model
    store = states[split]
    prompts, kept = [], 0
    for row in rows:
        tokens = corpus.tokens(split, row)
        reads = []
        for position, segment in enumerate(row["haystack"]):
            inserts = [(o, ids) for at, o, ids in zip(row["insert_at"], row["insert_offset"], row["insert_ids"])
                       if at == position]
            if inserts:
                ids = torch.from_numpy(corpus.live_segment(split, segment, inserts))[None]
                reads.append(memory_model.layer_states(ids.to(states.model.device))[0].float().cpu())
            else:
                reads.append(store[segment].float())
        prompt = tokens[len(row["haystack"]) * corpus.segment_length :]
        question = memory_model.layer_states(torch.as_tensor(prompt)[None].to(states.model.device))[0].float().cpu()
        ids, positions = retrieved_prompt(tokens, torch.cat(reads), question, corpus.segment_length,
                                          len(corpus.prefix), chunk, top_k)
        prompts.append(ids)
        kept = positions * (question.shape[-1] * 2 + 4)
    pad = corpus.tokenizer.pad_token_id or 0
    answers = [corpus.tokenizer.decode(ids, skip_special_tokens=True) for ids in _generate(base, prompts, max_new_tokens, pad)]
    return answers, kept


def retrieved_prompt(tokens: np.ndarray, keys: torch.Tensor, question: torch.Tensor, segment_length: int,
                     prefix_length: int, chunk: int, top_k: int) -> tuple[np.ndarray, int]:
    """The prompt the retrieval baseline reads, and how many of the haystack's positions it keeps.

    Args:
        tokens: (T + Q,) a row's segmented input (``HaystackCorpus.tokens``): T haystack tokens in segments of
            ``segment_length``, then the question's Q; each segment and the question start with a prefix of
            ``prefix_length`` tokens (``HaystackCorpus.prefix``, Gemma's ``<bos>``).
        keys: (T, D) the haystack's states; question: (Q, D) the question's.

    A chunk of ``chunk`` positions scores late interaction (as ColBERT's MaxSim): for every question token, the
    largest cosine between its state and a chunk position's, summed over the question. The prompt is one prefix,
    the tokens of the ``top_k`` best chunks in their order, and the question. Prefix positions are neither scored
    nor kept nor read: in the middle of an input a ``<bos>`` tells the base that a new text starts there."""
    length = keys.shape[0]
    body = torch.ones(length, dtype=torch.bool)
    body.view(-1, segment_length)[:, :prefix_length] = False
    cosines = F.normalize(keys, dim=-1) @ F.normalize(question[prefix_length:], dim=-1).T  # (T, Q − prefix)
    scores = cosines.masked_fill(~body[:, None], -1.0).view(-1, chunk, cosines.shape[1]).amax(1).sum(-1)
    best = scores.topk(min(top_k, len(scores))).indices.sort().values.tolist()
    in_body = body.numpy()
    context = [tokens[c * chunk : (c + 1) * chunk][in_body[c * chunk : (c + 1) * chunk]] for c in best]
    prompt = tokens[length:]
    return np.concatenate([prompt[:prefix_length], *context, prompt[prefix_length:]]), int(body.sum())


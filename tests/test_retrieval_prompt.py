"""The retrieval baseline's prompt (``training.baselines.retrieved_prompt``): the best chunks in order, one prefix."""

import numpy as np
import torch

from sdapm_hf.training.baselines import retrieved_prompt

BOS = 2


def _row(prefix_length: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Two 8-token segments and a 3-token question (each after the prefix); states by which the question matches
    the second segment's second chunk best and the first segment's first chunk next (chunks of 4)."""
    prefix = [BOS] * prefix_length
    segments = [prefix + list(range(10 + 8 * s + prefix_length, 18 + 8 * s)) for s in range(2)]
    question = prefix + [90, 91, 92]
    tokens = np.asarray(sum(segments, []) + question, dtype=np.int64)
    keys = torch.zeros(16, 4)
    keys[prefix_length:4] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    keys[12:16] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    keys[4:12] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    keys[:prefix_length] = keys[8:8 + prefix_length] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # a prefix looks alike
    states = torch.tensor([[0.0, 1.0, 0.0, 0.0]] * prefix_length + [[0.0, 0.1, 0.5, 1.0]] * 3)
    return tokens, keys, states


def test_the_prompt_is_the_best_chunks_in_order_then_the_question():
    tokens, keys, question = _row(prefix_length=0)
    prompt, kept = retrieved_prompt(tokens, keys, question, segment_length=8, prefix_length=0, chunk=4, top_k=2)
    assert prompt.tolist() == [10, 11, 12, 13, 22, 23, 24, 25, 90, 91, 92]
    assert kept == 16


def test_a_prefix_starts_the_prompt_once_and_is_neither_scored_nor_kept():
    tokens, keys, question = _row(prefix_length=1)
    prompt, kept = retrieved_prompt(tokens, keys, question, segment_length=8, prefix_length=1, chunk=4, top_k=2)
    # one <bos> first, none from the chunks (each segment's first chunk starts with one)
    assert prompt.tolist() == [BOS, 11, 12, 13, 22, 23, 24, 25, 90, 91, 92]
    assert kept == 14

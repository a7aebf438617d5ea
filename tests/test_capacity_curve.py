"""The capacity curve's streams (scripts/capacity_curve.py): the memory alone past its exact capacity."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
capacity_curve = pytest.importorskip("capacity_curve")


def test_exact_capacity_counts_rank_plus_one_pairs_per_slot():
    assert capacity_curve.exact_capacity(8, 16) == 136


def test_within_exact_capacity_every_stream_is_recalled():
    for keys in capacity_curve.KEYS:
        for data in ("random", "repeated"):
            assert capacity_curve.recall(keys, data, 64, True, batch=1, seed=0) == 1.0, (keys, data)


def test_structure_is_what_lets_consolidation_hold_more_than_it_stores_exactly():
    pairs = 4 * capacity_curve.exact_capacity()
    assert capacity_curve.recall("content", "repeated", pairs, True, batch=1, seed=0) == 1.0
    assert capacity_curve.recall("content", "families", pairs, True, batch=1, seed=0) > 0.95
    assert capacity_curve.recall("clock", "random", pairs, True, batch=1, seed=0) < 0.6  # nothing to compress


def test_streams_key_what_they_say():
    g = torch.Generator().manual_seed(0)
    keys, values, symbols, answers = capacity_curve.stream("content", "repeated", 2, 40, g)
    assert torch.equal(keys[:, 1:], values[:, :-1])  # each item is keyed by the one before it
    assert torch.equal(symbols[torch.arange(2)[:, None], answers], values)
    assert torch.equal(answers[:, :16], answers[:, 16:32])  # the motif repeats
    clock, _, _, _ = capacity_curve.stream("clock", "random", 2, 40, g)
    assert torch.allclose(clock[0], clock[1]) and (clock[0] @ clock[0].T - torch.eye(40)).max() < 0.99

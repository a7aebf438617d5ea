"""Batches of equal-length examples in a seeded order, so a recurrent step loop never runs over padding."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..tasks import pad_collate

COLUMNS = ["input_ids", "labels", "label", "attention_mask", "layer_states"]


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Index batches drawn from groups of equal ``lengths``; the order is a pure function of (seed, epoch).

    Each epoch shuffles every length group, cuts it into batches of ``batch_size`` (the last, smaller one
    kept) and shuffles the batches. ``set_epoch`` selects the epoch (Accelerate calls it).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(lengths) == 0:
            raise ValueError("the dataset is empty: no batches to draw")
        groups: dict[int, list[int]] = defaultdict(list)
        for index, length in enumerate(lengths):
            groups[int(length)].append(index)
        self.groups = [np.asarray(groups[key]) for key in sorted(groups)]
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for group in self.groups:
            order = rng.permutation(group) if self.shuffle else group
            batches += [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)

    def __len__(self) -> int:
        return sum(-(-len(group) // self.batch_size) for group in self.groups)


def batches(split, batch_size: int, seed: int = 0, shuffle: bool = False, collate=pad_collate,
            columns: list[str] | None = COLUMNS) -> DataLoader:
    """A DataLoader of equal-length batches over a task split (of its ``columns``; None: all), put together by
    ``collate``. It has its own generator, so making an iterator never draws from the global RNG (dropout's):
    evaluating or resuming leaves the training stream unchanged."""
    sampler = LengthBucketBatchSampler(split["length"], batch_size, seed=seed, shuffle=shuffle)
    if columns is not None:
        split = split.select_columns([c for c in columns if c in split.column_names])
    if "layer_states" in split.column_names:
        split = split.with_format("numpy", columns=["layer_states"], output_all_columns=True)
    return DataLoader(split, batch_sampler=sampler, collate_fn=collate, generator=torch.Generator().manual_seed(seed))

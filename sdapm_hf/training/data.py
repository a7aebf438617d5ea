"""Batches of equal-length examples in a seeded order, so a recurrent step loop never runs over padding."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


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

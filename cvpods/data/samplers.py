"""Samplers: which dataset items each process loads, in which order and in which batches.

Training draws an infinite stream of dataset indices: epoch after epoch, a permutation seeded by
``(seed, epoch)``. Stream position ``p`` goes to process ``p % world_size``, so the union of what
all processes load in one step equals what a single process with the total batch would load (when
aspect-ratio grouping is off). Every sample carries its stream position, from which its random
augmentation is seeded: the data of a run is a pure function of the seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch

from ..utils import comm

__all__ = ["TrainingSampler", "InferenceSampler", "TrainingBatchSampler"]


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")


class TrainingSampler:
    """Infinite stream of ``(dataset_index, stream_position)`` for this process.

    Args:
        size: number of items in the dataset.
        seed: seed of the shuffling (the same in every process).
        shuffle: draw a new permutation every epoch (else go through the dataset in order).
        rank, world_size: this process's share of the stream (default: from torch.distributed).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        *,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        _check_rank(self.rank, self.world_size)

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = 0
        for epoch in itertools.count():
            for index in self._epoch_order(epoch):
                if position % self.world_size == self.rank:
                    yield index, position
                position += 1


class InferenceSampler:
    """This process's contiguous share of ``range(size)``, in order (each index exactly once)."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
        _check_rank(rank, world_size)
        shard = math.ceil(size / world_size) if size else 0
        self.indices = range(min(rank * shard, size), min((rank + 1) * shard, size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TrainingBatchSampler:
    """Batches of ``batch_size`` samples from a :class:`TrainingSampler`, optionally grouped.

    With ``aspect_ratio_groups`` (one group id per dataset index, e.g. 0 for landscape and 1 for
    portrait images), a batch only holds images of one group: samples wait in their group's bucket
    until it is full. ``start_iter`` skips that many batches (only indices are drawn, nothing is
    loaded), so a resumed run continues with exactly the batches an uninterrupted run would use.
    """

    def __init__(
        self,
        sampler: TrainingSampler,
        batch_size: int,
        aspect_ratio_groups: Sequence[int] | None = None,
        start_iter: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.sampler, self.batch_size, self.start_iter = sampler, batch_size, start_iter
        self.groups = None if aspect_ratio_groups is None else list(aspect_ratio_groups)

    def _batches(self) -> Iterator[list[tuple[int, int]]]:
        return self._plain_batches() if self.groups is None else self._grouped_batches()

    def _plain_batches(self) -> Iterator[list[tuple[int, int]]]:
        samples = iter(self.sampler)
        while True:
            yield list(itertools.islice(samples, self.batch_size))

    def _grouped_batches(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list[tuple[int, int]]] = {}
        for sample in self.sampler:
            bucket = buckets.setdefault(self.groups[sample[0]], [])
            bucket.append(sample)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self._batches()
        for _ in range(self.start_iter):
            next(batches)
        return batches

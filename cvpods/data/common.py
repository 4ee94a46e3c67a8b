"""Dataset wrappers used by the data loaders."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch.utils.data as data

__all__ = ["DatasetFromList", "MapDataset"]


class DatasetFromList(data.Dataset):
    """A list of dataset dicts, stored as one pickled byte buffer.

    Python lists of many small dicts are slowly copied into every data-loader worker (reference
    counts touch every page); one numpy buffer is shared instead.
    """

    def __init__(self, items: list[dict], serialize: bool = True) -> None:
        self._serialize = serialize
        if serialize:
            blobs = [np.frombuffer(pickle.dumps(x, protocol=-1), dtype=np.uint8) for x in items]
            self._offsets = np.cumsum([len(b) for b in blobs], dtype=np.int64)
            self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
        else:
            self._items = list(items)

    def __len__(self) -> int:
        return len(self._offsets) if self._serialize else len(self._items)

    def __getitem__(self, index: int) -> dict:
        if not self._serialize:
            return self._items[index]
        start = 0 if index == 0 else int(self._offsets[index - 1])
        end = int(self._offsets[index])
        return pickle.loads(self._buffer[start:end].tobytes())


class MapDataset(data.Dataset):
    """``dataset[key]`` mapped by ``mapper(item, rng)``.

    ``key`` is a dataset index, or ``(index, stream_position)`` from a training sampler. The random
    generator handed to the mapper is seeded by ``(seed, stream_position)`` (or ``(seed, index)``),
    so augmentations do not depend on worker count or on which worker loads the item.
    """

    def __init__(self, dataset: data.Dataset, mapper: Callable[..., Any], seed: int) -> None:
        self.dataset, self.mapper, self.seed = dataset, mapper, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, position = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng([self.seed, int(position)])
        return self.mapper(self.dataset[int(index)], rng)

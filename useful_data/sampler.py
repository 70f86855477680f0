"""``UpsampleSampler``: USEFUL's upsampled distribution as a sampler over the original dataset.

Each epoch yields every base index once and every slow-learnable index ``k`` times in total,
the same multiset as `USEFULDataset`, shuffled with a local
`torch.Generator` seeded ``seed + epoch``. Sharding for distributed training follows
`torch.utils.data.DistributedSampler` exactly: pad (or drop) to a multiple of
``num_replicas``, then take ``indices[rank:total_size:num_replicas]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from useful_data._checks import (
    check_bool,
    check_int,
    check_positive_int,
    check_upsample_factor,
    check_upsampled_size,
)
from useful_data.distributed import get_rank, get_world_size
from useful_data.selection import SelectionLike, resolve_selection

__all__ = ["UpsampleSampler"]


class UpsampleSampler(Sampler[int]):
    """Sample base-dataset indices with the slow-learnable ones ``upsample_factor`` times.

    Use it with the *original* dataset instead of wrapping it in
    `USEFULDataset`: ``DataLoader(train_set, sampler=sampler, ...)``. Call
    `set_epoch` at the start of every epoch, as with ``DistributedSampler``.

    Args:
        selection: A `Selection`, a path to a saved one, a boolean mask of
            shape ``(N,)``, or distinct indices (then ``num_examples`` is required).
        num_examples: ``N``, the size of the original dataset (checked if the selection knows it).
        upsample_factor: ``k >= 1``; defaults to the Selection's factor, or 2.
        shuffle: Shuffle every epoch (``False`` yields a stable order: base indices, then the
            repeats).
        seed: Seed of the shuffle (any integer); the order of epoch ``e`` depends only on
            ``seed + e``.
        num_replicas: Number of distributed processes; defaults to the world size of the
            initialised process group, or 1.
        rank: This process's rank; defaults to the process group's rank, or 0.
        drop_last: Drop the tail to make the multiset divisible by ``num_replicas`` instead of
            padding it with repeated indices.

    Raises:
        TypeError: if ``seed`` or ``num_replicas``/``rank`` is not an integer, ``shuffle``
            or ``drop_last`` not a bool (or 0/1), or the selection is not `SelectionLike`.
        ValueError: if a number is out of range, ``rank >= num_replicas``, the
            selection does not match ``num_examples``, or the upsampled multiset would not
            fit in memory.

    Example:
        >>> sampler = UpsampleSampler([1, 3], num_examples=5, shuffle=False)
        >>> list(sampler)
        [0, 1, 2, 3, 4, 1, 3]
        >>> shards = [list(UpsampleSampler([1, 3], num_examples=5, num_replicas=2, rank=r,
        ...                                shuffle=False)) for r in range(2)]
        >>> shards
        [[0, 2, 4, 3], [1, 3, 1, 0]]
    """

    def __init__(
        self,
        selection: SelectionLike,
        num_examples: int | None = None,
        *,
        upsample_factor: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if num_examples is not None:
            num_examples = check_positive_int("num_examples", num_examples, minimum=0)
        mask, sel = resolve_selection(selection, num_examples)
        if upsample_factor is None:
            upsample_factor = sel.upsample_factor if sel is not None else 2
        self.upsample_factor = check_upsample_factor(upsample_factor)
        if num_replicas is None:
            num_replicas = get_world_size()
        if rank is None:
            rank = get_rank()
        self.num_replicas = check_positive_int("num_replicas", num_replicas)
        rank = check_positive_int("rank", rank, minimum=0)
        if rank >= self.num_replicas:
            raise ValueError(
                f"Invalid rank {rank}, rank should be in the interval [0, {self.num_replicas - 1}]"
            )
        self.rank = rank
        self.shuffle = check_bool("shuffle", shuffle)
        self.seed = check_int("seed", seed)
        self.drop_last = check_bool("drop_last", drop_last)
        self.epoch = 0
        slow = np.flatnonzero(mask).astype(np.int64)
        check_upsampled_size(len(mask), len(slow), self.upsample_factor)  # before allocating
        multiset = np.concatenate(
            [np.arange(len(mask), dtype=np.int64), np.tile(slow, self.upsample_factor - 1)]
        )
        self._multiset = torch.from_numpy(multiset)
        total = len(multiset)
        if self.drop_last and total % self.num_replicas != 0:
            self.num_samples = math.ceil((total - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    @property
    def multiset_size(self) -> int:
        """``N + (k - 1) |S|``: the size of the upsampled dataset across all replicas."""
        return int(self._multiset.numel())

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; with ``shuffle=True`` it changes the order, identically on every rank.

        Raises:
            TypeError: if ``epoch`` is not an integer.
        """
        self.epoch = check_int("epoch", epoch)

    def __iter__(self) -> Iterator[int]:
        indices = self._multiset
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed((self.seed + self.epoch) % 2**64)  # any integers, as torch takes
            indices = indices[torch.randperm(len(indices), generator=g)]
        if not self.drop_last:
            padding = self.total_size - len(indices)
            if padding > 0 and len(indices) > 0:
                repeats = math.ceil(padding / len(indices))
                indices = torch.cat([indices, indices.repeat(repeats)[:padding]])
        else:
            indices = indices[: self.total_size]
        yield from indices[self.rank : self.total_size : self.num_replicas].tolist()

    def __len__(self) -> int:
        return self.num_samples

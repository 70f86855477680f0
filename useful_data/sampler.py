"""``UpsampleSampler``: USEFUL's upsampled distribution as a sampler over the original dataset.

Each epoch yields every base index once and every slow-learnable index ``k`` times in total,
the same multiset as `USEFULDataset`, shuffled with a local
`torch.Generator` seeded ``seed + epoch``. Sharding for distributed training follows
`torch.utils.data.DistributedSampler` exactly: pad (or drop) to a multiple of
``num_replicas``, then take ``indices[rank:total_size:num_replicas]``.

With ``epoch_size=M`` the epochs keep a fixed length instead (SGD's, for ``M = N``): the
shuffled multisets of successive cycles are laid end to end, cycle ``c`` shuffled with
``seed + c``, and epoch ``e`` takes positions ``[e M, (e + 1) M)`` of that stream. Every epoch
draws without replacement from the multiset (within a cycle), starting where the previous one
stopped, so each full cycle covers it exactly; the epoch is then sharded as above.

Where training frameworks are concerned, the rule is that exactly one party shards:

* The sampler *is* a ``DistributedSampler`` (a subclass), so PyTorch Lightning and Fabric
  (``use_distributed_sampler=True``) and Ray Train's ``prepare_data_loader`` keep it as it is
  instead of replacing or re-wrapping it; the sampler shards.
* ``num_replicas`` and ``rank`` left unset are read from the process group at every epoch,
  not when the sampler is built, so building it before ``init_process_group`` (or before a
  framework launches its processes) shards correctly too.
* Accelerate's ``prepare`` (and so the Hugging Face ``Trainer``) shards the *batches* of the
  sampler it is given, so there the sampler must not: build it with
  ``num_replicas=1, rank=0``, and it yields the whole multiset, the same on every process, for
  Accelerate to deal out. That is the one switch, and it is explicit: once an
  ``accelerate.Accelerator`` of several processes exists in the process, a sampler that
  would shard itself (``num_replicas > 1``, given or read from the process group) raises a
  ``RuntimeError`` that says so, rather than lose data to a second sharding.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from useful_data._checks import (
    check_bool,
    check_int,
    check_positive_int,
    check_upsample_factor,
    memory_bytes,
)
from useful_data._comm import get_rank, get_world_size
from useful_data._resolve import resolve_selection
from useful_data.dataset import upsampled_index_map
from useful_data.selection import SelectionLike

__all__ = ["UpsampleSampler"]

_STATE_KEYS = ("epoch", "yielded", "seed", "multiset_size")
_OPTIONAL_STATE_KEYS = ("epoch_size",)  # only with epoch_size=M; absent means the multiset


class UpsampleSampler(DistributedSampler[int]):
    """Sample base-dataset indices with the slow-learnable ones ``upsample_factor`` times.

    Use it with the *original* dataset instead of wrapping it in
    `USEFULDataset`: ``DataLoader(train_set, sampler=sampler, ...)``. Call
    `set_epoch` at the start of every epoch, as with ``DistributedSampler`` (Lightning,
    Accelerate and the Hugging Face ``Trainer`` call it for you).

    Safe in every common set-up, each epoch giving exactly the upsampled multiset across all
    processes: a single process; DDP under ``torchrun``, built before or after
    ``init_process_group``; PyTorch Lightning and Fabric (their default
    ``use_distributed_sampler=True`` keeps it, as a ``DistributedSampler``); Ray Train.
    Under Accelerate's ``prepare`` (and in a Hugging Face ``Trainer`` subclass), which shard
    the batches themselves, build it with ``num_replicas=1, rank=0``: it then yields the whole
    multiset on every process and Accelerate deals it out (``len(loader)`` before
    ``prepare`` is the whole epoch's). Once an ``accelerate.Accelerator`` of several
    processes exists in the process, a sampler that would shard itself
    (``num_replicas > 1``) raises a ``RuntimeError`` instead of sharding a second time.

    Args:
        selection: A `Selection`, a path to a saved one, a boolean mask of
            shape ``(N,)``, or distinct indices (then ``num_examples`` is required).
        num_examples: ``N``, the size of the original dataset (checked if the selection knows it).
        upsample_factor: ``k >= 1``; defaults to the Selection's factor, or 2.
        shuffle: Shuffle every epoch (``False`` yields a stable order: base indices, then the
            repeats).
        seed: Seed of the shuffle (any integer); the order of epoch ``e`` depends only on
            ``seed + e`` (with ``epoch_size``: on ``seed + c`` for the cycles ``c`` it spans).
        num_replicas: Number of distributed processes. Left unset, it is the world size of
            the process group *when an epoch starts* (1 outside one).
        rank: This process's rank; left unset, the process group's rank when an epoch starts.
        drop_last: Drop the tail to make the multiset divisible by ``num_replicas`` instead of
            padding it with repeated indices.
        epoch_size: ``M``, indices per epoch across all replicas (before padding), drawn
            without replacement from the upsampled multiset (a fresh shuffle of it once it is
            used up) and continuing where the previous epoch stopped; at most
            ``upsample_factor * num_examples``, the largest multiset a selection of the
            dataset can make. ``M = N`` trains at SGD's step count (see
            `Selection.relative_cost`); ``None`` (default) makes every epoch the whole
            multiset, ``N + (k - 1) |S|``.

    Raises:
        TypeError: if ``seed``, ``num_replicas``/``rank`` or ``epoch_size`` is not an
            integer, ``shuffle`` or ``drop_last`` not a bool (or 0/1), or the selection is not
            `SelectionLike`.
        ValueError: if a number is out of range, ``rank >= num_replicas``, the
            selection does not match ``num_examples``, ``epoch_size`` is given for an
            empty dataset or exceeds ``upsample_factor * num_examples``, or the upsampled
            multiset, an epoch, an epoch padded for ``num_replicas`` or the mask of
            ``num_examples`` would not fit in memory.
        RuntimeError: when an epoch starts (or ``len`` is asked) with ``num_replicas > 1``
            while an ``accelerate.Accelerator`` of several processes exists (build it with
            ``num_replicas=1, rank=0`` there).

    Example:
        >>> sampler = UpsampleSampler([1, 3], num_examples=5, shuffle=False)
        >>> list(sampler)
        [0, 1, 2, 3, 4, 1, 3]
        >>> shards = [list(UpsampleSampler([1, 3], num_examples=5, num_replicas=2, rank=r,
        ...                                shuffle=False)) for r in range(2)]
        >>> shards
        [[0, 2, 4, 3], [1, 3, 1, 0]]
        >>> equal = UpsampleSampler([1, 3], num_examples=5, shuffle=False, epoch_size=5)
        >>> [(equal.set_epoch(e), list(equal))[1] for e in range(3)]  # 7 per cycle, 5 per epoch
        [[0, 1, 2, 3, 4], [1, 3, 0, 1, 2], [3, 4, 1, 3, 0]]
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
        epoch_size: int | None = None,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and, for unset
        # num_replicas/rank, an initialised process group, which is read here per epoch.
        if num_examples is not None:
            num_examples = check_positive_int("num_examples", num_examples, minimum=0)
            if 9 * num_examples > memory_bytes():  # a bool mask and an int64 index of N
                raise ValueError(
                    f"num_examples={num_examples} makes a mask and an index "
                    f"({9 * num_examples / 2**30:.3g} GiB) that exceed this machine's memory "
                    f"({memory_bytes() / 2**30:.3g} GiB); pass the dataset's length"
                )
        mask, sel = resolve_selection(selection, num_examples)
        if upsample_factor is None:
            upsample_factor = sel.upsample_factor if sel is not None else 2
        self.upsample_factor = check_upsample_factor(upsample_factor)
        self._num_replicas: int | None = None
        self._rank: int | None = None
        if num_replicas is not None:
            self._num_replicas = check_positive_int("num_replicas", num_replicas)
        if rank is not None:
            self._rank = check_positive_int("rank", rank, minimum=0)
        if self._num_replicas is not None and self._rank is not None:
            _check_rank(self._rank, self._num_replicas)
        self.shuffle = check_bool("shuffle", shuffle)
        self.seed = check_int("seed", seed)
        self.drop_last = check_bool("drop_last", drop_last)
        self.epoch = 0
        multiset = upsampled_index_map(mask, self.upsample_factor)  # as USEFULDataset's
        self._multiset = torch.from_numpy(multiset)
        self._epoch_size: int | None = None
        if epoch_size is not None:
            self._epoch_size = _check_epoch_size(epoch_size, len(mask), self.upsample_factor)
        if self._num_replicas is not None:
            self._check_padded(self._num_replicas)
        # Resumption: (epoch, position) to start the next iteration of that epoch from, and
        # the running epoch's (epoch, start, length, iterator) to tell how far it has got.
        self._resume: tuple[int, int] | None = None
        self._running: tuple[int, int, int, Iterator[int]] | None = None

    # --- sharding ---------------------------------------------------------------------------
    @property
    def num_replicas(self) -> int:
        """The number of processes the multiset is sharded over: the value given, else the
        process group's world size now (1 outside one)."""
        return self._num_replicas if self._num_replicas is not None else get_world_size()

    @num_replicas.setter
    def num_replicas(self, value: int) -> None:
        self._num_replicas = check_positive_int("num_replicas", value)

    @property
    def rank(self) -> int:
        """This process's shard: the value given, else the process group's rank now."""
        return self._rank if self._rank is not None else get_rank()

    @rank.setter
    def rank(self, value: int) -> None:
        self._rank = check_positive_int("rank", value, minimum=0)

    def _shard(self) -> tuple[int, int]:
        """``(num_replicas, rank)`` for the epoch about to run; under Accelerate, which
        shards the batches itself, the sampler must not shard (``num_replicas=1``)."""
        replicas, rank = self.num_replicas, self.rank
        if replicas > 1 and _accelerator_exists():
            raise RuntimeError(
                f"UpsampleSampler would shard itself over num_replicas={replicas} processes, "
                "but an accelerate.Accelerator of several processes exists in this process, and "
                "Accelerate's prepare "
                "(the Hugging Face Trainer's too) shards the loader's batches itself: sharded "
                "twice, each process would train on a fraction of its share. Build it with "
                "UpsampleSampler(..., num_replicas=1, rank=0): it yields the whole multiset and "
                "Accelerate deals it out"
            )
        _check_rank(rank, replicas)
        self._check_padded(replicas)
        return replicas, rank

    def _check_padded(self, replicas: int) -> None:
        """Refuse ``num_replicas`` whose padded epoch (``DistributedSampler`` repeats indices
        until every replica has as many) would not fit in memory, before it is allocated."""
        total_size = self._sizes(replicas)[1]
        if 16 * total_size > memory_bytes():  # int64 indices, twice while padded
            raise ValueError(
                f"num_replicas={replicas} pads an epoch of {self.epoch_size} indices to "
                f"{total_size} (one per replica at least), whose index "
                f"({16 * total_size / 2**30:.3g} GiB) exceeds this machine's memory; "
                "num_replicas should be the number of training processes"
            )

    def _sizes(self, replicas: int) -> tuple[int, int]:
        """``(num_samples, total_size)`` per ``DistributedSampler``'s arithmetic."""
        total = self.epoch_size
        if self.drop_last and total % replicas != 0:
            num_samples = math.ceil((total - replicas) / replicas)
        else:
            num_samples = math.ceil(total / replicas)
        return num_samples, num_samples * replicas

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Indices this rank yields per epoch (``DistributedSampler``'s ``num_samples``)."""
        return self._sizes(self.num_replicas)[0]

    @property
    def total_size(self) -> int:  # type: ignore[override]
        """``num_samples * num_replicas``: the epoch padded (or cut) to shard evenly."""
        return self._sizes(self.num_replicas)[1]

    @property
    def multiset_size(self) -> int:
        """``N + (k - 1) |S|``: the size of the upsampled dataset across all replicas."""
        return int(self._multiset.numel())

    @property
    def epoch_size(self) -> int:
        """Indices per epoch across all replicas, before padding: ``epoch_size`` if given,
        else `multiset_size`."""
        return self._epoch_size if self._epoch_size is not None else self.multiset_size

    # --- epochs -----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; with ``shuffle=True`` it changes the order, identically on every rank.

        A position restored by `load_state_dict` applies to the epoch it was saved in only:
        setting another epoch discards it.

        Raises:
            TypeError: if ``epoch`` is not an integer.
        """
        self.epoch = check_int("epoch", epoch)
        if self._resume is not None and self._resume[0] != self.epoch:
            self._resume = None

    def _cycle_order(self, cycle: int) -> torch.Tensor:
        """The multiset in the order of one pass: shuffled with ``seed + cycle``, or stable."""
        indices = self._multiset
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed((self.seed + cycle) % 2**64)  # any integers, as torch takes
            indices = indices[torch.randperm(len(indices), generator=g)]
        return indices

    def _epoch_order(self) -> torch.Tensor:
        """This epoch's indices across all replicas, before padding."""
        if self._epoch_size is None:
            return self._cycle_order(self.epoch)  # one whole pass per epoch
        # positions [e M, (e + 1) M) of the passes laid end to end
        size, total = self._epoch_size, self.multiset_size
        start = self.epoch * size
        first, last = start // total, (start + size - 1) // total
        passes = torch.cat([self._cycle_order(c) for c in range(first, last + 1)])
        offset = start - first * total
        return passes[offset : offset + size]

    def __iter__(self) -> Iterator[int]:
        replicas, rank = self._shard()
        num_samples, total_size = self._sizes(replicas)
        indices = self._epoch_order()
        if not self.drop_last:
            padding = total_size - len(indices)
            if padding > 0 and len(indices) > 0:
                repeats = math.ceil(padding / len(indices))
                indices = torch.cat([indices, indices.repeat(repeats)[:padding]])
        else:
            indices = indices[:total_size]
        start = 0
        if self._resume is not None:
            epoch, start = self._resume
            self._resume = None
            if epoch != self.epoch:  # cannot happen through set_epoch; kept as a guard
                start = 0
            start = min(start, num_samples)
        shard = indices[rank:total_size:replicas][start:].tolist()
        it = iter(shard)  # a list iterator knows how much it has left (see _position)
        self._running = (self.epoch, start, len(shard), it)
        return it

    def __len__(self) -> int:
        replicas, _ = self._shard()
        return self._sizes(replicas)[0]

    # --- resumption -------------------------------------------------------------------------
    def _position(self) -> int:
        """How many indices of the current epoch this process has been handed."""
        if self._resume is not None:
            return self._resume[1]
        if self._running is None or self._running[0] != self.epoch:
            return 0
        _, start, length, it = self._running
        return start + length - operator.length_hint(it)

    def state_dict(self) -> dict[str, int]:
        """Where this process is in the current epoch, to resume from mid-epoch.

        ``yielded`` counts the indices this process's iterator has handed out this epoch
        (torchdata's ``StatefulDataLoader`` saves and restores it with the loader, prefetching
        accounted for). With a plain ``DataLoader`` and ``num_workers > 0`` the loader asks for
        indices ahead of training: resuming by hand, set ``yielded`` to the number of samples
        trained on instead (batches done x batch size).

        Example:
            >>> sampler = UpsampleSampler([1, 3], num_examples=5, seed=0)
            >>> it = iter(sampler)
            >>> first = [next(it), next(it), next(it)]
            >>> state = sampler.state_dict()
            >>> state["yielded"]
            3
            >>> resumed = UpsampleSampler([1, 3], num_examples=5, seed=0)
            >>> resumed.load_state_dict(state)
            >>> first + list(resumed) == list(UpsampleSampler([1, 3], num_examples=5, seed=0))
            True
        """
        state = {
            "epoch": self.epoch,
            "yielded": self._position(),
            "seed": self.seed,
            "multiset_size": self.multiset_size,
        }
        if self._epoch_size is not None:  # default states stay as they were before the option
            state["epoch_size"] = self._epoch_size
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume mid-epoch: the next iteration of the saved epoch skips the ``yielded`` indices
        this process was already handed, then the epochs after it run in full.

        Raises:
            TypeError: if ``state_dict`` is not a mapping of integers.
            ValueError: if a key is missing, ``yielded`` is negative or more than this
                process's indices an epoch, or the state comes from a
                sampler with another seed, multiset size (another selection or factor) or
                ``epoch_size``.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                "state_dict should be a mapping from UpsampleSampler.state_dict(), "
                f"but got {type(state_dict).__name__}"
            )
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(
                f"state_dict is missing {missing}; it should come from "
                f"UpsampleSampler.state_dict() (keys {list(_STATE_KEYS)})"
            )
        keys = _STATE_KEYS + tuple(k for k in _OPTIONAL_STATE_KEYS if k in state_dict)
        state = {key: check_int(f"state_dict[{key!r}]", state_dict[key]) for key in keys}
        state.setdefault("epoch_size", state["multiset_size"])  # saved without the option
        if state["yielded"] < 0:
            raise ValueError(f"state_dict['yielded'] should be >= 0, but got {state['yielded']}")
        own_state = {
            "seed": self.seed,
            "multiset_size": self.multiset_size,
            "epoch_size": self.epoch_size,
        }
        for key, own in own_state.items():
            if state[key] != own:
                raise ValueError(
                    f"state_dict comes from another sampler: its {key} is {state[key]}, this "
                    f"sampler's is {own} (same selection, upsample_factor, seed and "
                    "epoch_size needed)"
                )
        if state["yielded"] > self.num_samples:
            raise ValueError(
                f"state_dict['yielded'] should be at most the {self.num_samples} indices this "
                f"process yields an epoch, but got {state['yielded']}; it comes from a sampler "
                "with other num_replicas or drop_last, or was edited"
            )
        self.epoch = state["epoch"]
        self._resume = (state["epoch"], state["yielded"])
        self._running = None


def _check_epoch_size(epoch_size: int, num_examples: int, upsample_factor: int) -> int:
    """``epoch_size`` if it is an integer in ``[1, upsample_factor * num_examples]`` whose
    epochs fit in memory, else a ``TypeError``/``ValueError`` naming the bound."""
    epoch_size = check_positive_int("epoch_size", epoch_size)
    if num_examples == 0:
        raise ValueError(
            f"epoch_size={epoch_size} needs examples to draw from, but the dataset is empty "
            "(num_examples=0)"
        )
    bound = upsample_factor * num_examples
    if epoch_size > bound:
        raise ValueError(
            f"epoch_size should be at most upsample_factor x num_examples = {upsample_factor} "
            f"x {num_examples} = {bound} (the upsampled dataset if every example were "
            f"slow-learnable), but got epoch_size={epoch_size}; for more training, train more "
            "epochs"
        )
    if 16 * epoch_size > memory_bytes():  # an epoch's int64 indices, twice while drawn
        raise ValueError(
            f"epoch_size={epoch_size} makes epochs whose indices ({16 * epoch_size / 2**30:.3g} "
            f"GiB) exceed this machine's memory ({memory_bytes() / 2**30:.3g} GiB); use a "
            "smaller epoch_size (num_examples trains at SGD's step count)"
        )
    return epoch_size


def _accelerator_exists() -> bool:
    """Whether an ``accelerate.Accelerator`` of several processes was created in this process
    (Accelerate's own public state; Accelerate is not imported for it). One of a single
    process shards nothing, so a sampler sharding itself then loses nothing."""
    state = sys.modules.get("accelerate.state")
    if state is None or not state.is_initialized():
        return False
    return int(getattr(state.PartialState(), "num_processes", 1)) > 1


def _check_rank(rank: int, num_replicas: int) -> None:
    if rank >= num_replicas:
        raise ValueError(
            f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]"
        )

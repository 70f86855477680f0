"""``USEFULIterableDataset``: a stream in which the slow-learnable examples appear ``k`` times.

The iterable counterpart of `useful_data.USEFULDataset`, for training data that is streamed
(WebDataset, Hugging Face ``datasets`` in streaming mode or ``to_iterable_dataset()``, any
torch ``IterableDataset``) and addressed by example key (see `useful_data.streaming`). One
pass yields every example of the wrapped stream once, as it comes, and every selected example
``k - 1`` more times: the multiset of `USEFULDataset` (Algorithm 1: ``D = D ∪ C2``).

The copies are spread out, not yielded back to back: each one waits in a bounded buffer for a
random number of later stream items, drawn uniformly from ``[1, buffer_size]`` with a seeded
generator, and the copies still waiting when the stream ends follow it in the order they fell
due. At most ``buffer_size`` copies are held at once (``k - 1`` if that is more): before a
selected item would push the count past it, the copies due soonest are yielded first.

The wrapper never splits the stream: each DataLoader worker and each rank iterates the wrapped
stream, which splits its shards by worker and rank itself (WebDataset's ``split_by_node`` /
``split_by_worker``, ``datasets.distributed.split_dataset_by_node``, ``get_worker_info`` in a
torch ``IterableDataset``), and upsamples exactly what it sees. So the union over workers and
ranks is the ``USEFULDataset`` multiset whenever the splits of the wrapped stream partition it.

**Equal epochs under DDP.** Ranks whose parts of a stream differ in length would run
different numbers of steps, and a DDP-wrapped model then hangs at the epoch's end. With
``epoch_length=n`` every rank yields exactly ``n`` items an epoch (its DataLoader workers share
them: worker ``w`` of ``W`` yields ``n // W``, plus one if ``w < n % W``), so with the same
``batch_size`` and ``num_workers`` on every rank all ranks run the same number of steps. Each
process (rank, or worker of a rank) takes its items from its endless sequence of passes over
its part, pass ``p`` upsampled with the delays of epoch ``p``, and every epoch continues where
the last one stopped. So, exactly: the items a process yields over its first ``E`` epochs are
the first ``E q`` items (``q`` its share of ``n``) of passes ``0, 1, 2, ...`` of its part;
every complete pass is the multiset of `USEFULDataset` on that part (every example once,
every selected one ``k`` times), and whatever ends an epoch mid-pass is yielded at the start
of the next epoch. One complete pass of every process together is the whole stream's
upsampled multiset, where the stream splits into the same parts every epoch.

**Resuming mid-epoch.** ``state_dict()`` / ``load_state_dict()`` hold where this process is:
the epoch, the pass, the items of that pass already yielded and of this epoch. torchdata's
``StatefulDataLoader`` saves them per worker and restores them; a restored pass is rebuilt by
reading the stream again up to that point (the stream must give its items in the same order
for the same epoch), so the resumed epoch yields exactly the items the interrupted one had
left.

Conventions: ``N`` examples, ``S`` the selected (slow-learnable) ones, ``k`` the
``upsample_factor``.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from useful_data._checks import (
    check_positive_int,
    check_seed,
    check_upsample_factor,
    memory_bytes,
)
from useful_data._comm import get_rank, get_world_size
from useful_data._keys import (
    DEFAULT_KEY,
    Key,
    KeySpec,
    KeyTable,
    hash_key,
    hash_keys,
    key_at,
    key_kind,
    keys_array,
    read_key,
)
from useful_data.selection import Selection

__all__ = ["USEFULIterableDataset"]

T_co = TypeVar("T_co", covariant=True)

#: DataLoader workers per process whose positions survive between epochs (``epoch_length``).
_MAX_WORKERS = 256
#: Bytes a copy waiting in the buffer holds at least (its heap entry: a tuple and two ints).
_COPY_BYTES = 128
#: Epochs and positions are kept in shared int64 memory.
_INT64_MAX = 2**63 - 1


def _selected_keys(
    selection: Selection | str | os.PathLike[str] | Iterable[Any],
) -> tuple[np.ndarray, Selection | None]:
    """The keys to upsample, and the `Selection` they came from, if any."""
    if isinstance(selection, str | os.PathLike):
        selection = Selection.load(Path(selection))
    if isinstance(selection, Selection):
        if selection.keys is None:
            raise TypeError(
                "selection addresses examples by position (it was computed on a map-style "
                "dataset): use USEFULDataset for it, or compute the selection on the stream, "
                "find_slow_learnable(model, stream, key=...)"
            )
        return selection.keys[selection.mask], selection
    if isinstance(selection, bytes) or not isinstance(selection, Iterable):
        raise TypeError(
            "selection should be a Selection computed on a stream, a path to a saved one, or "
            f"the keys of the examples to upsample, but got {type(selection).__name__}"
        )
    return keys_array(selection, name="selection keys"), None


class USEFULIterableDataset(IterableDataset[T_co], Generic[T_co]):
    """Wrap a stream so its slow-learnable examples appear ``upsample_factor`` times a pass.

    Every item of the wrapped stream is yielded once, as it comes; an item whose key is
    selected is also yielded ``upsample_factor - 1`` more times, each copy after a random
    number (``1`` to ``buffer_size``, seeded; sooner when ``buffer_size`` copies wait) of
    later items, so copies rarely share a batch with their original. The copy is the same
    item object: put random augmentation after the wrapper (``transform=``, or in the
    training loop), not before it, so each copy is augmented afresh, as `USEFULDataset`
    re-reads an example.

    Under DataLoader workers and DDP the wrapped stream must split itself (see the module
    docstring); the wrapper does not split again, so every example is yielded once and every
    selected one ``upsample_factor`` times over all workers and ranks together. Each
    worker's copies wait in its own buffer.

    Where the pass is not split (no workers, one rank) the wrapper warns at its end with the
    number of selected keys that never appeared (a selection of another dataset, split or key
    field); in every process it warns with the number of selected keys seen more than once
    (each sighting was upsampled). Unselected keys are not tracked.

    Args:
        dataset: The stream: any iterable of items (a torch ``IterableDataset``, a
            WebDataset pipeline, a Hugging Face ``datasets.IterableDataset``, ...).
        selection: A `Selection` computed on the stream (with ``keys``), a path to a saved
            one, or the keys of the examples to upsample (strings or integers).
        key: The field of dict items holding the example key, or a function item -> key.
            ``None``: the field the `Selection` was computed with (``params["key"]``), else
            ``"__key__"`` (WebDataset's).
        upsample_factor: ``k >= 1``. Defaults to the Selection's (2, as in the paper), or 2.
        buffer_size: Most copies held at once (at least ``upsample_factor - 1`` are), and
            the longest delay of a copy, in items.
        seed: Seed of the delays; each epoch, rank and worker draws its own
            (``set_epoch``). The output is deterministic given the stream's order.
        transform: Applied to every yielded item, original or copy (e.g. augmentation).
        epoch_length: Items each rank yields per epoch, continuing over passes (see the
            module docstring); ``None`` (default): one pass per epoch, as long as the rank's
            part. Under DDP pass ``selection.upsampled_size // world_size``, the same on
            every rank, with the same ``num_workers`` (and ``persistent_workers=True``, or a
            fresh worker re-reads its pass up to where the last epoch stopped).

    Raises:
        TypeError: for a selection without keys, keys of mixed kinds, a bad ``key``, or (while
            iterating) a stream key of the other kind than the selection's.
        ValueError: for a repeated selected key or bad numbers, or an ``upsample_factor``
            whose copies of one selected item would not fit in memory.

    Example:
        >>> from torch.utils.data import IterableDataset
        >>> class Stream(IterableDataset):
        ...     def __iter__(self):
        ...         yield from ({"__key__": f"k{i}", "x": i} for i in range(6))
        >>> ds = USEFULIterableDataset(Stream(), ["k1", "k4"], buffer_size=3)
        >>> keys = [item["__key__"] for item in ds]
        >>> len(keys), sorted(keys)
        (8, ['k0', 'k1', 'k1', 'k2', 'k3', 'k4', 'k4', 'k5'])
    """

    def __init__(
        self,
        dataset: Iterable[T_co],
        selection: Selection | str | os.PathLike[str] | Iterable[Any],
        *,
        key: KeySpec | None = None,
        upsample_factor: int | None = None,
        buffer_size: int = 1024,
        seed: int = 0,
        transform: Callable[[Any], Any] | None = None,
        epoch_length: int | None = None,
    ) -> None:
        if not isinstance(dataset, Iterable):
            raise TypeError(
                f"dataset should be an iterable stream of items, but got {type(dataset).__name__}"
            )
        keys, sel = _selected_keys(selection)
        if key is None:
            recorded = sel.params.get("key") if sel is not None else None
            key = recorded if isinstance(recorded, str) and not recorded.startswith("<") else None
            if key is None and sel is not None and "key" in sel.params:
                raise TypeError(
                    f"selection was computed with key={sel.params['key']}, a function: pass "
                    "the same function as key= here"
                )
            key = DEFAULT_KEY if key is None else key
        if not (isinstance(key, str) or callable(key)):
            raise TypeError(
                f"key should be a field name (str) or a function item -> key, but got {key!r}"
            )
        if upsample_factor is None:
            upsample_factor = sel.upsample_factor if sel is not None else 2
        if transform is not None and not callable(transform):
            raise TypeError(f"transform should be callable, but got {transform!r}")
        table = KeyTable(len(keys))
        repeated = table.add(hash_keys(keys))
        if repeated.any():
            again = key_at(keys, int(np.flatnonzero(repeated)[0]))
            raise ValueError(
                f"selection keys should be distinct, but {again!r} appears twice (or shares "
                "its 64-bit hash with another key; rename one)"
            )
        self.dataset = dataset
        self.key = key
        self.upsample_factor = check_upsample_factor(upsample_factor)
        held = _COPY_BYTES * (self.upsample_factor - 1)  # a selected item's copies, at once
        if len(keys) and held > memory_bytes():
            raise ValueError(
                f"upsample_factor={self.upsample_factor} holds the {self.upsample_factor - 1} "
                f"extra copies of a selected item in the buffer at once ({held / 2**30:.3g} "
                f"GiB), more than this machine's memory ({memory_bytes() / 2**30:.3g} GiB); "
                "use a smaller upsample_factor (the paper: 2)"
            )
        self.buffer_size = check_positive_int("buffer_size", buffer_size)
        self.seed = check_seed("seed", seed)
        self.transform = transform
        self.selection = sel
        self.epoch_length = (
            None if epoch_length is None else check_positive_int("epoch_length", epoch_length)
        )
        self._table = table
        self._num_selected = len(keys)
        self._kind = key_kind(key_at(keys, 0)) if len(keys) else None
        # In shared memory, so that DataLoader workers (persistent ones too) see what the main
        # process sets: [0] the epoch; 1 + 2w and 2 + 2w: the pass worker w is in and the
        # items of it yielded, when its last epoch ended (epoch_length).
        self._shared = torch.zeros(1 + 2 * _MAX_WORKERS, dtype=torch.int64).share_memory_()
        self._live: dict[int, tuple[int, int, Iterator[T_co]]] = {}  # this process's passes
        self._position = [0, 0, 0, 0]  # epoch, pass, items of the pass, items of the epoch
        self._resume: dict[str, int] | None = None

    @property
    def epoch(self) -> int:
        """The epoch set by `set_epoch` (0 before), seen by every DataLoader worker."""
        return int(self._shared[0])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_live"] = {}  # suspended passes stay in the process that runs them
        return state

    @property
    def num_slow_learnable(self) -> int:
        """``|S|``, the number of distinct selected keys."""
        return self._num_selected

    def set_epoch(self, epoch: int) -> None:
        """Draw other delays this epoch; passed on to the wrapped stream if it has
        ``set_epoch`` (a Hugging Face ``IterableDataset`` reshuffles with it), here and, when
        an epoch starts, in every DataLoader worker (persistent ones too)."""
        self._shared[0] = check_seed("epoch", epoch, maximum=_INT64_MAX)
        inner = getattr(self.dataset, "set_epoch", None)
        if callable(inner):
            inner(epoch)

    def state_dict(self) -> dict[str, int]:
        """Where this process is: ``epoch``, ``pass``, ``offset`` (items of the pass yielded)
        and ``taken`` (items of the epoch yielded); for torchdata's ``StatefulDataLoader``."""
        epoch, pass_number, offset, taken = self._position
        return {"epoch": epoch, "pass": pass_number, "offset": offset, "taken": taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume where `state_dict` was taken: the next iteration reads the stream again up
        to that point (not yielding it) and goes on from there.

        Raises:
            ValueError: for a state without the four integers in ``[0, 2**63)``.
        """
        fields = ("epoch", "pass", "offset", "taken")
        if not isinstance(state, dict) or set(state) != set(fields):
            raise ValueError(
                f"state should be a dict with the fields {fields} (from state_dict()), "
                f"but got {state!r}"
            )
        resume = {f: check_seed(f"state[{f!r}]", state[f], maximum=_INT64_MAX) for f in fields}
        self._shared[0] = resume["epoch"]
        self._resume = resume

    def _split(self) -> tuple[bool, str]:
        """Whether this pass is one part of a split stream, and this process's name."""
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rank, world = get_rank(), get_world_size()
        if world == 1:  # a DataLoader worker does not inherit the process group; torchrun's env
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        return info is not None or world > 1, f"{rank}:{worker}"

    def __iter__(self) -> Iterator[T_co]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if worker >= _MAX_WORKERS:
            raise ValueError(
                f"USEFULIterableDataset supports up to {_MAX_WORKERS} DataLoader workers, "
                f"but got num_workers={num_workers}"
            )
        inner = getattr(self.dataset, "set_epoch", None)
        if info is not None and callable(inner):  # this worker's copy of the stream
            inner(self.epoch)
        items = self._epoch(worker, num_workers)
        return items if self.transform is None else map(self.transform, items)

    def _epoch(self, worker: int, num_workers: int) -> Iterator[T_co]:
        """This process's items of one epoch: one pass, or its share of ``epoch_length``
        continuing its sequence of passes; ``self._position`` follows every item."""
        slot = 1 + 2 * worker
        resume, self._resume = self._resume, None
        quota = None
        if self.epoch_length is not None:
            quota = self.epoch_length // num_workers + (worker < self.epoch_length % num_workers)
        if resume is not None:
            epoch, pass_number = resume["epoch"], resume["pass"]
            offset, taken = resume["offset"], resume["taken"]
        elif quota is None:
            epoch, pass_number, offset, taken = self.epoch, self.epoch, 0, 0
        else:
            epoch, taken = self.epoch, 0
            pass_number, offset = int(self._shared[slot]), int(self._shared[slot + 1])
        position = self._position = [epoch, pass_number, offset, taken]
        live = self._live.pop(worker, None)
        if live is not None and live[:2] == (pass_number, offset):
            items = live[2]  # this process stopped there last epoch: go on
        else:
            items = self._pass(pass_number)
            rebuilt = sum(1 for _ in itertools.islice(items, offset))  # the pass up to there
            if rebuilt < offset:
                raise ValueError(
                    f"the state loaded with load_state_dict has offset={offset} items of pass "
                    f"{pass_number}, but this process's part of the stream has {rebuilt}: the "
                    "state comes from another stream, split or number of workers"
                )
        while quota is None or position[3] < quota:
            for item in items:
                position[2] += 1
                position[3] += 1
                yield item
                if position[3] == quota:
                    break
            else:  # the pass ended
                if quota is None:
                    return
                if position[2] == 0:
                    raise RuntimeError(
                        f"with epoch_length={self.epoch_length}, every process needs a "
                        f"part of the stream, but {self._split()[1]} (rank:worker) got none: "
                        "give the stream at least as many shards as ranks x workers"
                    )
                position[1] += 1
                position[2] = 0
                items = self._pass(position[1])
        self._shared[slot], self._shared[slot + 1] = position[1], position[2]
        self._live[worker] = (position[1], position[2], items)

    def _key(self, item: Any) -> Key:
        """``read_key`` with the kind checked against the selection's."""
        k = read_key(item, self.key)
        if self._kind is not None and key_kind(k) != self._kind:
            raise TypeError(
                f"the selection holds {self._kind} keys, but the stream's key is {k!r} of "
                f"type {type(k).__name__}; pass the key= the selection was computed with"
            )
        return k

    def _pass(self, pass_number: int) -> Iterator[T_co]:
        """One pass over this process's part of the stream, upsampled with the delays of
        epoch ``pass_number``."""
        split, where = self._split()
        # str seeds are hashed with SHA-512: the same on every run and platform
        draw = random.Random(f"useful-data:{self.seed}:{pass_number}:{where}").random
        copies, buffer_size = self.upsample_factor - 1, self.buffer_size
        field = self.key if isinstance(self.key, str) else None
        view, mask, slot_of = self._table._view, self._table.capacity - 1, self._table.slot
        seen = bytearray(self._table.capacity)  # 1 at the slot of each selected key seen
        pending: list[tuple[int, int, Any]] = []  # copies: (due position, tie-breaker, item)
        # a key of this exact type needs no check; any other is normalized and its kind
        # checked against the selection's (`_key`), for every item
        plain = {"str": str, "int": int, None: None}[self._kind]
        position = order = repeats = 0
        for item in self.dataset:
            if field is None:
                k = self._key(item)
            else:  # the hot path: a dict lookup, the full check only when it fails
                try:
                    k = item[field]  # type: ignore[index]
                except (KeyError, TypeError, IndexError):
                    k = self._key(item)
                if type(k) is not plain:
                    k = self._key(item)
            position += 1
            while pending and pending[0][0] < position:  # due after d items, not d - 1
                yield heapq.heappop(pending)[2]
            if not copies:
                yield item
                continue
            h = hash_key(k)
            at = h & mask
            held = view[at]  # the first probe inline: a miss on an empty slot is the norm
            slot = at if held == h else (-1 if held == 0 else slot_of(h))
            if slot < 0:
                yield item
                continue
            repeats += seen[slot]
            seen[slot] = 1
            while pending and len(pending) + copies > buffer_size:  # the soonest due go
                yield heapq.heappop(pending)[2]
            yield item
            for _ in range(copies):
                order += 1
                due = position + 1 + int(draw() * buffer_size)  # uniform in [1, buffer_size]
                heapq.heappush(pending, (due, order, item))
        while pending:
            yield heapq.heappop(pending)[2]
        self._warn(split, seen, repeats)

    def _warn(self, split: bool, seen: bytearray, repeats: int) -> None:
        if repeats:
            warnings.warn(
                f"{repeats} sighting(s) of selected keys repeated a key already seen in this "
                "pass over the stream; each was upsampled again. Keys should be unique within "
                "a pass: does the stream repeat (resampled shards, .repeat())?",
                RuntimeWarning,
                stacklevel=3,
            )
        if split or self.upsample_factor == 1:
            return
        missing = self._num_selected - (len(seen) - seen.count(0))
        if missing:
            warnings.warn(
                f"{missing} of {self._num_selected} selected keys never appeared in this pass "
                f"over the stream (key {self.key!r}); was the selection computed on another "
                "dataset, split or key field?",
                RuntimeWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return (
            f"USEFULIterableDataset(num_slow_learnable={self._num_selected}, "
            f"upsample_factor={self.upsample_factor}, buffer_size={self.buffer_size}, "
            f"dataset={type(self.dataset).__name__})"
        )

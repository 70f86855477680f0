"""``USEFULDataset``: a training set in which the slow-learnable examples appear ``k`` times.

The wrapped dataset is untouched: the wrapper maps each of its ``N + (k - 1) |S|`` positions
to a base index through one int64 array, ``[0, 1, ..., N-1]`` followed by the slow-learnable
indices repeated ``k - 1`` times (Algorithm 1: ``D = D ∪ C2``).
"""

from __future__ import annotations

import array
import copy
import operator
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

import numpy as np
import torch
from torch.utils.data import Dataset

from useful_data._checks import check_sized, check_upsample_factor, check_upsampled_size
from useful_data._resolve import resolve_selection
from useful_data._targets import dataset_targets
from useful_data.selection import SelectionLike

__all__ = ["USEFULDataset"]

T_co = TypeVar("T_co", covariant=True)

# Attributes that belong to the wrapper itself; every other attribute is read from and
# written to the wrapped dataset, so timm's ``loader.dataset.transform = ...`` reaches it.
_OWN = frozenset(
    {
        "dataset",
        "upsample_factor",
        "index_map",
        "slow_learnable_mask",
        "selection",
        "_positions",
        "_views",
    }
)
# Per-example sequences of torchvision datasets (besides ``targets``, a property below): read
# through the wrapper they are remapped to the upsampled view, like the items.
_PER_EXAMPLE = frozenset({"labels", "samples", "imgs"})


class USEFULDataset(Dataset[T_co], Generic[T_co]):
    """Wrap a map-style dataset so its slow-learnable examples appear ``upsample_factor`` times.

    Drop it in right after building the training set; everything downstream (DataLoader,
    ``DistributedSampler``, timm's ``create_loader``) works unchanged. A DataLoader fetches
    each batch with one ``__getitems__`` call (passed on to the wrapped dataset's own
    ``__getitems__`` where it has one), so the wrapper costs well under a microsecond per item.

    Other attributes are read from and set on the wrapped dataset (``.transform``,
    ``.classes``, ...). The per-example sequences ``targets``, ``labels``, ``samples`` and
    ``imgs`` are remapped to the upsampled view (entry ``i`` describes item ``i``), e.g. for
    class-balanced sampling weights: tensors and arrays as a new tensor or array at each
    read, lists as a read-only view that reads the wrapped list at each access, so they
    always agree with the items, even after the wrapped list is edited in place. Methods that
    take an index (timm's ``filename(i)``) use the wrapped dataset's indexing: map ``i``
    through `index_map` first. ``copy.copy`` copies the wrapped dataset too, so a copy's
    ``transform`` can be changed on its own.

    Args:
        dataset: The original training set (map-style, with ``__len__``).
        selection: A `Selection`, a path to a saved one, a boolean mask of
            shape ``(N,)`` or a sequence of distinct indices of slow-learnable examples.
        upsample_factor: How many times a slow-learnable example appears, ``k >= 1``. Defaults
            to the Selection's ``upsample_factor`` (2, as in the paper), or 2.

    Raises:
        ValueError: if the selection does not fit the dataset (length, indices, or a
            fingerprint mismatch when the dataset exposes its labels, see
            `Selection.check_fits`), or the upsampled index would not
            fit in memory.
        TypeError: if ``upsample_factor`` is not an integer.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> base = TensorDataset(torch.arange(5.0), torch.tensor([0, 0, 1, 1, 1]))
        >>> ds = USEFULDataset(base, [1, 4])
        >>> len(ds), ds.index_map.tolist()
        (7, [0, 1, 2, 3, 4, 1, 4])
        >>> ds[6]
        (tensor(4.), tensor(1))
    """

    dataset: Dataset[T_co]
    upsample_factor: int
    index_map: np.ndarray
    slow_learnable_mask: np.ndarray

    def __init__(
        self,
        dataset: Dataset[T_co],
        selection: SelectionLike,
        upsample_factor: int | None = None,
    ) -> None:
        num_examples = check_sized("dataset", dataset)
        mask, sel = resolve_selection(selection, num_examples)
        if upsample_factor is None:
            upsample_factor = sel.upsample_factor if sel is not None else 2
        k = check_upsample_factor(upsample_factor)
        if sel is not None:
            sel.check_fits(dataset)
        index_map = upsampled_index_map(mask, k)
        index_map.setflags(write=False)
        mask = np.array(mask, dtype=bool)
        mask.setflags(write=False)
        object.__setattr__(self, "dataset", dataset)
        object.__setattr__(self, "upsample_factor", k)
        object.__setattr__(self, "index_map", index_map)
        # The same map as a flat C array: indexing it with a Python int is the DataLoader's
        # hot path (tens of ns, vs ~1 us for a numpy scalar), at 8 bytes per entry.
        object.__setattr__(self, "_positions", array.array("q", index_map.tobytes()))
        object.__setattr__(self, "slow_learnable_mask", mask)
        object.__setattr__(self, "selection", sel)

    def __len__(self) -> int:
        self._check_unchanged()
        return int(self.index_map.shape[0])

    def _check_unchanged(self) -> None:
        """Raise if the wrapped dataset's length changed since it was wrapped: its selection
        and index map describe the examples it had then (one ``len`` call, tens of ns)."""
        now, then = len(self.dataset), self.slow_learnable_mask.shape[0]  # type: ignore[arg-type]
        if now != then:
            effect = (
                "its new examples would never be trained on"
                if now > then
                else ("indices would point past its end")
            )
            raise RuntimeError(
                f"the wrapped dataset had {then} examples when USEFULDataset wrapped it but "
                f"has {now} now, so the selection no longer describes it ({effect}); wrap "
                "the dataset again after changing it, with a selection computed on it"
            )

    def __getitems__(self, indices: list[int]) -> list[T_co]:
        """A batch of items: what a ``DataLoader`` asks for (one call per batch, not per
        item). Uses the wrapped dataset's own ``__getitems__`` when it has one."""
        self._check_unchanged()
        try:
            # One C call for the batch; itemgetter of one index returns it bare, of none fails.
            if len(indices) > 1:
                mapped = operator.itemgetter(*indices)(self._positions)
            else:
                mapped = tuple(self._positions[i] for i in indices)
        except (IndexError, TypeError):  # the per-item path words the error
            for i in indices:
                self[i]
            raise
        inner = getattr(self.dataset, "__getitems__", None)
        if inner is not None:
            return inner(list(mapped))
        return list(map(self.dataset.__getitem__, mapped))

    def __getitem__(self, index: int) -> T_co:
        if type(index) is not int:  # samplers yield ints; anything else is checked first
            index = _as_index(index)
        self._check_unchanged()
        try:
            position = self._positions[index]
        except IndexError:
            raise IndexError(
                f"index {index} is out of range for USEFULDataset of length {len(self)}"
            ) from None
        return self.dataset[position]

    @property
    def num_slow_learnable(self) -> int:
        """``|S|``, the number of distinct slow-learnable examples."""
        return int(self.slow_learnable_mask.sum())

    @property
    def targets(self) -> Any:
        """Labels of the upsampled view (same type as the wrapped dataset's), or ``None``."""
        base = getattr(self.dataset, "targets", None)
        if base is None:
            labels = dataset_targets(self.dataset)
            return None if labels is None else labels[self.index_map]
        return self._remapped("targets", base)

    def _remapped(self, name: str, base: Any) -> Any:
        """A per-example sequence of the wrapped dataset, in the upsampled order: a tensor or
        array indexed anew, anything else as an `_UpsampledView` that reads the wrapped
        dataset's current ``name`` at each access (``ds.samples[i]`` in a loop must not
        rebuild 1.28M entries every time, nor go stale when the wrapped list is edited)."""
        if isinstance(base, torch.Tensor):
            return base[torch.from_numpy(np.array(self.index_map))]
        if isinstance(base, np.ndarray):
            return base[self.index_map]
        views: dict[str, _UpsampledView] = self.__dict__.setdefault("_views", {})
        if name not in views:
            views[name] = _UpsampledView(self, name)
        return views[name]

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: delegate to the wrapped dataset. Guard the
        # wrapper's own names so unpickling (before __dict__ is filled) cannot recurse.
        if name in _OWN or name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self.dataset, name)
        if name in _PER_EXAMPLE and _has_length(value, len(self.slow_learnable_mask)):
            return self._remapped(name, value)
        return value

    def __copy__(self) -> USEFULDataset[T_co]:
        # Attributes are set on the wrapped dataset, so a copy that shared it would change
        # the original's transform too (the "copy the train set for an eval view" idiom).
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__getstate__())
        object.__setattr__(clone, "dataset", copy.copy(self.dataset))
        return clone

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            raise AttributeError(f"USEFULDataset.{name} is read-only; build a new USEFULDataset")
        setattr(self.dataset, name, value)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_views", None)  # rebuilt on demand; not shipped to workers
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"USEFULDataset(num_examples={len(self.slow_learnable_mask)}, "
            f"num_slow_learnable={self.num_slow_learnable}, "
            f"upsample_factor={self.upsample_factor}, length={self.index_map.shape[0]}, "
            f"dataset={type(self.dataset).__name__})"
        )


class _UpsampledView(Sequence[Any]):
    """``wrapper.<name>`` (a per-example list of the wrapped dataset) in the upsampled order,
    read-only: entry ``i`` is ``wrapper.dataset.<name>[wrapper.index_map[i]]``, read at each
    access. Compares equal to a sequence with the same entries; ``list(view)`` copies it."""

    def __init__(self, wrapper: USEFULDataset[Any], name: str) -> None:
        self._wrapper = wrapper
        self._name = name

    def _base(self) -> Any:
        return getattr(self._wrapper.dataset, self._name)

    def __len__(self) -> int:
        return len(self._wrapper)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        positions = self._wrapper._positions
        if isinstance(index, slice):
            base = self._base()
            return [base[p] for p in positions[index]]
        try:
            position = positions[index]
        except IndexError:
            raise IndexError(
                f"index {index} is out of range for {self._name} of length {len(self)}"
            ) from None
        return self._base()[position]

    def __iter__(self) -> Iterator[Any]:
        base = self._base()
        return (base[p] for p in self._wrapper._positions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # like a list

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(view)`` in one vectorised step (not one ``__getitem__`` per entry)."""
        return np.asarray(self._base(), dtype=dtype)[self._wrapper.index_map]

    def __repr__(self) -> str:
        return repr(list(self))


def upsampled_index_map(mask: np.ndarray, upsample_factor: int) -> np.ndarray:
    """Algorithm 1's ``D ∪ C2`` as base indices: ``[0, ..., N-1]`` followed by the
    slow-learnable indices of ``mask`` repeated ``upsample_factor - 1`` times (int64).

    Its size is checked against the machine's memory before anything is allocated, and
    building it costs O(k |S|), not O(k), when few or no examples are selected.
    """
    slow = np.flatnonzero(mask).astype(np.int64)
    check_upsampled_size(len(mask), len(slow), upsample_factor)
    return np.concatenate(
        [np.arange(len(mask), dtype=np.int64), np.tile(slow, upsample_factor - 1)]
    )


def _has_length(value: Any, length: int) -> bool:
    """Whether ``value`` is a sequence, array or tensor of ``length`` entries (not a string)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return False
    try:
        return len(value) == length
    except TypeError:  # e.g. a 0-d tensor
        return False


def _as_index(index: Any) -> int:
    """A non-``int`` index as an ``int``: numpy integers and 0-d tensors are accepted."""
    if isinstance(index, torch.Tensor) and index.ndim == 0:
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise TypeError(
            f"index should be an integer, but got {type(index).__name__}; "
            "use a DataLoader or Subset for batches of indices"
        )
    return int(index)

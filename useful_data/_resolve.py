"""Turning whatever a user passes as a selection into a mask (`SelectionLike`), for the
dataset wrapper, the sampler and the integrations."""

from __future__ import annotations

import os

import numpy as np

from useful_data._checks import as_numpy, indices_to_mask
from useful_data.selection import Selection, SelectionLike

__all__ = ["refuse_keyed", "resolve_selection", "same_selection"]


def refuse_keyed(selection: Selection, name: str) -> None:
    """Raise if ``selection`` is addressed by key (computed on a stream), not by position."""
    if selection.keys is not None:
        raise ValueError(
            f"{name} was computed on a stream and addresses its examples by key, not by "
            "position; upsample the stream with useful_data.USEFULIterableDataset"
        )


def resolve_selection(
    selection: SelectionLike, num_examples: int | None = None, *, name: str = "selection"
) -> tuple[np.ndarray, Selection | None]:
    """Turn anything `SelectionLike` into a boolean mask.

    Args:
        selection: A `Selection`, a path to a saved one, a boolean mask of shape
            ``(N,)``, or a sequence of distinct integer indices.
        num_examples: ``N``; required for indices, checked against a mask or a Selection.
        name: Argument name used in error messages.

    Returns:
        ``(mask, selection_or_none)``: the mask and the `Selection` it came from, if any.

    Raises:
        TypeError: if ``selection`` is none of the accepted kinds.
        ValueError: if it does not fit ``num_examples`` (a mask's length, a Selection's size,
            an index out of range or repeated, a 0/1 integer array given for a bool mask),
            or indices come without ``num_examples``.
    """
    sel: Selection | None = None
    if isinstance(selection, str | os.PathLike):
        sel = Selection.load(selection)
    elif isinstance(selection, Selection):
        sel = selection
    if sel is not None:
        refuse_keyed(sel, name)
        if num_examples is not None and sel.num_examples != num_examples:
            raise ValueError(
                f"{name} was computed on {sel.num_examples} examples, but the dataset has "
                f"{num_examples}; was it computed on another dataset or split?"
            )
        return np.asarray(sel.mask), sel
    array = as_numpy(name, selection)
    if array.dtype == bool:
        if array.ndim != 1 or (num_examples is not None and array.shape[0] != num_examples):
            expected = f"({num_examples},)" if num_examples is not None else "(N,)"
            raise ValueError(
                f"{name} as a boolean mask should have shape {expected}, "
                f"but got shape {tuple(array.shape)}"
            )
        return array, None
    if num_examples is None:
        raise ValueError(
            f"{name} given as indices needs the dataset size: pass num_examples=N "
            "(or pass a boolean mask or a Selection)"
        )
    if array.size == 0:
        array = array.astype(np.int64)
    if array.size > 2 and np.isin(array, (0, 1)).all():  # as indices, 0 and 1 would repeat
        raise ValueError(
            f"{name} holds only 0s and 1s, which as indices would repeat: for a mask, pass "
            f"booleans ({name}.astype(bool) or tensor.bool()); for indices, distinct ones"
        )
    return indices_to_mask(array, num_examples, name=name), None


def same_selection(given: SelectionLike, saved: SelectionLike) -> bool:
    """Whether two selections upsample the same examples by the same factor, and, for two
    `Selection` objects, were computed on the same labels: the one rule by which a resumed
    checkpoint's selection and a ``selection=`` argument are compared (Lightning, the HF
    ``Trainer``)."""
    if isinstance(given, Selection) and isinstance(saved, Selection):
        return (
            np.array_equal(given.mask, saved.mask)
            and given.upsample_factor == saved.upsample_factor
            and given.fingerprint == saved.fingerprint
        )
    return np.array_equal(_selected_indices(given), _selected_indices(saved))


def _selected_indices(selection: SelectionLike) -> np.ndarray:
    if isinstance(selection, Selection):
        return selection.indices
    array = as_numpy("selection", selection)
    if array.dtype == bool:
        return np.flatnonzero(array)
    return np.unique(array.astype(np.int64))

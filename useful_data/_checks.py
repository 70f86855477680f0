"""Argument validation shared by the public functions (one place, one wording).

Every message names the argument, the value received and what would be accepted, so a
user can fix the call without reading the source.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_numpy",
    "check_finite",
    "check_positive_int",
    "check_upsample_factor",
    "indices_to_mask",
]


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"{name} should be an integer >= {minimum}, but got {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(f"{name} should be an integer >= {minimum}, but got {name}={value}")
    return int(value)


def check_upsample_factor(upsample_factor: Any) -> int:
    """Validate the upsampling factor k (the paper uses k=2: slow-learnable examples twice)."""
    return check_positive_int("upsample_factor", upsample_factor, minimum=1)


def as_numpy(name: str, value: Any) -> np.ndarray:
    """Convert an array, tensor or sequence to a numpy array (no copy when possible)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, str | bytes | os.PathLike) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} should be a numpy array, a torch tensor or a sequence, "
            f"but got {name} of type {type(value).__name__}"
        )
    return np.asarray(value)


def check_finite(name: str, array: np.ndarray) -> None:
    """Raise a ``ValueError`` that counts the non-finite rows and names the first one."""
    finite = np.isfinite(array)
    if finite.all():
        return
    bad_rows = ~finite.reshape(len(array), -1).all(axis=1)
    count = int(bad_rows.sum())
    first = int(np.flatnonzero(bad_rows)[0])
    raise ValueError(
        f"{name} should be finite, but {count} of {len(array)} rows contain NaN or inf "
        f"(first at index {first}); check the model for divergence at the separating epoch "
        "or lower the learning rate"
    )


def indices_to_mask(indices: np.ndarray, num_examples: int, *, name: str = "indices") -> np.ndarray:
    """Turn integer indices into a boolean mask of length ``num_examples``.

    Raises:
        ValueError: if an index is out of ``[0, num_examples)`` or appears twice.
    """
    if indices.ndim != 1:
        raise ValueError(f"{name} should be 1-D, but got shape {tuple(indices.shape)}")
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"{name} should hold integers, but got dtype {indices.dtype}")
    indices = indices.astype(np.int64, copy=False)
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= num_examples:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} should lie in [0, {num_examples}) for a dataset of {num_examples} "
                f"examples, but got index {bad}"
            )
    mask = np.zeros(num_examples, dtype=bool)
    mask[indices] = True
    if int(mask.sum()) != indices.size:
        values, counts = np.unique(indices, return_counts=True)
        dup = int(values[counts > 1][0])
        raise ValueError(
            f"{name} should not repeat an index (upsampling is set by upsample_factor), "
            f"but index {dup} appears {int(counts[values == dup][0])} times"
        )
    return mask

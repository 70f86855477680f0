"""Argument validation shared by the public functions (one place, one wording).

Every message names the argument, the value received and what would be accepted, so a
user can fix the call without reading the source.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "SEED_MAX",
    "as_numpy",
    "check_bool",
    "check_destination",
    "check_finite",
    "check_int",
    "check_outputs",
    "check_positive_int",
    "check_seed",
    "check_upsample_factor",
    "indices_to_mask",
    "is_integer_valued",
]

#: The largest seed accepted: ``numpy.random.RandomState`` (scikit-learn's k-means) takes
#: seeds in ``[0, 2**32)``.
SEED_MAX = 2**32 - 1


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


def check_seed(name: str, value: Any, *, maximum: int = SEED_MAX) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[0, maximum]``, else raise."""
    value = check_positive_int(name, value, minimum=0)
    if value > maximum:
        raise ValueError(f"{name} should be an integer in [0, {maximum}], but got {name}={value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` as a ``bool`` if it is one (numpy's too) or the integer 0 or 1, else
    raise: a string such as ``"False"`` is truthy and would silently mean ``True``."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) and value in (0, 1):
        return bool(value)
    raise TypeError(
        f"{name} should be True or False, but got {name}={value!r} of type {type(value).__name__}"
    )


def check_int(name: str, value: Any) -> int:
    """Return ``value`` as an ``int`` if it is an integer (numpy's, a 0-d integer tensor: what
    ``operator.index`` takes; not a bool, float or string), else raise."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(
        f"{name} should be an integer, but got {name}={value!r} of type {type(value).__name__}"
    )


def check_destination(name: str, path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a `Path` if a file can be written there: its folder exists and it
    is not itself a folder. Raises `FileNotFoundError` or `IsADirectoryError` naming both."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{name} should be a file path, but {str(path)!r} is a folder "
            f"(e.g. {str(path / 'selection.npz')!r})"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"{name} should be in an existing folder, but {str(path.parent)!r} does not exist "
            f"(for {str(path)!r}); create it first"
        )
    return path


def check_upsample_factor(upsample_factor: Any) -> int:
    """Validate the upsampling factor k (the paper uses k=2: slow-learnable examples twice)."""
    return check_positive_int("upsample_factor", upsample_factor, minimum=1)


def as_numpy(name: str, value: Any) -> np.ndarray:
    """Convert an array, tensor or sequence to a numpy array (no copy when possible)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16 (autocast outputs)
            value = value.float()
        return value.numpy()
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


def is_integer_valued(array: np.ndarray) -> bool:
    """Whether ``array`` holds class labels: an integer dtype, or floats that are all whole
    numbers (labels saved as floats); an empty array of any dtype qualifies."""
    if array.size == 0 or np.issubdtype(array.dtype, np.integer):
        return True
    return bool(np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)))


def check_outputs(logits: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate model outputs and their labels; return them as C-contiguous float32 ``(N, C)``
    and int64 ``(N,)`` arrays.

    Raises:
        TypeError: if either is not an array, a tensor or a sequence.
        ValueError: if ``logits`` is not ``(N, C)`` with ``N >= 1`` and ``C >= 2``, ``targets``
            is not ``(N,)`` integer labels in ``[0, C)``, or a logit is NaN or infinite.
    """
    logits_np = np.ascontiguousarray(as_numpy("logits", logits), dtype=np.float32)
    targets_np = as_numpy("targets", targets)
    if logits_np.ndim != 2:
        raise ValueError(f"logits should have shape (N, C), but got shape {logits_np.shape}")
    num_examples, num_classes = logits_np.shape
    if num_classes < 2:
        raise ValueError(
            f"logits should have at least 2 columns (one per class), but got shape "
            f"{logits_np.shape}"
        )
    if targets_np.ndim != 1 or targets_np.shape[0] != num_examples:
        raise ValueError(
            f"targets should have shape ({num_examples},) to match logits of shape "
            f"{logits_np.shape}, but got shape {targets_np.shape}"
        )
    if num_examples == 0:
        raise ValueError("logits should hold at least one example, but got N=0")
    if not is_integer_valued(targets_np):
        raise ValueError(
            f"targets should be integer class labels, but got dtype {targets_np.dtype}"
        )
    targets_np = targets_np.astype(np.int64)
    low, high = int(targets_np.min()), int(targets_np.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"targets should be class indices in [0, {num_classes}) (one per logit column), "
            f"but got label {low if low < 0 else high}"
        )
    check_finite("logits", logits_np)
    return logits_np, targets_np


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

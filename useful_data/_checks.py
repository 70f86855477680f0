"""Argument validation shared by the public functions (one place, one wording).

Every message names the argument, the value received and what would be accepted, so a
user can fix the call without reading the source.
"""

from __future__ import annotations

import operator
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "SEED_MAX",
    "as_labels",
    "as_numpy",
    "check_bool",
    "check_destination",
    "check_finite",
    "check_int",
    "check_logits_dtype",
    "check_outputs",
    "check_positive_int",
    "check_seed",
    "check_sized",
    "check_upsample_factor",
    "check_upsampled_size",
    "indices_to_mask",
    "is_integer_valued",
    "memory_bytes",
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


def check_sized(name: str, dataset: Any) -> int:
    """Return ``len(dataset)`` for a map-style dataset, else raise a `TypeError` naming it."""
    try:
        return len(dataset)
    except TypeError:
        raise TypeError(
            f"{name} should be a map-style dataset with __len__ and __getitem__, but got "
            f"{type(dataset).__name__}, which has no length (an IterableDataset or a "
            "generator); wrap a finite stream in a map-style dataset first"
        ) from None


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
    """Return the file a save to ``path`` writes, if one can be written there, else raise.

    What a save does where something already exists (the same as ``open(path, "w")``):
    a symbolic link is followed (the file it points to is replaced, the link kept), an
    existing regular file is replaced if it is writable, and anything that is not a regular
    file (a folder, a FIFO, a socket, a device) is refused.

    Raises:
        FileNotFoundError: if the folder of the file does not exist.
        IsADirectoryError: if ``path`` is a folder.
        PermissionError: if the file exists and is read-only.
        ValueError: if the file exists and is not a regular file (a FIFO, a socket, a device).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{name} should be a file path, but {str(path)!r} is a folder "
            f"(e.g. {str(path / 'selection.npz')!r})"
        )
    target = Path(os.path.realpath(path))  # a link (even a dangling one) is followed
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"{name} should be in an existing folder, but {str(target.parent)!r} does not exist "
            f"(for {str(path)!r}); create it first"
        )
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target  # a new file
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"{name} should be a regular file or a new one, but {str(path)!r} is "
            f"{_file_kind(mode)}; choose another path"
        )
    if not mode & 0o222 or not os.access(target, os.W_OK):
        raise PermissionError(
            f"{name} {str(path)!r} is read-only; make it writable (chmod u+w) or choose "
            "another path"
        )
    return target


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def check_upsample_factor(upsample_factor: Any) -> int:
    """Validate the upsampling factor k (the paper uses k=2: slow-learnable examples twice)."""
    return check_positive_int("upsample_factor", upsample_factor, minimum=1)


def memory_bytes() -> int:
    """The machine's physical memory in bytes (a very large number where unknown)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return 2**63


def check_upsampled_size(num_examples: int, num_slow_learnable: int, upsample_factor: int) -> int:
    """Return ``N + (k - 1) |S|``, the length of the upsampled dataset, if its int64 index
    (8 bytes an entry) fits in this machine's memory, else raise a `ValueError` before
    anything is allocated. Call after `check_upsample_factor`."""
    size = num_examples + (upsample_factor - 1) * num_slow_learnable
    if 8 * size > memory_bytes():
        raise ValueError(
            f"upsample_factor={upsample_factor} with {num_slow_learnable} slow-learnable of "
            f"{num_examples} examples makes an upsampled dataset of {size} entries, whose "
            f"index ({8 * size / 2**30:.3g} GiB) exceeds this machine's memory "
            f"({memory_bytes() / 2**30:.3g} GiB); use a smaller upsample_factor (the paper: 2)"
        )
    return size


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
    try:
        return np.asarray(value)
    except ValueError as err:  # rows of different lengths
        raise ValueError(
            f"{name} should be a rectangular array, but got nested sequences of different "
            f"lengths ({err})"
        ) from None


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
    """Whether ``array`` holds class labels: an integer dtype (not bool), or floats that are
    all whole numbers within int64's range (labels saved as floats); an empty array of any
    dtype qualifies."""
    if array.size == 0 or array.dtype.kind in "iu":
        return True
    return bool(
        array.dtype.kind == "f"
        and np.all(np.isfinite(array))
        and np.all(array == np.round(array))
        and np.all(np.abs(array) < 2.0**63)
    )


def _first(where: np.ndarray) -> int:
    """The flat index of the first ``True`` of ``where``."""
    return int(np.flatnonzero(where)[0])


def as_labels(name: str, array: np.ndarray, *, num_classes: int | None = None) -> np.ndarray:
    """Return class labels as int64 if they are integers (or whole floats) in
    ``[0, num_classes)`` (with ``num_classes``) or within int64 (without), else raise a
    `ValueError` that names ``name``, the offending label as given, and its index. Bools,
    complex numbers and strings are not labels."""
    if array.size == 0:
        return np.zeros(array.shape, dtype=np.int64)
    kind = array.dtype.kind
    if kind not in "iuf":
        raise ValueError(
            f"{name} should be integer class labels, but got dtype {array.dtype}"
            + ("; convert them with .astype(int)" if kind == "b" else "")
        )
    if kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            i = _first(bad)
            raise ValueError(
                f"{name} should be integer class labels, but got dtype {array.dtype} with "
                f"label {array.reshape(-1)[i].item()!r} at index {i}"
            )
    low, high = array.min(), array.max()
    low, high = (float(low), float(high)) if kind == "f" else (int(low), int(high))
    lowest, limit = (0, num_classes) if num_classes is not None else (-(2**63), 2**63)
    if low < lowest or high >= limit:
        value = low if low < lowest else high
        i = _first(array == value)
        accepted = (
            f"class indices in [0, {num_classes}) (one per logit column)"
            if num_classes is not None
            else "integer class labels within int64"
        )
        raise ValueError(f"{name} should be {accepted}, but got label {value!r} at index {i}")
    return array.astype(np.int64)


def check_logits_dtype(name: str, array: np.ndarray | torch.Tensor) -> None:
    """Raise a `TypeError` if ``array`` is not real numbers (bool, complex, strings)."""
    if isinstance(array, torch.Tensor):
        ok = not (array.dtype == torch.bool or array.is_complex())
    else:
        ok = array.dtype.kind in "iuf"
    if not ok:
        raise TypeError(
            f"{name} should hold real numbers (model outputs, float), but got dtype {array.dtype}"
        )


def check_outputs(logits: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate model outputs and their labels; return them as C-contiguous float32 ``(N, C)``
    and int64 ``(N,)`` arrays.

    Raises:
        TypeError: if either is not an array, a tensor or a sequence, or ``logits`` is not
            real numbers (bool, complex).
        ValueError: if ``logits`` is not ``(N, C)`` with ``N >= 1`` and ``C >= 2``, ``targets``
            is not ``(N,)`` integer labels in ``[0, C)``, or a logit is NaN or infinite
            (also after conversion to float32).
    """
    logits_raw = as_numpy("logits", logits)
    check_logits_dtype("logits", logits_raw)
    targets_np = as_numpy("targets", targets)
    if logits_raw.ndim != 2:
        raise ValueError(f"logits should have shape (N, C), but got shape {logits_raw.shape}")
    num_examples, num_classes = logits_raw.shape
    if num_classes < 2:
        raise ValueError(
            f"logits should have at least 2 columns (one per class), but got shape "
            f"{logits_raw.shape}"
        )
    if targets_np.ndim != 1 or targets_np.shape[0] != num_examples:
        raise ValueError(
            f"targets should have shape ({num_examples},) to match logits of shape "
            f"{logits_raw.shape}, but got shape {targets_np.shape}"
        )
    if num_examples == 0:
        raise ValueError("logits should hold at least one example, but got N=0")
    targets_np = as_labels("targets", targets_np, num_classes=num_classes)
    check_finite("logits", logits_raw)
    with np.errstate(over="ignore"):
        logits_np = np.ascontiguousarray(logits_raw, dtype=np.float32)
    if not np.isfinite(logits_np).all():
        i = _first(np.asarray(~np.isfinite(logits_np).all(axis=1)))
        raise ValueError(
            f"logits should fit in float32 (|x| <= {float(np.finfo(np.float32).max):.3g}), "
            f"where they are clustered, but row {i} holds "
            f"{logits_raw[i][~np.isfinite(logits_np[i])][0].item()!r}; rescale them"
        )
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
    if indices.size:  # the range is checked before the cast: a uint64 2**64-1 is not -1
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= num_examples:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} should lie in [0, {num_examples}) for a dataset of {num_examples} "
                f"examples, but got index {bad}"
            )
    indices = indices.astype(np.int64, copy=False)
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

"""Reading class labels from datasets and batches without loading inputs twice."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from useful_data._checks import as_labels, check_sized, is_integer_valued

__all__ = [
    "INPUT_KEYS",
    "TARGET_KEYS",
    "dataset_fingerprint",
    "dataset_targets",
    "exposed_labels",
    "split_batch",
]

#: Keys tried, in order, for the model input of a dict-shaped dataset item.
INPUT_KEYS: tuple[str, ...] = ("input", "inputs", "image", "images", "pixel_values", "x")
#: Keys tried, in order, for the class label of a dict-shaped dataset item.
TARGET_KEYS: tuple[str, ...] = ("target", "targets", "label", "labels", "y")


def dataset_targets(dataset: Dataset[Any]) -> np.ndarray | None:
    """Return the labels of ``dataset`` as an int64 array, or ``None`` if it does not expose them.

    Reads ``dataset.targets`` or ``dataset.labels`` (torchvision's convention), else the
    second tensor of a `TensorDataset`, or the ``(path, label)`` list of a timm image dataset's
    reader (``dataset.reader.samples``), and follows `Subset` and `ConcatDataset`, so labels
    are known without loading a single input.
    """
    if isinstance(dataset, Subset):
        base = dataset_targets(dataset.dataset)
        return None if base is None else base[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        parts = [dataset_targets(d) for d in dataset.datasets]
        known = [p for p in parts if p is not None]
        if len(known) != len(parts):
            return None
        return np.concatenate(known) if known else np.zeros(0, dtype=np.int64)
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
    for name in ("targets", "labels"):
        # getattr on the class first: a property that loads data is still fine to call once.
        values = getattr(dataset, name, None)
        if values is None or callable(values):
            continue
        labels = _labels(values, size)
        if labels is not None:
            return labels
    if isinstance(dataset, TensorDataset):  # items are (input, target, ...): labels are known
        return _labels(dataset.tensors[1], size) if len(dataset.tensors) >= 2 else None
    return _reader_targets(dataset)


def _labels(values: Any, size: int | None) -> np.ndarray | None:
    """``values`` as int64 labels if they are ``size`` integer(-valued) numbers, else ``None``."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    try:
        array = np.asarray(array)
    except (TypeError, ValueError):
        return None
    if array.ndim != 1 or array.dtype == object or (size is not None and len(array) != size):
        return None
    return array.astype(np.int64, copy=False) if is_integer_valued(array) else None


def _reader_targets(dataset: Dataset[Any]) -> np.ndarray | None:
    """Labels of a timm image dataset from its reader's ``(path, label)`` list, or ``None``."""
    samples = getattr(getattr(dataset, "reader", None), "samples", None)
    if not isinstance(samples, list) or len(samples) != len(dataset):  # type: ignore[arg-type]
        return None
    try:
        return np.asarray([int(s[1]) for s in samples], dtype=np.int64)
    except (TypeError, ValueError, IndexError):
        return None


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """Split a collated batch into ``(inputs, targets)``.

    Accepts ``(input, target, ...)`` tuples/lists, dicts keyed by one of `INPUT_KEYS`
    and `TARGET_KEYS`, or a bare input tensor (targets then ``None``).
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        input_key = next((k for k in INPUT_KEYS if k in batch), None)
        if input_key is None:
            raise TypeError(
                f"dataset items that are dicts should hold the input under one of {INPUT_KEYS}, "
                f"but got keys {sorted(map(str, batch))}"
            )
        target_key = next((k for k in TARGET_KEYS if k in batch), None)
        return batch[input_key], (_as_target_tensor(batch[target_key]) if target_key else None)
    if isinstance(batch, Sequence) and not isinstance(batch, str | bytes):
        if len(batch) == 0:
            raise TypeError("dataset items should be (input, target, ...), but got an empty item")
        if len(batch) == 1:
            return batch[0], None
        return batch[0], _as_target_tensor(batch[1], positional=True)
    raise TypeError(
        "dataset items should be tensors, (input, target, ...) tuples or dicts, "
        f"but got {type(batch).__name__}"
    )


def _as_target_tensor(value: Any, *, positional: bool = False) -> torch.Tensor:
    """A batch of labels from dataset items as an int64 ``(B,)`` tensor, or an error saying
    what the items hold instead (the rule of `useful_data._checks.as_labels`: integers or
    whole floats within int64; no bools, strings or non-finite numbers)."""
    where = "the labels in the dataset's items"
    if isinstance(value, Sequence) and value and isinstance(value[0], str | bytes):
        raise TypeError(
            f"{where} should be integer class indices, but got strings (e.g. {value[0]!r}); "
            "map class names to indices (a target_transform) or pass targets="
        )
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{where} should be integer class indices, but a batch of them could not be read "
            f"as a tensor ({err}); pass targets="
        ) from None
    if tensor.ndim != 1:
        got = f"a batch of dtype {tensor.dtype} and shape {tuple(tensor.shape)}"
        if positional:
            raise TypeError(
                f"{where} (the second element of each item) should be integer class indices "
                f"of shape (B,), but got {got}. Items should be (input, target, ...): for "
                "items ordered otherwise, e.g. (index, input, target), reorder them or return "
                "dicts with 'input' and 'target' keys; for one-hot or soft labels, pass "
                "targets= (class indices)"
            )
        raise TypeError(
            f"{where} should be integer class indices of shape (B,), but got {got} (one-hot "
            "or soft labels are not class labels: pass targets=; items should be (input, "
            "target, ...) or dicts)"
        )
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise TypeError(
            f"{where} should be integer class indices, but got {tensor.dtype} values that "
            "are not whole numbers (soft labels are not class labels: pass targets=)"
        )
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return torch.from_numpy(as_labels(where, tensor.numpy()))


def dataset_fingerprint(targets: np.ndarray) -> dict[str, Any]:
    """Fingerprint of a labelled dataset: its size and a SHA-256 of its int64 labels.

    Two datasets with the same examples in the same order have the same fingerprint; another
    split, another dataset or a reshuffled copy almost surely do not.

    Example:
        >>> import numpy as np
        >>> fp = dataset_fingerprint(np.array([0, 1, 1]))
        >>> fp["num_examples"], len(fp["targets_sha256"])
        (3, 64)
    """
    targets = np.ascontiguousarray(targets, dtype="<i8")
    return {
        "num_examples": int(targets.shape[0]),
        "targets_sha256": hashlib.sha256(targets.tobytes()).hexdigest(),
    }


def exposed_labels(
    dataset: Dataset[Any], num_examples: int, *, name: str = "selection"
) -> np.ndarray | None:
    """The labels ``dataset`` exposes without loading items (see `dataset_targets`), once its
    length is checked to be ``num_examples``, the size of what ``name`` was computed on;
    ``None`` where it exposes none.

    Raises:
        ValueError: if the lengths differ.
        TypeError: if ``dataset`` has no length.
    """
    found = check_sized("dataset", dataset)
    if found != num_examples:
        raise ValueError(
            f"{name} was computed on {num_examples} examples, but the dataset has "
            f"{found}; was it computed on another dataset or split?"
        )
    return dataset_targets(dataset)

"""Collecting a model's outputs (logits) on every training example, in dataset order.

Conventions: ``N`` examples, ``C`` output columns. Outputs are written into one
preallocated float32 ``(N, C)`` CPU tensor, so peak memory is one copy, not a list of batches
plus their concatenation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from useful_data._checks import check_positive_int
from useful_data._targets import split_batch

__all__ = ["collect_outputs", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _to_device(data: Any, device: torch.device) -> Any:
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, Mapping):
        return {k: _to_device(v, device) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(_to_device(v, device) for v in data)
    return data


def _logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):  # Hugging Face ModelOutput
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        "the model should return logits of shape (B, C), a tuple whose first item is logits, "
        f"or an object with .logits, but it returned {type(output).__name__}"
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module):  # type: ignore[no-untyped-def]
    """Put every submodule in eval mode, then restore each one's own previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def collect_outputs(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` over ``dataset`` in order and return its outputs and the batch labels.

    The model runs in eval mode under `torch.inference_mode`; every submodule's
    train/eval mode is restored afterwards.

    Args:
        model: Any module mapping a batch of inputs to ``(B, C)`` logits (or a tuple whose first
            item is the logits, or an object with ``.logits``).
        dataset: Map-style dataset; items are ``(input, target, ...)``, dicts, or bare inputs.
        batch_size: Batch size of the DataLoader.
        num_workers: DataLoader worker processes.
        device: Where to run the model; defaults to the model's device.
        autocast_dtype: If given (e.g. ``torch.bfloat16``), run under `torch.autocast`.
        progress: Show a tqdm progress bar.
        collate_fn: Optional DataLoader ``collate_fn``.

    Returns:
        ``(outputs, targets)``: a float32 ``(N, C)`` CPU tensor, and the int64 ``(N,)`` labels read
        from the batches (``None`` if the items carry no labels).

    Raises:
        ValueError: for an empty dataset, or outputs that are not ``(B, C)``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(10, 3), torch.arange(10) % 2)
        >>> outputs, targets = collect_outputs(torch.nn.Linear(3, 2), data, progress=False)
        >>> tuple(outputs.shape), outputs.dtype, targets.tolist()[:4]
        ((10, 2), torch.float32, [0, 1, 0, 1])
    """
    batch_size = check_positive_int("batch_size", batch_size)
    num_workers = check_positive_int("num_workers", num_workers, minimum=0)
    num_examples = len(dataset)  # type: ignore[arg-type]
    if num_examples == 0:
        raise ValueError("dataset should hold at least one example, but got an empty dataset")
    device = torch.device(device) if device is not None else model_device(model)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
    )
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    outputs: torch.Tensor | None = None
    targets = torch.empty(num_examples, dtype=torch.int64)
    has_targets = True
    start = 0
    bar = tqdm(total=num_examples, disable=not progress, desc="useful-data: outputs", unit="ex")
    with bar, _eval_mode(model), torch.inference_mode(), autocast:
        for batch in loader:
            inputs, batch_targets = split_batch(batch)
            logits = _logits_of(model(_to_device(inputs, device)))
            if logits.ndim != 2:
                raise ValueError(
                    "the model should return logits of shape (B, C), but got shape "
                    f"{tuple(logits.shape)}"
                )
            stop = start + logits.shape[0]
            if stop > num_examples:
                raise ValueError(
                    f"the dataset yielded more than len(dataset)={num_examples} examples"
                )
            if outputs is None:
                outputs = torch.empty((num_examples, logits.shape[1]), dtype=torch.float32)
            elif logits.shape[1] != outputs.shape[1]:
                raise ValueError(
                    f"the model returned {logits.shape[1]} columns for one batch and "
                    f"{outputs.shape[1]} for another"
                )
            outputs[start:stop].copy_(logits)
            if batch_targets is None:
                has_targets = False
            else:
                targets[start:stop].copy_(batch_targets)
            start = stop
            bar.update(logits.shape[0])
    if outputs is None or start != num_examples:
        raise ValueError(f"the dataset yielded {start} examples but len(dataset)={num_examples}")
    return outputs, (targets if has_targets else None)

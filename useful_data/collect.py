"""Collecting a model's outputs (logits) on every training example, in dataset order.

Conventions: ``N`` examples, ``C`` output columns. Outputs are written into one
preallocated float32 ``(N, C)`` CPU tensor, so peak memory is one copy, not a list of batches
plus their concatenation.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from useful_data._checks import check_logits_dtype, check_positive_int, check_sized
from useful_data._progress import tqdm
from useful_data._targets import split_batch

__all__ = ["collect_outputs", "default_batch_size", "model_device"]


def _first_weight(model: nn.Module) -> torch.Tensor | None:
    """The model's first parameter, else its first buffer, else ``None``."""
    return next(itertools.chain(model.parameters(), model.buffers()), None)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    first = _first_weight(model)
    return torch.device("cpu") if first is None else first.device


def _check_model_on(model: nn.Module, device: torch.device) -> None:
    """Raise if ``device`` is not where the model's weights are: the model is never moved."""
    first = _first_weight(model)
    if first is None:
        return  # no weights: it runs wherever its inputs are
    actual = first.device
    other_index = device.type != "cpu" and device.index not in (None, actual.index)
    if actual.type != device.type or other_index:  # "cuda" means the current CUDA device
        raise ValueError(
            f"device should be where the model is ({actual}), but got device={device}; "
            f"move the model first (model.to({str(device)!r})) or leave device=None"
        )


def default_batch_size(device: torch.device | str) -> int:
    """The collection's batch size when none is given: 128 on a CPU, 256 elsewhere.

    A GPU needs large batches to be busy; a CPU is as fast per example at 64-128 as at 256
    and faster than at 256 once activations outgrow its caches, or glibc's 32 MiB ``mmap``
    threshold (then every batch maps and zero-fills fresh pages): a CIFAR-sized CNN's
    forward took half the time per example at 128 as at 256 on a 2-core CPU (see the
    benchmarks page).

    Example:
        >>> default_batch_size("cpu"), default_batch_size("cuda")
        (128, 256)
    """
    return 128 if torch.device(device).type == "cpu" else 256


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
        if sum(isinstance(item, torch.Tensor) for item in output) > 1:
            warnings.warn(
                f"the model returned a {type(output).__name__} of {len(output)} items; its "
                f"first, of shape {tuple(output[0].shape)}, is taken as the logits. If it is "
                "not (e.g. (features, logits)), wrap the model to return the logits alone",
                UserWarning,
                stacklevel=2,
            )
        return output[0]
    raise TypeError(
        "the model should return logits of shape (B, C), a tuple whose first item is logits, "
        f"or an object with .logits, but it returned {type(output).__name__}"
    )


def _forward(model: nn.Module, inputs: Any, channels_last: bool) -> torch.Tensor:
    if channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return _logits_of(model(inputs))


def _is_compiled(model: nn.Module) -> bool:
    """``torch.compile(model)`` or ``model.compile()``: a new layout would mean a recompile."""
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


def _try_channels_last(model: nn.Module, inputs: Any, device: torch.device) -> bool:
    """Whether ``channels_last=None`` tries channels_last: a CPU, 2-D convolutions, images."""
    return (
        device.type == "cpu"
        and isinstance(inputs, torch.Tensor)
        and inputs.ndim == 4
        and inputs.is_floating_point()
        and not inputs.is_contiguous(memory_format=torch.channels_last)
        and not _is_compiled(model)
        and any(isinstance(m, nn.Conv2d) for m in model.modules())
    )


def _first_batch(model: nn.Module, inputs: Any, device: torch.device) -> tuple[torch.Tensor, bool]:
    """``channels_last=None`` on the first batch: its logits, and the layout for the rest.

    Runs the batch as it comes, then in channels_last where `_try_channels_last` says so, and
    keeps channels_last only if the forward works and gives the same logits up to rounding
    (``sqrt(eps)`` of their dtype, relative to the largest).
    """
    reference = _forward(model, inputs, channels_last=False)
    if not _try_channels_last(model, inputs, device):
        return reference, False
    try:
        candidate = _forward(model, inputs, channels_last=True)
    except RuntimeError:  # e.g. x.view(B, -1) on a channels_last activation
        return reference, False
    tol, finite = 0.0, reference
    if reference.is_floating_point():
        tol, finite = math.sqrt(torch.finfo(reference.dtype).eps), reference[reference.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    if candidate.shape == reference.shape and torch.allclose(
        candidate, reference, rtol=tol, atol=tol * scale, equal_nan=True
    ):  # (non-finite outputs are select_from_logits' error to report, not a layout's)
        return candidate, True
    warnings.warn(
        "the model's outputs change with the memory layout of its inputs (channels_last vs "
        "contiguous) by more than rounding; collecting them with the inputs as they come. "
        "Pass channels_last=False to skip this check.",
        UserWarning,
        stacklevel=3,
    )
    return reference, False


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


def _loader(
    dataset: Dataset[Any],
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    device: torch.device,
) -> DataLoader[Any]:
    """The in-order DataLoader of an eval pass (map-style or a stream)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        # its base seed (for workers) is drawn from this one, not torch's global generator;
        # on the default device, where the DataLoader draws it (torch.set_default_device)
        generator=torch.Generator(device=torch.get_default_device()),
    )


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """`torch.autocast` on ``device`` with ``dtype``, or a no-op context for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def collect_outputs(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    batch_size: int | None = None,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    channels_last: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` over ``dataset`` in order and return its outputs and the batch labels.

    The model runs in eval mode under `torch.inference_mode`; every submodule's
    train/eval mode is restored afterwards. The model itself is not changed.

    On a CPU, a convolutional network runs 1.5-2x as fast on channels_last inputs
    (oneDNN's native layout), so by default (``channels_last=None``) 4-D floating-point
    inputs are fed in `torch.channels_last` when the model has a `torch.nn.Conv2d`, runs on
    the CPU and is not compiled, and its first batch gives the same logits both ways (up to
    rounding; the first batch therefore runs twice, and forward hooks see it twice). Else,
    and on GPUs, inputs are fed as they come.

    Args:
        model: Any module mapping a batch of inputs to ``(B, C)`` logits (or a tuple whose first
            item is the logits, with a warning if it holds other tensors too, or an object or
            dict with ``logits``).
        dataset: Map-style dataset; items are ``(input, target, ...)``, dicts, or bare inputs.
        batch_size: Batch size of the DataLoader; ``None``: `default_batch_size` of
            ``device`` (128 on a CPU, 256 on a GPU).
        num_workers: DataLoader worker processes.
        device: Where the inputs go: the model's device (checked; the model is not moved),
            which is the default.
        autocast_dtype: If given (e.g. ``torch.bfloat16``), run under `torch.autocast`.
        progress: Show a tqdm progress bar.
        collate_fn: Optional DataLoader ``collate_fn``.
        channels_last: ``None`` (default): decide as above. ``True``: always feed 4-D inputs
            in `torch.channels_last` (on any device). ``False``: feed inputs as they come.

    Returns:
        ``(outputs, targets)``: a float32 ``(N, C)`` CPU tensor, and the int64 ``(N,)`` labels read
        from the batches (``None`` if the items carry no labels).

    Raises:
        ValueError: for an empty dataset, a ``device`` other than the model's, or outputs
            that are not ``(B, C)``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(10, 3), torch.arange(10) % 2)
        >>> outputs, targets = collect_outputs(torch.nn.Linear(3, 2), data, progress=False)
        >>> tuple(outputs.shape), outputs.dtype, targets.tolist()[:4]
        ((10, 2), torch.float32, [0, 1, 0, 1])
    """
    num_workers = check_positive_int("num_workers", num_workers, minimum=0)
    if channels_last not in (None, True, False):
        raise ValueError(
            f"channels_last should be None (automatic), True or False, but got {channels_last!r}"
        )
    num_examples = check_sized("dataset", dataset)
    if num_examples == 0:
        raise ValueError("dataset should hold at least one example, but got an empty dataset")
    if device is None:
        device = model_device(model)
    else:
        device = torch.device(device)
        _check_model_on(model, device)
    if batch_size is None:
        batch_size = default_batch_size(device)
    batch_size = check_positive_int("batch_size", batch_size)
    loader = _loader(dataset, batch_size, num_workers, collate_fn, device)
    autocast = _autocast(device, autocast_dtype)
    outputs: torch.Tensor | None = None
    targets = torch.empty(num_examples, dtype=torch.int64)
    has_targets = True
    start = 0
    bar = tqdm(total=num_examples, disable=not progress, desc="useful-data: outputs", unit="ex")
    with bar, _eval_mode(model), torch.inference_mode(), autocast:
        for batch in loader:
            inputs, batch_targets = split_batch(batch)
            inputs = _to_device(inputs, device)
            if channels_last is None:
                logits, channels_last = _first_batch(model, inputs, device)
            else:
                logits = _forward(model, inputs, channels_last)
            if logits.ndim != 2:
                raise ValueError(
                    "the model should return logits of shape (B, C), but got shape "
                    f"{tuple(logits.shape)}"
                )
            check_logits_dtype("the model's outputs", logits)
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

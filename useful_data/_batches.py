"""What the eval passes share (internal): where the model is, how a batch goes through it.

`useful_data.collect.collect_outputs` (map-style), the stream pass of `useful_data.streaming`
and the sharded pass under ``torch.distributed`` all feed batches to a model the same way:
in eval mode (`eval_mode`), under `torch.inference_mode` and optional autocast, inputs moved
to the model's device, channels_last tried on the first batch (`first_batch`), logits read
from whatever the model returns (`logits_of`).
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

from useful_data._checks import check_logits_dtype

__all__ = [
    "autocast",
    "check_channels_last",
    "check_model_on",
    "default_batch_size",
    "eval_mode",
    "first_batch",
    "forward",
    "loader",
    "model_device",
    "resolve_device",
    "run_batch",
    "to_device",
    "try_channels_last",
]


def _first_weight(model: nn.Module) -> torch.Tensor | None:
    """The model's first parameter, else its first buffer, else ``None``."""
    return next(itertools.chain(model.parameters(), model.buffers()), None)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    first = _first_weight(model)
    return torch.device("cpu") if first is None else first.device


def check_model_on(model: nn.Module, device: torch.device) -> None:
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


def to_device(data: Any, device: torch.device) -> Any:
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, Mapping):
        return {k: to_device(v, device) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(to_device(v, device) for v in data)
    return data


def logits_of(output: Any) -> torch.Tensor:
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


def forward(model: nn.Module, inputs: Any, channels_last: bool) -> torch.Tensor:
    if channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return logits_of(model(inputs))


def is_compiled(model: nn.Module) -> bool:
    """``torch.compile(model)`` or ``model.compile()``: a new layout would mean a recompile."""
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


def try_channels_last(model: nn.Module, inputs: Any, device: torch.device) -> bool:
    """Whether ``channels_last=None`` tries channels_last: a CPU, 2-D convolutions, images."""
    return (
        device.type == "cpu"
        and isinstance(inputs, torch.Tensor)
        and inputs.ndim == 4
        and inputs.is_floating_point()
        and not inputs.is_contiguous(memory_format=torch.channels_last)
        and not is_compiled(model)
        and any(isinstance(m, nn.Conv2d) for m in model.modules())
    )


def first_batch(model: nn.Module, inputs: Any, device: torch.device) -> tuple[torch.Tensor, bool]:
    """``channels_last=None`` on the first batch: its logits, and the layout for the rest.

    Runs the batch as it comes, then in channels_last where `try_channels_last` says so, and
    keeps channels_last only if the forward works and gives the same logits up to rounding
    (``sqrt(eps)`` of their dtype, relative to the largest).
    """
    reference = forward(model, inputs, channels_last=False)
    if not try_channels_last(model, inputs, device):
        return reference, False
    try:
        candidate = forward(model, inputs, channels_last=True)
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
def eval_mode(model: nn.Module):  # type: ignore[no-untyped-def]
    """Put every submodule in eval mode, then restore each one's own previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def loader(
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


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """`torch.autocast` on ``device`` with ``dtype``, or a no-op context for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_channels_last(channels_last: Any) -> None:
    """Raise unless ``channels_last`` is ``None`` (automatic), ``True`` or ``False``."""
    if channels_last not in (None, True, False):
        raise ValueError(
            f"channels_last should be None (automatic), True or False, but got {channels_last!r}"
        )


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device``, checked to be where the model is, or the model's device for ``None``."""
    if device is None:
        return model_device(model)
    device = torch.device(device)
    check_model_on(model, device)
    return device


def run_batch(
    model: nn.Module, inputs: Any, device: torch.device, channels_last: bool | None
) -> tuple[torch.Tensor, bool]:
    """The batch's ``(B, C)`` logits, and the layout for the next batches.

    ``channels_last=None`` decides on this batch (`first_batch`); the logits are checked to
    be 2-D and of a floating or integer dtype.
    """
    inputs = to_device(inputs, device)
    if channels_last is None:
        logits, channels_last = first_batch(model, inputs, device)
    else:
        logits = forward(model, inputs, channels_last)
    if logits.ndim != 2:
        raise ValueError(
            f"the model should return logits of shape (B, C), but got shape {tuple(logits.shape)}"
        )
    check_logits_dtype("the model's outputs", logits)
    return logits, channels_last

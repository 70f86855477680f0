"""Collecting a model's outputs (logits) on every training example, in dataset order.

Conventions: ``N`` examples, ``C`` output columns. Outputs are written into one
preallocated float32 ``(N, C)`` CPU tensor, so peak memory is one copy, not a list of batches
plus their concatenation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from useful_data._batches import (
    autocast,
    check_channels_last,
    eval_mode,
    loader,
    resolve_device,
    run_batch,
)
from useful_data._batches import default_batch_size as _default_batch_size
from useful_data._checks import check_positive_int, check_sized
from useful_data._deprecation import moved_names
from useful_data._progress import tqdm
from useful_data._targets import split_batch

__all__ = ["collect_outputs"]


# Outputs on an accelerator wait on the device in chunks of about this size before one copy
# into the CPU tensor: a copy to pageable CPU memory waits for the device, so a copy per batch
# would stall it at every batch (the pass then ran 1.03-1.09x a plain eval loop on an H200).
_CHUNK_BYTES = 32 * 2**20


class _Rows:
    """Writes batches of logits into consecutive rows of the ``(N, C)`` CPU output: each at
    once (``chunk_bytes=0``), or kept where they are until about ``chunk_bytes`` of them wait."""

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.pending: list[torch.Tensor] = []
        self.start = 0  # first output row of the pending batches
        self.bytes = 0

    def write(self, outputs: torch.Tensor, start: int, logits: torch.Tensor) -> None:
        if not self.chunk_bytes:
            outputs[start : start + logits.shape[0]].copy_(logits)
            return
        if not self.pending:
            self.start = start
        self.pending.append(logits)
        self.bytes += logits.numel() * 4
        if self.bytes >= self.chunk_bytes:
            self.flush(outputs)

    def flush(self, outputs: torch.Tensor) -> None:
        if self.pending:
            chunk = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
            outputs[self.start : self.start + chunk.shape[0]].copy_(chunk)
            self.pending, self.bytes = [], 0


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
        batch_size: Batch size of the DataLoader; ``None``: 128 on a CPU, 256 on a GPU.
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
    check_channels_last(channels_last)
    num_examples = check_sized("dataset", dataset)
    if num_examples == 0:
        raise ValueError("dataset should hold at least one example, but got an empty dataset")
    device = resolve_device(model, device)
    if batch_size is None:
        batch_size = _default_batch_size(device)
    batch_size = check_positive_int("batch_size", batch_size)
    batches = loader(dataset, batch_size, num_workers, collate_fn, device)
    outputs: torch.Tensor | None = None
    rows = _Rows(0 if device.type == "cpu" else _CHUNK_BYTES)
    targets = torch.empty(num_examples, dtype=torch.int64)
    has_targets = True
    start = 0
    bar = tqdm(total=num_examples, disable=not progress, desc="useful-data: outputs", unit="ex")
    with bar, eval_mode(model), torch.inference_mode(), autocast(device, autocast_dtype):
        for batch in batches:
            inputs, batch_targets = split_batch(batch)
            logits, channels_last = run_batch(model, inputs, device, channels_last)
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
            rows.write(outputs, start, logits)
            if batch_targets is None:
                has_targets = False
            else:
                targets[start:stop].copy_(batch_targets)
            start = stop
            bar.update(logits.shape[0])
        if outputs is not None:
            rows.flush(outputs)
    if outputs is None or start != num_examples:
        raise ValueError(f"the dataset yielded {start} examples but len(dataset)={num_examples}")
    return outputs, (targets if has_targets else None)


# 1.0 made the collection's helpers private (useful_data._batches)
__getattr__ = moved_names(
    __name__,
    {
        "default_batch_size": "useful_data._batches:default_batch_size",
        "model_device": "useful_data._batches:model_device",
    },
)

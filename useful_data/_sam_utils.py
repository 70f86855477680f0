"""Helpers that make SAM's two passes correct in real training loops.

SAM (see :mod:`useful_data.sam`) runs forward and backward twice per step: at ``w`` and at
``w + e(w)``. Three things in a training loop must know which pass is which:

- BatchNorm running statistics should be updated by one pass only (:func:`frozen_bn_stats`
  around the second);
- under DDP the first pass's gradient is per replica, as in the SAM paper's m-sharpness, so it
  runs under ``model.no_sync()`` (:func:`ddp_no_sync`) and only the second is all-reduced;
- under an fp16 ``GradScaler`` the perturbation must be skipped when the unscaled gradient is
  not finite (:func:`grads_are_finite`).

They are re-exported by :mod:`useful_data.sam`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.optim import Optimizer

__all__ = ["ddp_no_sync", "frozen_bn_stats", "grads_are_finite"]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module, *, enabled: bool = True) -> Iterator[None]:
    """Leave every BatchNorm's running statistics exactly as they were before the block.

    Use it around SAM's second forward pass, so that the running statistics are those of
    exactly one forward pass at ``w`` per step. Inside the block BatchNorm still normalizes with
    the batch's statistics (training mode); afterwards ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` of every normalization layer that tracks running statistics
    (BatchNorm 1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d, InstanceNorm with
    ``track_running_stats=True``...) are copied back from a snapshot taken on entry, even if
    the block raises.

    Why a snapshot and not the common "set ``momentum`` to 0" trick: ``momentum=0`` still
    increments ``num_batches_tracked``, which breaks ``momentum=None`` (the cumulative average
    weights the next batch by ``1 / num_batches_tracked``); and keeping the real momentum in a
    module attribute loses it when the trick is applied twice before being undone. Here
    ``momentum`` is never touched and the buffers are restored bit for bit.

    Args:
        model: The model (a ``DistributedDataParallel`` wrapper works too).
        enabled: If ``False``, do nothing (like ``torch.autocast(enabled=...)``), e.g.
            ``enabled=optimizer.perturbed`` inside a closure given to ``SAM.step``.

    Yields:
        Nothing; the statistics are restored on exit.

    Example:
        >>> import torch
        >>> from useful_data.sam import frozen_bn_stats
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> with frozen_bn_stats(bn):
        ...     _ = bn(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        >>> bn.running_mean, int(bn.num_batches_tracked)
        (tensor([0., 0.]), 0)
        >>> _ = bn(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        >>> bn.running_mean, int(bn.num_batches_tracked)
        (tensor([0.2000, 0.4000]), 1)
    """
    if not enabled:
        yield
        return
    buffers = [
        buf
        for module in model.modules()
        if isinstance(module, _NormBase)
        for buf in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buf is not None
    ]
    with torch.no_grad():
        snapshot = [buf.clone() for buf in buffers]
    try:
        yield
    finally:
        if buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, snapshot)


def ddp_no_sync(
    model: nn.Module, *, enabled: bool = True
) -> contextlib.AbstractContextManager[None]:
    """``model.no_sync()`` for SAM's first pass under DDP; a no-op context otherwise.

    SAM's first gradient only sets the direction of the perturbation; computing it per replica
    (no all-reduce) is what the SAM paper calls m-sharpness and saves one all-reduce per step.
    The second pass must be synchronized as usual. Put the *forward* pass inside the block,
    not just ``backward()``: DDP decides at forward time whether the backward will all-reduce.

    Args:
        model: The model; if it has a ``no_sync`` method (``DistributedDataParallel``), it is
            used, otherwise nothing happens, so one loop serves single-process and DDP runs.
        enabled: If ``False``, return a no-op context, e.g. ``enabled=not optimizer.perturbed``
            inside a closure given to ``SAM.step``.

    Returns:
        A context manager.

    Example:
        >>> import torch
        >>> from useful_data.sam import ddp_no_sync
        >>> model = torch.nn.Linear(2, 1)  # not DDP: a no-op, so the same loop runs anywhere
        >>> with ddp_no_sync(model):
        ...     model(torch.ones(1, 2)).sum().backward()
        >>> model.bias.grad
        tensor([1.])
    """
    if not enabled:
        return contextlib.nullcontext()
    no_sync = getattr(model, "no_sync", None)
    if callable(no_sync):
        return no_sync()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        warnings.warn(
            f"ddp_no_sync() got a {type(model).__name__} without a no_sync() method while "
            f"torch.distributed runs {dist.get_world_size()} processes, so gradients of this "
            "pass will be all-reduced if the model is wrapped elsewhere. Pass the "
            "DistributedDataParallel wrapper itself, not model.module.",
            stacklevel=2,
        )
    return contextlib.nullcontext()


@torch.no_grad()
def grads_are_finite(optimizer: Optimizer) -> bool:
    """Whether every gradient of ``optimizer``'s parameters is free of inf and NaN.

    Use it after ``scaler.unscale_(optimizer)`` to skip SAM's perturbation (and the step) when
    an fp16 ``GradScaler`` overflowed, as ``scaler.step`` skips a plain optimizer's step. It
    uses one max-abs reduction per parameter list (``torch._foreach_norm`` with ``ord=inf``,
    which cannot overflow) and one host sync.

    Args:
        optimizer: Any optimizer; parameters without a gradient are ignored.

    Returns:
        ``True`` if all gradients are finite (also when there are none).

    Example:
        >>> import torch
        >>> from useful_data.sam import grads_are_finite
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> optimizer = torch.optim.SGD([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, 2.0])
        >>> grads_are_finite(optimizer)
        True
        >>> w.grad = torch.tensor([1.0, float("inf")])
        >>> grads_are_finite(optimizer)
        False
    """
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    if not grads:
        return True
    max_abs = torch._foreach_norm(grads, float("inf"))  # NaN propagates, inf stays inf
    device = max_abs[0].device
    return bool(torch.stack([m.to(device) for m in max_abs]).isfinite().all())

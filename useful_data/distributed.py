"""USEFUL under ``torch.distributed`` (DDP launched by ``torchrun``): shard, gather, select, save.

Inside an initialised process group with more than one rank, `find_slow_learnable` calls into
this module so that no rank redoes the work of another:

1. **Outputs.** The dataset is cut into the batches one process would run, and rank ``r``
   runs batches ``r, r + W, r + 2W, ...`` only (`shard_indices`, `collect_outputs_sharded`).
   The shards are padded to equal length, gathered with one ``all_gather`` and
   de-interleaved back into dataset order, padding dropped (`gather_outputs`). Every rank
   then holds the same ``(N, C)`` outputs, bit for bit equal to a single-process run on the
   same model and hardware (each forward pass sees the very batch it would see alone).
2. **Selection.** Algorithm 1 clusters every class independently, so the classes are
   divided among the ranks (largest first, to the least loaded rank; `assign_classes`);
   each class is clustered on exactly one rank and the per-example results are summed
   across ranks (`select_across_ranks`). Every rank returns the same `Selection`, and it
   equals the single-process one: each class sees the same rows and the same k-means seed.
   Clustering once per class on one rank, rather than on every rank, means that a backend
   which is not bit-reproducible across GPUs (cuML) can never make ranks disagree, and that
   the clustering time shrinks with the number of ranks instead of being repeated on each.
3. **Saving.** `save_on_rank0` writes the file once, atomically, from rank 0; every rank
   waits for it and raises the same error if the write failed, so no rank hangs.

Conventions: ``N`` examples, ``C`` classes (logit columns), ``W`` ranks (world size).
Backends: gloo (CPU tensors) and nccl (CUDA tensors on the current device) are supported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from useful_data._checks import check_outputs, check_positive_int
from useful_data.collect import collect_outputs, default_batch_size, model_device
from useful_data.selection import Selection
from useful_data.selection import _dataset_fingerprint as dataset_fingerprint

__all__ = [
    "assign_classes",
    "collect_outputs_sharded",
    "gather_outputs",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "resolve_distributed",
    "save_on_rank0",
    "select_across_ranks",
    "shard_indices",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank in the default process group, or 0 outside one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of ranks in the default process group, or 1 outside one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resolve_distributed(distributed: bool | None) -> bool:
    """Decide whether to shard: ``None`` means "if a multi-rank process group is initialised".

    Raises:
        TypeError: if ``distributed`` is not ``None``, ``True`` or ``False``.
        RuntimeError: for ``distributed=True`` without an initialised process group.
    """
    if distributed is None:
        return is_distributed()
    if not isinstance(distributed, bool):
        raise TypeError(
            f"distributed should be None, True or False, but got distributed={distributed!r}"
        )
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "distributed=True needs an initialised process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets the environment), "
            "or pass distributed=None to shard only when one is initialised"
        )
    return distributed and get_world_size() > 1


def shard_indices(num_examples: int, rank: int, world_size: int, *, block: int = 1) -> np.ndarray:
    """The examples rank ``rank`` computes: blocks ``rank, rank + W, rank + 2W, ...``.

    The examples are cut into consecutive blocks of ``block`` (the last one may be short) and
    the blocks dealt to the ranks in turn. With ``block=1`` this is
    ``range(rank, N, world_size)``, the split of ``DistributedSampler``; with ``block`` equal
    to the batch size, every rank runs exactly the batches a single process would run.

    Args:
        num_examples: ``N``.
        rank: This rank, in ``[0, world_size)``.
        world_size: ``W``.
        block: Examples per block, ``>= 1``.

    Returns:
        The sorted int64 indices of this rank's examples.

    Raises:
        ValueError: for a rank outside ``[0, world_size)`` or a bad ``block``.

    Example:
        >>> shard_indices(7, 0, 2).tolist(), shard_indices(7, 1, 2).tolist()
        ([0, 2, 4, 6], [1, 3, 5])
        >>> shard_indices(7, 0, 2, block=2).tolist(), shard_indices(7, 1, 2, block=2).tolist()
        ([0, 1, 4, 5], [2, 3, 6])
    """
    world_size = check_positive_int("world_size", world_size)
    block = check_positive_int("block", block)
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank should be in the interval [0, {world_size - 1}] for world_size={world_size}, "
            f"but got rank={rank}"
        )
    starts = np.arange(rank * block, num_examples, world_size * block, dtype=np.int64)
    indices = (starts[:, None] + np.arange(block, dtype=np.int64)).reshape(-1)
    return indices[indices < num_examples]


def _comm_device(group: Any = None) -> torch.device:
    """Where tensors must live for collectives on ``group``: CUDA for nccl, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_equal(output: torch.Tensor, local: torch.Tensor, group: Any) -> None:
    """All-gather equal-size tensors into ``output`` (``(W * m, ...)``), rank-major."""
    gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    try:
        gather_single(output, local, group=group)
    except (RuntimeError, NotImplementedError):  # a backend without the fused collective
        dist.all_gather(list(output.chunk(get_world_size())), local, group=group)


def gather_outputs(
    local: torch.Tensor,
    num_examples: int,
    *,
    block: int = 1,
    group: Any = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gather every rank's shard of outputs into one ``(N, ...)`` tensor, in dataset order.

    Rank ``r`` passes the rows of its examples ``shard_indices(N, r, W, block=block)``. Shards
    are padded to the same number of whole blocks, all-gathered (rank-major), then
    de-interleaved: block ``j`` of rank ``r`` is block ``j * W + r`` of the dataset, and the
    padding rows land past ``N`` and are dropped. Every rank returns the same CPU tensor.

    Args:
        local: This rank's ``(n_r, ...)`` rows, in the order of its shard.
        num_examples: ``N``, the size of the full dataset.
        block: The block size the shards were cut with (see `shard_indices`).
        group: Process group; the default one if ``None``.
        dtype: Dtype to communicate and return in (e.g. ``torch.float16`` halves the traffic
            and the memory of the gathered outputs); defaults to ``local.dtype``.

    Returns:
        The ``(N, ...)`` outputs of all ranks in dataset order, on the CPU.

    Raises:
        ValueError: if ``local`` does not have this rank's shard length.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    expected = len(shard_indices(num_examples, rank, world, block=block))
    if local.shape[0] != expected:
        raise ValueError(
            f"rank {rank} should pass the outputs of its {expected} examples "
            f"shard_indices({num_examples}, {rank}, {world}, block={block}), "
            f"but got {local.shape[0]} rows"
        )
    blocks_per_rank = math.ceil(math.ceil(num_examples / block) / world)
    per_rank, row = blocks_per_rank * block, tuple(local.shape[1:])
    device = _comm_device(group)
    dtype = local.dtype if dtype is None else dtype
    padded = torch.zeros((per_rank, *row), dtype=dtype, device=device)
    padded[:expected].copy_(local)
    gathered = torch.empty((world * per_rank, *row), dtype=dtype, device=device)
    _all_gather_equal(gathered, padded, group)
    # (W, J, block, ...) rank-major -> (J, W, block, ...): block j * W + r in place.
    ordered = gathered.view(world, blocks_per_rank, block, *row).transpose(0, 1)
    return ordered.reshape(world * per_rank, *row)[:num_examples].cpu()


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP: its forward would run collectives the shards cannot match."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def collect_outputs_sharded(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    batch_size: int | None = None,
    progress: bool = True,
    **collect_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`collect_outputs` across ranks: each rank runs its shard, every rank gets all of it.

    The dataset is cut into the batches a single process would run, and rank ``r`` runs
    batches ``r, r + W, r + 2W, ...`` only (`shard_indices` with ``block=batch_size``). Every
    forward pass thus sees exactly the inputs it would see in one process, so the gathered
    outputs are bit for bit the single-process ones (same hardware, deterministic kernels;
    a model's output for an example can depend on the rest of its batch, e.g. through the
    blocking of a matrix product, which is why whole batches, not single examples, are
    dealt out). A DDP wrapper is unwrapped: its forward would broadcast buffers, and ranks
    may run one batch more than others. The outputs and the labels the items carry are
    gathered with `gather_outputs`. Only rank 0 shows a progress bar. Must be called on
    every rank.

    Args:
        model: The model (plain or wrapped in ``DistributedDataParallel``).
        dataset: The same map-style dataset, in the same order, on every rank.
        batch_size: Batch size of the forward passes, and the block size of the shards;
            ``None``: `useful_data.collect.default_batch_size` of the device the model runs on.
        progress: Show a progress bar (rank 0 only).
        **collect_kwargs: Passed on to `collect_outputs` (``batch_size``, ``device``, ...).

    Returns:
        ``(outputs, targets)`` as `collect_outputs` returns them for the whole dataset.

    Raises:
        ValueError: if ranks see datasets of different lengths or output widths.
    """
    world, rank = get_world_size(), get_rank()
    num_examples = len(dataset)  # type: ignore[arg-type]
    _check_same_on_all_ranks("len(dataset)", num_examples)
    if num_examples == 0:
        raise ValueError("dataset should hold at least one example, but got an empty dataset")
    if batch_size is None:
        device = collect_kwargs.get("device")
        batch_size = default_batch_size(device if device is not None else model_device(model))
    batch_size = check_positive_int("batch_size", batch_size)
    shard = Subset(dataset, shard_indices(num_examples, rank, world, block=batch_size).tolist())
    if len(shard) == 0:  # more ranks than batches: this rank only pads the collectives
        local, seen = torch.zeros((0, 0)), None
    else:
        local, seen = collect_outputs(
            _unwrap(model),
            shard,
            batch_size=batch_size,
            progress=progress and rank == 0,
            **collect_kwargs,
        )
    widths = _all_gather_object(int(local.shape[1]) if len(shard) else None)
    width = next(w for w in widths if w is not None)
    if any(w not in (None, width) for w in widths):
        raise ValueError(f"the model returned a different number of columns per rank: {widths}")
    if len(shard) == 0:
        local = torch.zeros((0, width))
    outputs = gather_outputs(local, num_examples, block=batch_size)
    has_targets = _all_gather_object(seen is not None or len(shard) == 0)
    if not all(has_targets):
        return outputs, None
    local_targets = seen if seen is not None else torch.zeros(0, dtype=torch.int64)
    return outputs, gather_outputs(local_targets, num_examples, block=batch_size)


def assign_classes(targets: np.ndarray, world_size: int) -> np.ndarray:
    """Which rank clusters each class: largest class first, to the least loaded rank.

    The assignment depends only on the labels, so every rank computes the same one.

    Args:
        targets: ``(N,)`` integer labels.
        world_size: ``W``, the number of ranks.

    Returns:
        ``(N,)`` int64: the rank that clusters each example's class.

    Example:
        >>> import numpy as np
        >>> assign_classes(np.array([0, 0, 0, 1, 2, 2]), 2).tolist()
        [0, 0, 0, 1, 1, 1]
    """
    labels, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
    load = np.zeros(world_size, dtype=np.int64)
    owner = np.zeros(len(labels), dtype=np.int64)
    for i in np.argsort(-counts, kind="stable"):
        rank = int(np.argmin(load))  # lowest rank on ties
        owner[i] = rank
        load[rank] += counts[i]
    return owner[inverse.reshape(-1)]


def select_across_ranks(
    select: Callable[[np.ndarray, np.ndarray], Selection],
    logits: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    *,
    group: Any = None,
) -> Selection:
    """Run a per-class ``select`` with the classes divided among the ranks; same result everywhere.

    Every rank holds the full ``logits`` and ``targets`` (checked: their label fingerprints
    must agree). Rank ``r`` calls ``select`` on the rows of the classes `assign_classes` gives
    it; the masks and losses are summed across ranks (each row comes from exactly one rank,
    so the sum is exact), the unsplit classes merged. Valid for any ``select`` that treats
    classes independently, like Algorithm 1's per-class 2-means.

    Args:
        select: ``select(logits, targets) -> Selection``, e.g. a partial of
            ``select_from_logits``.
        logits: ``(N, C)`` outputs, identical on every rank.
        targets: ``(N,)`` labels, identical on every rank.
        group: Process group; the default one if ``None``.

    Returns:
        The `Selection` for all ``N`` examples, identical on every rank.

    Raises:
        ValueError: if the ranks hold different labels, or the outputs or labels are
            malformed (see `find_slow_learnable`), on every rank alike.
    """
    # checked whole, before the split: every rank raises the same error (not one rank
    # failing on its classes while the others wait in a collective)
    logits_np, targets_np = check_outputs(logits, targets)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    _check_same_on_all_ranks(
        "the labels (targets)", dataset_fingerprint(targets_np)["targets_sha256"], group
    )
    mine = np.flatnonzero(assign_classes(targets_np, world) == rank)
    part = select(logits_np[mine], targets_np[mine]) if mine.size else None
    num_examples = len(targets_np)
    mask = torch.zeros(num_examples, dtype=torch.int32)
    loss = torch.zeros(num_examples, dtype=torch.float32)
    if part is not None:
        index = torch.from_numpy(mine)
        mask[index] = torch.from_numpy(part.mask.astype(np.int32))
        loss[index] = torch.from_numpy(np.array(part.loss, dtype=np.float32))
    device = _comm_device(group)
    mask, loss = mask.to(device), loss.to(device)
    dist.all_reduce(mask, group=group)  # rows are owned by one rank: x + 0 == x exactly
    dist.all_reduce(loss, group=group)
    parts = _all_gather_object(
        None if part is None else (dict(part.params), dict(part.unsplit), part.upsample_factor),
        group,
    )
    params, _, upsample_factor = next(p for p in parts if p is not None)
    unsplit: dict[int, str] = {}
    for p in parts:
        if p is not None:
            unsplit.update(p[1])
    return Selection(
        mask=mask.cpu().numpy().astype(bool),
        loss=loss.cpu().numpy(),
        targets=targets_np,
        upsample_factor=upsample_factor,
        params=params,
        unsplit=dict(sorted(unsplit.items())),
    )


def save_on_rank0(selection: Selection, path: str | os.PathLike[str]) -> Path:
    """Save ``selection`` once, from rank 0, atomically; every rank returns when it is on disk.

    Outside a process group this is ``selection.save(path)``. Inside one, rank 0 writes
    (`Selection.save`: temporary file, fsync, rename) and tells every rank whether it
    succeeded, so all ranks can ``Selection.load(path)`` right after, and a failed write
    raises on every rank instead of leaving the others waiting.

    Args:
        selection: The selection to save (the same on every rank).
        path: Destination file, on a filesystem every rank can read.

    Returns:
        The path written.

    Raises:
        RuntimeError: on every rank, if the write on rank 0 failed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return selection.save(path)
    status: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            status[0] = ("ok", str(selection.save(path)))
        except Exception as err:
            status[0] = ("error", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(status, src=0, device=_comm_device())
    outcome, detail = status[0]
    if outcome != "ok":
        raise RuntimeError(f"saving the selection to {str(path)!r} failed on rank 0: {detail}")
    return Path(detail)


def _all_gather_object(value: Any, group: Any = None) -> list[Any]:
    values: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    return values


def _check_same_on_all_ranks(what: str, value: Any, group: Any = None) -> None:
    values = _all_gather_object(value, group)
    if any(v != values[0] for v in values):
        shown = values if len(repr(values)) < 300 else "(differs)"
        raise ValueError(
            f"{what} should be the same on every rank, but the ranks hold {shown}; build the "
            "dataset identically on every rank (same split, same order, no per-rank shuffling)"
        )

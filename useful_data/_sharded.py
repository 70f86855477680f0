"""The distributed selection's steps (internal): a sharded eval pass and a per-class split.

See `useful_data.distributed` for the design. `collect_outputs_sharded` runs each rank's
batches and gathers the outputs in dataset order; `select_across_ranks` clusters each class on
one rank (`assign_classes`) and shares the result. Each step checks, on every rank, whether
any rank failed (`useful_data._comm.raise_if_any_failed`) before its next collective.

Conventions: ``N`` examples, ``C`` classes (logit columns), ``W`` ranks (world size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from useful_data._batches import default_batch_size, model_device
from useful_data._checks import check_outputs, check_positive_int
from useful_data._comm import (
    all_gather_object,
    check_same_on_all_ranks,
    comm_device,
    get_rank,
    get_world_size,
    raise_if_any_failed,
    shard_indices,
    unwrap,
)
from useful_data._targets import dataset_fingerprint
from useful_data.collect import collect_outputs
from useful_data.distributed import gather_outputs
from useful_data.selection import Selection

__all__ = ["assign_classes", "collect_outputs_sharded", "select_across_ranks"]


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
    every rank. An exception on one rank's shard is raised on every rank
    (`raise_if_any_failed`).

    Args:
        model: The model (plain or wrapped in ``DistributedDataParallel``).
        dataset: The same map-style dataset, in the same order, on every rank.
        batch_size: Batch size of the forward passes, and the block size of the shards;
            ``None``: 128 on a CPU, 256 on a GPU (`default_batch_size`).
        progress: Show a progress bar (rank 0 only).
        **collect_kwargs: Passed on to `collect_outputs` (``batch_size``, ``device``, ...).

    Returns:
        ``(outputs, targets)`` as `collect_outputs` returns them for the whole dataset.

    Raises:
        ValueError: if ranks see datasets of different lengths or output widths.
        Exception: what the eval pass raised on a rank, on every rank.
    """
    world, rank = get_world_size(), get_rank()
    num_examples = len(dataset)  # type: ignore[arg-type]
    check_same_on_all_ranks("len(dataset)", num_examples)
    if num_examples == 0:
        raise ValueError("dataset should hold at least one example, but got an empty dataset")
    if batch_size is None:
        device = collect_kwargs.get("device")
        batch_size = default_batch_size(device if device is not None else model_device(model))
    batch_size = check_positive_int("batch_size", batch_size)
    shard = Subset(dataset, shard_indices(num_examples, rank, world, block=batch_size).tolist())
    local: torch.Tensor = torch.zeros((0, 0))
    seen: torch.Tensor | None = None
    error: Exception | None = None
    try:
        if len(shard):  # else more ranks than batches: this rank only pads the collectives
            local, seen = collect_outputs(
                unwrap(model),
                shard,
                batch_size=batch_size,
                progress=progress and rank == 0,
                **collect_kwargs,
            )
    except Exception as err:  # passed to every rank, so that none waits in a collective
        error = err
    raise_if_any_failed(error, "the eval pass")
    widths = all_gather_object(int(local.shape[1]) if len(shard) else None)
    width = next(w for w in widths if w is not None)
    if any(w not in (None, width) for w in widths):
        raise ValueError(f"the model returned a different number of columns per rank: {widths}")
    if len(shard) == 0:
        local = torch.zeros((0, width))
    outputs = gather_outputs(local, num_examples, block=batch_size)
    has_targets = all_gather_object(seen is not None or len(shard) == 0)
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
        select: ``select(logits, targets) -> Selection``, a per-class selection (the one
            `find_slow_learnable` runs).
        logits: ``(N, C)`` outputs, identical on every rank.
        targets: ``(N,)`` labels, identical on every rank.
        group: Process group; the default one if ``None``.

    Returns:
        The `Selection` for all ``N`` examples, identical on every rank.

    Raises:
        ValueError: if the ranks hold different labels, or the outputs or labels are
            malformed (see `find_slow_learnable`), on every rank alike.
        Exception: what ``select`` raised on a rank, on every rank.
    """
    # checked whole, before the split: every rank raises the same error (not one rank
    # failing on its classes while the others wait in a collective)
    logits_np, targets_np = check_outputs(logits, targets)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    check_same_on_all_ranks(
        "the labels (targets)", dataset_fingerprint(targets_np)["targets_sha256"], group
    )
    mine = np.flatnonzero(assign_classes(targets_np, world) == rank)
    part: Selection | None = None
    error: Exception | None = None
    try:
        part = select(logits_np[mine], targets_np[mine]) if mine.size else None
    except Exception as err:  # e.g. a clustering backend failing on one rank's classes
        error = err
    raise_if_any_failed(error, "the selection")
    num_examples = len(targets_np)
    mask = torch.zeros(num_examples, dtype=torch.int32)
    loss = torch.zeros(num_examples, dtype=torch.float32)
    if part is not None:
        index = torch.from_numpy(mine)
        mask[index] = torch.from_numpy(part.mask.astype(np.int32))
        loss[index] = torch.from_numpy(np.array(part.loss, dtype=np.float32))
    device = comm_device(group)
    mask, loss = mask.to(device), loss.to(device)
    dist.all_reduce(mask, group=group)  # rows are owned by one rank: x + 0 == x exactly
    dist.all_reduce(loss, group=group)
    parts = all_gather_object(
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

"""USEFUL under ``torch.distributed`` (DDP launched by ``torchrun``): shard, gather, select, save.

Inside an initialised process group with more than one rank, `find_slow_learnable` shares the
work among the ranks so that no rank redoes the work of another (the steps below are internal,
in ``useful_data._sharded``; this module holds what a user calls):

1. **Outputs.** The dataset is cut into the batches one process would run, and rank ``r``
   runs batches ``r, r + W, r + 2W, ...`` only .
   The shards are padded to equal length, gathered with one ``all_gather`` and
   de-interleaved back into dataset order, padding dropped (`gather_outputs`, which a
   hand-written sharded eval loop can call too). Every rank
   then holds the same ``(N, C)`` outputs, bit for bit equal to a single-process run on the
   same model and hardware (each forward pass sees the very batch it would see alone).
2. **Selection.** Algorithm 1 clusters every class independently, so the classes are
   divided among the ranks (largest first, to the least loaded rank); each class is
   clustered on exactly one rank and the per-example results are summed across ranks.
   Every rank returns the same `Selection`, and it equals the single-process one: each
   class sees the same rows and the same k-means seed.
   Clustering once per class on one rank, rather than on every rank, means that a backend
   which is not bit-reproducible across GPUs (cuML) can never make ranks disagree, and that
   the clustering time shrinks with the number of ranks instead of being repeated on each.
   A rank that fails in either step (a bad item, a model error) makes every rank raise the
   same error at once, naming the rank, instead of leaving the others waiting in a
   collective until the process group times out.
3. **Saving.** `save_on_rank0` writes the file once, atomically, from rank 0; every rank
   waits for it and raises the same error if the write failed, so no rank hangs.

Conventions: ``N`` examples, ``C`` classes (logit columns), ``W`` ranks (world size).
Backends: gloo (CPU tensors) and nccl (CUDA tensors on the current device) are supported.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from useful_data._comm import all_gather_equal, comm_device
from useful_data._comm import shard_indices as _shard_indices
from useful_data._deprecation import moved_names
from useful_data.selection import Selection

__all__ = ["gather_outputs", "save_on_rank0"]


def gather_outputs(
    local: torch.Tensor,
    num_examples: int,
    *,
    block: int = 1,
    group: Any = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gather every rank's shard of outputs into one ``(N, ...)`` tensor, in dataset order.

    The examples are cut into consecutive blocks of ``block`` (the last may be short), dealt
    to the ranks in turn: rank ``r`` passes the rows of blocks ``r, r + W, r + 2W, ...``, in
    order (with ``block=1``, examples ``range(r, N, W)``, the split of
    ``DistributedSampler(shuffle=False)``; with ``block`` the batch size, whole batches).
    Shards are padded to the same number of whole blocks, all-gathered (rank-major), then
    de-interleaved: block ``j`` of rank ``r`` is block ``j * W + r`` of the dataset, and the
    padding rows land past ``N`` and are dropped. Every rank returns the same CPU tensor.

    Args:
        local: This rank's ``(n_r, ...)`` rows, in the order of its shard.
        num_examples: ``N``, the size of the full dataset.
        block: The block size the shards were cut with.
        group: Process group; the default one if ``None``.
        dtype: Dtype to communicate and return in (e.g. ``torch.float16`` halves the traffic
            and the memory of the gathered outputs); defaults to ``local.dtype``.

    Returns:
        The ``(N, ...)`` outputs of all ranks in dataset order, on the CPU.

    Raises:
        ValueError: if ``local`` does not have this rank's shard length.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    expected = len(_shard_indices(num_examples, rank, world, block=block))
    if local.shape[0] != expected:
        raise ValueError(
            f"rank {rank} should pass the outputs of its {expected} examples (blocks "
            f"{rank}, {rank} + {world}, ... of {block} of the {num_examples}), "
            f"but got {local.shape[0]} rows"
        )
    blocks_per_rank = math.ceil(math.ceil(num_examples / block) / world)
    per_rank, row = blocks_per_rank * block, tuple(local.shape[1:])
    device = comm_device(group)
    dtype = local.dtype if dtype is None else dtype
    padded = torch.zeros((per_rank, *row), dtype=dtype, device=device)
    padded[:expected].copy_(local)
    gathered = torch.empty((world * per_rank, *row), dtype=dtype, device=device)
    all_gather_equal(gathered, padded, group)
    # (W, J, block, ...) rank-major -> (J, W, block, ...): block j * W + r in place.
    ordered = gathered.view(world, blocks_per_rank, block, *row).transpose(0, 1)
    return ordered.reshape(world * per_rank, *row)[:num_examples].cpu()


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
    dist.broadcast_object_list(status, src=0, device=comm_device())
    outcome, detail = status[0]
    if outcome != "ok":
        raise RuntimeError(f"saving the selection to {str(path)!r} failed on rank 0: {detail}")
    return Path(detail)


# 1.0 made the steps of the distributed selection private
__getattr__ = moved_names(
    __name__,
    {
        "assign_classes": "useful_data._sharded:assign_classes",
        "collect_outputs_sharded": "useful_data._sharded:collect_outputs_sharded",
        "select_across_ranks": "useful_data._sharded:select_across_ranks",
        "shard_indices": "useful_data._comm:shard_indices",
        "get_rank": "useful_data._comm:get_rank",
        "get_world_size": "useful_data._comm:get_world_size",
        "is_distributed": "useful_data._comm:is_distributed",
        "resolve_distributed": "useful_data._comm:resolve_distributed",
    },
)

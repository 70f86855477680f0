"""Process-group helpers shared by the distributed paths (internal).

Who this process is (`get_rank`, `get_world_size`), whether to shard (`resolve_distributed`),
how ranks cut a dataset (`shard_indices`), the collectives the eval passes use, and
`raise_if_any_failed`: the one step that turns a failure on one rank into the same error on
every rank, so that no rank waits for a collective the failed one will never join.

Conventions: ``N`` examples, ``W`` ranks (world size). Backends: gloo (CPU tensors) and nccl
(CUDA tensors on the current device).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from useful_data._checks import check_positive_int

__all__ = [
    "all_gather_equal",
    "all_gather_object",
    "check_same_on_all_ranks",
    "comm_device",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "raise_if_any_failed",
    "resolve_distributed",
    "shard_indices",
    "unwrap",
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


def comm_device(group: Any = None) -> torch.device:
    """Where tensors must live for collectives on ``group``: CUDA for nccl, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_equal(output: torch.Tensor, local: torch.Tensor, group: Any) -> None:
    """All-gather equal-size tensors into ``output`` (``(W * m, ...)``), rank-major."""
    gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    try:
        gather_single(output, local, group=group)
    except (RuntimeError, NotImplementedError):  # a backend without the fused collective
        dist.all_gather(list(output.chunk(dist.get_world_size(group))), local, group=group)


def all_gather_object(value: Any, group: Any = None) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    values: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    return values


def check_same_on_all_ranks(what: str, value: Any, group: Any = None) -> None:
    """Raise the same `ValueError` on every rank unless all ranks hold an equal ``value``."""
    values = all_gather_object(value, group)
    if any(v != values[0] for v in values):
        shown = values if len(repr(values)) < 300 else "(differs)"
        raise ValueError(
            f"{what} should be the same on every rank, but the ranks hold {shown}; build the "
            "dataset identically on every rank (same split, same order, no per-rank shuffling)"
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP: its forward would run collectives the shards cannot match."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _picklable_type(error: BaseException) -> type[BaseException] | None:
    """``type(error)`` if another process can unpickle it (a class importable by name)."""
    try:
        pickle.loads(pickle.dumps(type(error)))
    except Exception:  # a class defined inside a function, or not importable
        return None
    return type(error)


def _rebuilt(error_type: type[BaseException], text: str) -> BaseException | None:
    """``error_type(text)`` where that constructor works and keeps the text, else ``None``."""
    try:
        rebuilt = error_type(text)
    except Exception:  # an exception class with another constructor
        return None
    return rebuilt if str(rebuilt) == text else None


def raise_if_any_failed(error: Exception | None, what: str, group: Any = None) -> None:
    """Every rank says whether ``what`` failed on it; if any did, every rank raises.

    Called by every rank at the same point, right after the local work that may fail and
    before the next collective, so a rank that raised but stays alive never leaves the
    others waiting for the process group's timeout. The rank that failed raises its own
    exception; every other rank raises one of the same type whose message names the failed
    rank and carries its text, or a `RuntimeError` saying so where the type cannot be built
    from a message. The lowest failed rank is reported.

    Args:
        error: The exception this rank caught, or ``None`` if its work succeeded.
        what: The step, for the message (e.g. ``"the eval pass"``).
        group: Process group; the default one if ``None``.

    Raises:
        Exception: ``error`` itself on the rank it happened on; its type, or `RuntimeError`,
            on the others.
    """
    sent = None if error is None else (_picklable_type(error), type(error).__name__, str(error))
    failures = [(rank, f) for rank, f in enumerate(all_gather_object(sent, group)) if f]
    if not failures:
        return
    if error is not None:
        raise error
    rank, (error_type, name, text) = failures[0]
    message = f"{what} failed on rank {rank} with {name}: {text}"
    rebuilt = _rebuilt(error_type, message) if error_type is not None else None
    raise rebuilt if rebuilt is not None else RuntimeError(message)

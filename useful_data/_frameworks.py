"""Which training framework, if any, shards the batches that `UpsampleSampler` feeds.

A sampler under ``torch.distributed`` normally shards itself, as ``DistributedSampler`` does.
Some frameworks shard *again*, after the sampler, and silently lose data if it already did:

* Accelerate's ``prepare`` (and so the Hugging Face ``Trainer``) wraps the loader's batch
  sampler in ``accelerate.data_loader.BatchSamplerShard``, which hands batch ``i`` to process
  ``i % num_processes``; with ``dispatch_batches=True`` a ``DataLoaderDispatcher`` iterates
  the whole loader on process 0 and scatters its batches.

There is no hook for a sampler to learn that it is wrapped, so `sharding_framework` looks for
these wrappers among the (few) callers of ``__iter__``/``__len__``, once per epoch. Lightning,
Fabric and Ray Train are not listed: they keep a ``DistributedSampler`` subclass as it is (and
`UpsampleSampler` is one), so the sampler's own sharding is the only one.
"""

from __future__ import annotations

import sys
from types import FrameType

__all__ = ["sharding_framework"]

# (module, class names): wrappers that shard the batches of the sampler they iterate.
_SHARDERS = (("accelerate.data_loader", ("BatchSamplerShard", "DataLoaderDispatcher")),)
# Three times the deepest call chain seen (8 frames: accelerate's dispatch_batches with
# torchdata's stateful loader and 2 workers); only called once per epoch, so the margin is free.
_MAX_DEPTH = 24


def _sharder_types() -> tuple[type, ...]:
    types: list[type] = []
    for module_name, names in _SHARDERS:
        module = sys.modules.get(module_name)  # not imported: not in use, nothing to look for
        if module is not None:
            types.extend(t for name in names if isinstance(t := getattr(module, name, None), type))
    return tuple(types)


def sharding_framework(start: FrameType | None) -> str | None:
    """The framework (``"accelerate"``) whose batch sharder is iterating the sampler, or ``None``.

    Args:
        start: The frame to start looking from (the caller of the sampler's method).
    """
    types = _sharder_types()
    if not types:
        return None
    frame = start
    for _ in range(_MAX_DEPTH):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if owner is not None and isinstance(owner, types):
            return type(owner).__module__.split(".", 1)[0]
        frame = frame.f_back
    return None

"""USEFUL's selection step over a stream: one eval pass over an ``IterableDataset``, by key.

Past a few million examples, training data is streamed (WebDataset tar shards, Hugging Face
``datasets`` in streaming mode or ``to_iterable_dataset()``, a plain torch
``IterableDataset``) and has no integer index. `find_slow_learnable` then reads every item's
example key (WebDataset's ``__key__``, an id column, or a function item -> key), makes one
eval pass over the stream, clusters the outputs of every class as for a map-style dataset, and
returns a `Selection` whose ``keys`` name the examples: it is addressed by key, saved and
fingerprinted over its key set in any order (a stream's order can change from pass to pass),
and upsampled with `useful_data.USEFULIterableDataset`. Its rows are in the order of the key
hashes, not the stream's: k-means++ seeding depends on the order of the rows, so this makes
the selection a function of the stream's examples alone, the same whatever the number of
DataLoader workers or ranks, or the shuffling of shards.

The pass holds the ``(N, C)`` outputs, ``N`` labels and ``N`` keys, and a table of the key
hashes (16 to 32 bytes per key) to catch a key seen twice: a stream that repeats or never
ends, or one read by several DataLoader workers or ranks that do not split it. A stream with
no end and no repeated key cannot be detected: bound it with ``max_examples``.

Under ``torch.distributed`` the stream must split itself by rank (WebDataset's
``nodesplitter=wds.split_by_node``, ``datasets.distributed.split_dataset_by_node``); each rank
runs the model on its part, the parts are gathered (rank-major) and every rank returns the
same `Selection`.

Conventions: ``N`` examples, ``C`` classes (logit columns).

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024 (Algorithm 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset, default_collate

from useful_data._checks import check_positive_int
from useful_data._keys import (
    DEFAULT_KEY,
    KeySpec,
    KeyTable,
    check_distinct,
    describe_key,
    hash_keys,
    key_at,
    keys_array,
    read_key,
)
from useful_data._progress import tqdm
from useful_data._targets import split_batch
from useful_data.collect import (
    _autocast,
    _check_model_on,
    _eval_mode,
    _first_batch,
    _forward,
    _loader,
    _to_device,
    default_batch_size,
    model_device,
)
from useful_data.distributed import _all_gather_object, _unwrap, get_rank
from useful_data.selection import Selection

__all__ = ["collect_stream_outputs", "stream_outputs", "with_keys"]

_REPEAT_HINT = (
    "keys must be unique within one pass. A stream that repeats (WebDataset resampled=True "
    "or .repeat(), datasets' .repeat()) or never ends cannot be selected from: "
    "find_slow_learnable needs exactly one finite pass (bound an endless one with "
    "max_examples=). With num_workers > 0 the stream must split itself by worker "
    "(WebDataset: workersplitter; a torch IterableDataset: torch.utils.data.get_worker_info)"
)


class _KeyedCollate:
    """Collate a batch and read each item's key on the way (in the worker that loaded it)."""

    def __init__(self, key: KeySpec) -> None:
        self.key = key

    def __call__(self, items: list[Any]) -> tuple[Any, list[Any]]:
        keys = [read_key(item, self.key) for item in items]
        return default_collate(items), keys


def _resampled(stream: Any) -> bool:
    """Whether ``stream`` is a WebDataset pipeline that samples shards with replacement
    (``resampled=True``): it never ends and repeats examples."""
    stages = getattr(stream, "pipeline", None)
    return isinstance(stages, list) and any(
        type(stage).__name__ == "ResampledShards" for stage in stages
    )


def collect_stream_outputs(
    model: nn.Module,
    stream: IterableDataset[Any],
    *,
    key: KeySpec = DEFAULT_KEY,
    batch_size: int | None = None,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    channels_last: bool | None = None,
    max_examples: int | None = None,
    allow_empty: bool = False,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Run ``model`` over one pass of ``stream``; return outputs, labels and keys in the order
    the stream yielded them.

    Arguments are as in `useful_data.collect.collect_outputs`, plus:

    Args:
        key: The field of dict items holding the example key, or a function item -> key
            (a string or an integer).
        max_examples: Raise once the stream yields more examples than this (a bound for a
            stream that may never end); ``None``: no bound.
        allow_empty: Return empty arrays for a stream that yields nothing (under
            ``torch.distributed`` a rank may get no shard) instead of raising.

    Returns:
        ``(outputs, targets, keys)``: float32 ``(N, C)`` CPU outputs, int64 ``(N,)`` labels
        and the ``(N,)`` keys (int64 or unicode; see `useful_data._keys.keys_array`).

    Raises:
        ValueError: for an empty or endless stream, an item without its key, a key seen
            twice, items without labels, or bad arguments.
        TypeError: for keys that are not strings or integers, or of both kinds.

    Example:
        >>> import torch
        >>> from torch.utils.data import IterableDataset
        >>> class Stream(IterableDataset):
        ...     def __iter__(self):
        ...         for i in range(6):
        ...             yield {"__key__": f"s{i}", "x": torch.full((3,), float(i)), "label": i % 2}
        >>> out, targets, keys = collect_stream_outputs(
        ...     torch.nn.Linear(3, 2), Stream(), progress=False
        ... )
        >>> tuple(out.shape), targets.tolist(), keys.tolist()[:2]
        ((6, 2), [0, 1, 0, 1, 0, 1], ['s0', 's1'])
    """
    num_workers = check_positive_int("num_workers", num_workers, minimum=0)
    if max_examples is not None:
        max_examples = check_positive_int("max_examples", max_examples)
    if channels_last not in (None, True, False):
        raise ValueError(
            f"channels_last should be None (automatic), True or False, but got {channels_last!r}"
        )
    if not (isinstance(key, str) or callable(key)):
        raise TypeError(
            f"key should be a field name (str) or a function item -> key, but got {key!r}"
        )
    if _resampled(stream):
        raise ValueError(
            "the stream samples its shards with replacement (WebDataset resampled=True), so it "
            "never ends and repeats examples; find_slow_learnable needs exactly one finite pass: "
            "build it with resampled=False for the selection"
        )
    if device is None:
        device = model_device(model)
    else:
        device = torch.device(device)
        _check_model_on(model, device)
    batch_size = check_positive_int(
        "batch_size", default_batch_size(device) if batch_size is None else batch_size
    )
    loader = _loader(stream, batch_size, num_workers, _KeyedCollate(key), device)
    autocast = _autocast(device, autocast_dtype)
    outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    keys: list[np.ndarray] = []
    seen = KeyTable()
    count = 0
    bar = tqdm(total=max_examples, disable=not progress, desc="useful-data: outputs", unit="ex")
    with bar, _eval_mode(model), torch.inference_mode(), autocast:
        for batch, batch_keys in loader:
            inputs, batch_targets = split_batch(batch)
            if batch_targets is None:
                raise ValueError(
                    "the stream's items carry no labels: make them (input, target, ...) tuples "
                    "or dicts with a 'label' (or 'target') field"
                )
            batch_key_array = keys_array(batch_keys, name="the stream's keys")
            if keys and batch_key_array.dtype.kind != keys[0].dtype.kind:
                raise TypeError(
                    "the stream's keys should be all strings or all integers, but got both "
                    f"(e.g. {key_at(keys[0], 0)!r} and {key_at(batch_key_array, 0)!r})"
                )
            repeated = seen.add(hash_keys(batch_key_array))
            if repeated.any():
                again = key_at(batch_key_array, int(np.flatnonzero(repeated)[0]))
                raise ValueError(
                    f"key {again!r} appeared twice in one pass over the stream (after "
                    f"{count} examples); {_REPEAT_HINT}"
                )
            count += len(batch_keys)
            if max_examples is not None and count > max_examples:
                raise ValueError(
                    f"the stream yielded more than max_examples={max_examples} examples; "
                    "find_slow_learnable needs one finite pass over the stream: make it end "
                    "(no .repeat(), resampled=False) or raise max_examples"
                )
            inputs = _to_device(inputs, device)
            if channels_last is None:
                logits, channels_last = _first_batch(model, inputs, device)
            else:
                logits = _forward(model, inputs, channels_last)
            if logits.ndim != 2 or logits.shape[0] != len(batch_keys):
                raise ValueError(
                    f"the model should return logits of shape (B, C) with B={len(batch_keys)}, "
                    f"but got shape {tuple(logits.shape)}"
                )
            if outputs and logits.shape[1] != outputs[0].shape[1]:
                raise ValueError(
                    f"the model returned {logits.shape[1]} columns for one batch and "
                    f"{outputs[0].shape[1]} for another"
                )
            outputs.append(logits.float().cpu())
            targets.append(batch_targets.cpu())
            keys.append(batch_key_array)
            bar.update(len(batch_keys))
    if not count:
        if allow_empty:
            return torch.zeros((0, 0)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        raise ValueError("the stream should yield at least one example, but it yielded none")
    return torch.cat(outputs), torch.cat(targets).numpy(), np.concatenate(keys)


def stream_outputs(
    model: nn.Module,
    stream: IterableDataset[Any],
    *,
    key: KeySpec | None,
    eval_dataset: Any = None,
    targets: Any = None,
    sharded: bool = False,
    progress: bool = True,
    **collect_kwargs: Any,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """`collect_stream_outputs` as `find_slow_learnable` calls it: arguments that have no
    meaning for a stream are refused; under ``torch.distributed`` every rank's part of the
    stream is gathered and checked for keys seen on two ranks; the rows come back in the
    order of their key hashes, so the selection depends on the stream's examples, not on
    the order they came in."""
    if eval_dataset is not None:
        raise ValueError(
            "eval_dataset has no meaning for a stream (its examples are matched by key, not "
            "position): pass the stream with eval transforms as the dataset itself"
        )
    if targets is not None:
        raise ValueError(
            "targets= cannot be matched to a stream's examples by position: let the items "
            "carry their labels, (input, target, ...) or a dict with 'label'"
        )
    key = DEFAULT_KEY if key is None else key
    if not sharded:
        outputs, labels, keys = collect_stream_outputs(
            model, stream, key=key, progress=progress, **collect_kwargs
        )
    else:
        try:
            local: Any = collect_stream_outputs(
                _unwrap(model),
                stream,
                key=key,
                progress=progress and get_rank() == 0,
                allow_empty=True,
                **collect_kwargs,
            )
        except (TypeError, ValueError) as err:  # every rank raises it, none waits forever
            local = err
        outputs, labels, keys = _gather(local)
    # Rows in key-hash order: k-means++ seeding depends on the order of the rows, and a
    # stream's order depends on workers, ranks and shuffling; its key set does not.
    hashes = hash_keys(keys)
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    twice = np.flatnonzero(ordered[1:] == ordered[:-1])
    if twice.size:
        again = key_at(keys, int(order[twice[0]]))
        if again != key_at(keys, int(order[twice[0] + 1])):  # two keys, one hash: name them
            check_distinct(keys, hashes, order, "the stream's keys")
        raise ValueError(
            f"key {again!r} was seen by more than one rank: under torch.distributed the stream "
            "must split itself by rank (WebDataset: nodesplitter=wds.split_by_node; datasets: "
            "split_dataset_by_node), or pass distributed=False to run the whole pass on "
            "every rank"
        )
    return outputs[torch.from_numpy(order)], labels[order], keys[order]


def _gather(
    local: tuple[torch.Tensor, np.ndarray, np.ndarray] | Exception,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Every rank's ``(outputs, labels, keys)``, concatenated in rank order on every rank;
    if a rank failed (passes its exception), every rank raises it."""
    sent = local if isinstance(local, Exception) else (local[0].numpy(), *local[1:])
    gathered = _all_gather_object(sent)
    for rank, part in enumerate(gathered):
        if isinstance(part, Exception):
            raise type(part)(f"on rank {rank}: {part}")
    parts = [p for p in gathered if len(p[2])]
    if not parts:
        raise ValueError("the stream should yield at least one example, but no rank got any")
    if len({p[2].dtype.kind for p in parts}) > 1:
        raise TypeError("the stream's keys should be of one kind on every rank, strings or ints")
    return (
        torch.from_numpy(np.concatenate([p[0] for p in parts])),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def with_keys(selection: Selection, keys: np.ndarray, key: KeySpec | None) -> Selection:
    """``selection`` addressed by ``keys`` (row ``i`` is the example of key ``keys[i]``), with
    the key spec recorded in ``params["key"]``."""
    name = describe_key(DEFAULT_KEY if key is None else key)
    return dataclasses.replace(selection, keys=keys, params={**selection.params, "key": name})

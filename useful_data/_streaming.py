"""The eval pass over a stream (internal): outputs, labels and keys, gathered across ranks.

See `useful_data.streaming` for what the pass does and what it holds in memory.
`collect_stream_outputs` runs one pass in this process; `stream_outputs` is the stream path
of `find_slow_learnable` (arguments a stream has no use for refused, ranks gathered, rows put
in key-hash order); `with_keys` addresses the resulting selection by key.

Conventions: ``N`` examples, ``C`` classes (logit columns).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset, default_collate

from useful_data._batches import (
    autocast,
    check_channels_last,
    default_batch_size,
    eval_mode,
    loader,
    resolve_device,
    run_batch,
)
from useful_data._checks import check_positive_int
from useful_data._comm import all_gather_object, get_rank, raise_if_any_failed, unwrap
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


class _Rows:
    """The rows of a stream pass so far: outputs, labels and keys, with every batch checked
    (key kinds, keys seen before, the ``max_examples`` bound, the output width)."""

    def __init__(self, max_examples: int | None) -> None:
        self.max_examples = max_examples
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.keys: list[np.ndarray] = []
        self.seen = KeyTable()
        self.count = 0

    def check_keys(self, batch_keys: list[Any]) -> np.ndarray:
        """The batch's keys as an array, after the checks that need no forward pass."""
        keys = keys_array(batch_keys, name="the stream's keys")
        if self.keys and keys.dtype.kind != self.keys[0].dtype.kind:
            raise TypeError(
                "the stream's keys should be all strings or all integers, but got both "
                f"(e.g. {key_at(self.keys[0], 0)!r} and {key_at(keys, 0)!r})"
            )
        repeated = self.seen.add(hash_keys(keys))
        if repeated.any():
            again = key_at(keys, int(np.flatnonzero(repeated)[0]))
            raise ValueError(
                f"key {again!r} appeared twice in one pass over the stream (after "
                f"{self.count} examples); {_REPEAT_HINT}"
            )
        if self.max_examples is not None and self.count + len(keys) > self.max_examples:
            raise ValueError(
                f"the stream yielded more than max_examples={self.max_examples} examples; "
                "find_slow_learnable needs one finite pass over the stream: make it end "
                "(no .repeat(), resampled=False) or raise max_examples"
            )
        return keys

    def add(self, logits: torch.Tensor, targets: torch.Tensor, keys: np.ndarray) -> None:
        if logits.shape[0] != len(keys):
            raise ValueError(
                f"the model should return logits of shape (B, C) with B={len(keys)}, "
                f"but got shape {tuple(logits.shape)}"
            )
        if self.outputs and logits.shape[1] != self.outputs[0].shape[1]:
            raise ValueError(
                f"the model returned {logits.shape[1]} columns for one batch and "
                f"{self.outputs[0].shape[1]} for another"
            )
        self.outputs.append(logits.float().cpu())
        self.targets.append(targets.cpu())
        self.keys.append(keys)
        self.count += len(keys)


def _check_stream(stream: Any, key: Any) -> None:
    """Refuse a key spec that is neither a field nor a function, and an endless WebDataset."""
    if not (isinstance(key, str) or callable(key)):
        raise TypeError(
            f"key should be a field name (str) or a function item -> key, but got {key!r}"
        )
    stages = getattr(stream, "pipeline", None)  # WebDataset resampled=True: never ends
    if isinstance(stages, list) and any(type(s).__name__ == "ResampledShards" for s in stages):
        raise ValueError(
            "the stream samples its shards with replacement (WebDataset resampled=True), so it "
            "never ends and repeats examples; find_slow_learnable needs exactly one finite pass: "
            "build it with resampled=False for the selection"
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
    check_channels_last(channels_last)
    _check_stream(stream, key)
    device = resolve_device(model, device)
    batch_size = check_positive_int(
        "batch_size", default_batch_size(device) if batch_size is None else batch_size
    )
    batches = loader(stream, batch_size, num_workers, _KeyedCollate(key), device)
    rows = _Rows(max_examples)
    bar = tqdm(total=max_examples, disable=not progress, desc="useful-data: outputs", unit="ex")
    with bar, eval_mode(model), torch.inference_mode(), autocast(device, autocast_dtype):
        for batch, batch_keys in batches:
            inputs, batch_targets = split_batch(batch)
            if batch_targets is None:
                raise ValueError(
                    "the stream's items carry no labels: make them (input, target, ...) tuples "
                    "or dicts with a 'label' (or 'target') field"
                )
            keys = rows.check_keys(batch_keys)
            logits, channels_last = run_batch(model, inputs, device, channels_last)
            rows.add(logits, batch_targets, keys)
            bar.update(len(keys))
    if not rows.count:
        if allow_empty:
            return torch.zeros((0, 0)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        raise ValueError("the stream should yield at least one example, but it yielded none")
    return torch.cat(rows.outputs), torch.cat(rows.targets).numpy(), np.concatenate(rows.keys)


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
        local: Any = None
        error: Exception | None = None
        try:
            local = collect_stream_outputs(
                unwrap(model),
                stream,
                key=key,
                progress=progress and get_rank() == 0,
                allow_empty=True,
                **collect_kwargs,
            )
        except Exception as err:  # every rank raises it, none waits in a collective
            error = err
        raise_if_any_failed(error, "the eval pass over the stream")
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
    local: tuple[torch.Tensor, np.ndarray, np.ndarray],
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Every rank's ``(outputs, labels, keys)``, concatenated in rank order on every rank."""
    gathered = all_gather_object((local[0].numpy(), *local[1:]))
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

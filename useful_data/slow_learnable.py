"""USEFUL's selection step: find the slow-learnable examples of every class.

Algorithm 1 of the paper: after training for ``t`` early epochs (the *separating epoch*),
cluster the model outputs of every class into two groups with k-means; the cluster with the
higher mean loss holds the slow-learnable examples, which are then upsampled once.

Conventions: ``N`` examples, ``C`` classes (logit columns). Labels are class indices into the
logit columns; they need not cover every column (a subset of classes is fine).

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024, Section 4.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, IterableDataset

from useful_data._baselines import (
    STRATEGIES,
    select_loss_quantile,
    select_misclassified,
    select_random_like,
)
from useful_data._batches import model_device
from useful_data._checks import (
    as_numpy,
    check_outputs,
    check_positive_int,
    check_seed,
    check_sized,
    check_upsample_factor,
)
from useful_data._cluster import KMeans2, check_backend, check_n_init
from useful_data._comm import resolve_distributed
from useful_data._deprecation import moved_names
from useful_data._keys import KeySpec
from useful_data._sharded import collect_outputs_sharded, select_across_ranks
from useful_data._streaming import stream_outputs, with_keys
from useful_data._targets import dataset_fingerprint, dataset_targets, exposed_labels
from useful_data.collect import collect_outputs
from useful_data.selection import Selection

__all__ = ["find_slow_learnable"]

logger = logging.getLogger(__name__)

#: `Selection.unsplit` reason of a class whose two clusters have the same mean loss.
EQUAL_LOSS = "equal mean loss in both clusters"
SINGLE_CLUSTER = "k-means found a single cluster"
IDENTICAL = "identical outputs"
# the unsplit reasons that warn (a single-example class is expected): what happened, and a hint
_UNSPLIT_WARNINGS = {
    IDENTICAL: (
        "all their outputs are identical",
        "; is the model trained, or is the separating epoch too early?",
    ),
    SINGLE_CLUSTER: ("k-means put all their examples in one cluster", ""),
    EQUAL_LOSS: (
        "their two clusters have the same mean loss",
        ", so neither is the slow-learnable one",
    ),
}

FEATURES = ("logits", "probs")


def find_slow_learnable(
    model: nn.Module | None = None,
    dataset: Dataset[Any] | None = None,
    *,
    logits: np.ndarray | torch.Tensor | None = None,
    targets: np.ndarray | torch.Tensor | None = None,
    eval_dataset: Dataset[Any] | None = None,
    features: Literal["logits", "probs"] = "logits",
    n_init: int = 10,
    seed: int = 0,
    backend: Literal["auto", "cuml", "sklearn", "torch"] = "auto",
    upsample_factor: int = 2,
    batch_size: int | None = None,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    progress: bool = True,
    strategy: Literal["kmeans", "misclassified", "loss_quantile", "random"] = "kmeans",
    distributed: bool | None = None,
    key: str | Callable[[Any], Any] | None = None,
    max_examples: int | None = None,
) -> Selection:
    """Find the slow-learnable examples of a training set (USEFUL, Algorithm 1).

    Call it after training for the first ``t`` epochs, then restart training from scratch on
    `USEFULDataset` (or with `UpsampleSampler`).

    Two ways to call it:

    * ``find_slow_learnable(model, dataset)``: runs the model over the dataset (eval mode,
      no augmentation if you pass an eval-transform view) and clusters its outputs.
    * ``find_slow_learnable(logits=..., targets=...)``: clusters outputs you computed yourself
      (numpy or torch, any framework).

    For every class separately, k-means with two clusters runs on the outputs; the cluster with
    the higher mean cross-entropy is slow-learnable. A class with a single example, whose
    outputs are all identical, that k-means leaves in one cluster, or whose two clusters have
    exactly the same mean loss, is not split (none of it is upsampled) and is reported in
    `Selection.unsplit` and `Selection.class_summary` (with a warning, except for a single
    example).

    Args:
        model: The model after ``t`` epochs. Requires ``dataset``.
        dataset: The training set (ideally with eval transforms; see ``eval_dataset``).
        logits: Precomputed ``(N, C)`` outputs, instead of ``model``.
        targets: ``(N,)`` integer labels; when omitted, read from ``dataset.targets`` /
            ``dataset.labels`` (with ``logits=``: needed then) or, with a model, from the
            items. When they differ from the labels ``dataset`` exposes (a
            ``target_transform``), the exposed labels' fingerprint is recorded too
            (`Selection.data_fingerprint`), so ``USEFULDataset(dataset, selection)`` accepts
            the dataset and still refuses another split or order.
        eval_dataset: A view of ``dataset`` with eval transforms, used to compute the outputs;
            it must have the same length (checked) and the same labels in the same order
            (checked where ``dataset`` exposes its labels without loading items: ``.targets``,
            ``.labels`` or a `TensorDataset`'s second tensor; a warning says when it does
            not).
        features: Cluster on raw ``"logits"`` (the paper) or softmax ``"probs"``.
        n_init: k-means++ restarts per class (best inertia kept).
        seed: Seed of the k-means restarts; the result is deterministic given it (with
            ``"sklearn"``, given the thread count too: scikit-learn's float32 sums, and so
            its choice between two near-tied partitions, depend on it).
        backend: ``"auto"`` (cuML where a GPU is usable, else ``"torch"``), ``"cuml"``,
            ``"sklearn"`` (one scikit-learn ``KMeans`` per class), or ``"torch"``:
            scikit-learn's k-means reproduced in torch (same seeds, stopping rule and
            restart choice, so the same labels, except where two partitions' inertias agree
            to float32 rounding, ~1e-6 relative, and either may win), every restart of
            many classes batched, on ``device``; 3-6x faster than ``"sklearn"`` on a
            2-core CPU at ImageNet scale (this version), and 3-3.5 s for ImageNet-1k on one
            H100 with the k-means of commit 7fc4676 (this version's CUDA path has not been
            timed; see the benchmarks page).
        upsample_factor: Stored on the result as the factor to upsample with (paper: 2).
        batch_size: Batch size for collecting outputs; ``None``: 128 on a CPU, 256 on a GPU
            (`useful_data.collect.default_batch_size`).
        num_workers: DataLoader workers for collecting outputs.
        device: The model's device (checked: the model is not moved), where the inputs
            go and the ``"torch"`` backend's k-means runs; defaults to the model's device
            (for ``logits=``: where the logits are).
        autocast_dtype: Run the model under autocast with this dtype (e.g. ``torch.bfloat16``).
        channels_last: Feed 4-D inputs in `torch.channels_last` (``True``), as they come
            (``False``), or decide (``None``, default): channels_last on a CPU for a
            convolutional network whose first batch gives the same logits both ways,
            1.5-2x faster there; see `useful_data.collect.collect_outputs`.
        progress: Show a progress bar while collecting outputs.
        strategy: How to pick the examples to upsample. ``"kmeans"`` is USEFUL (the paper's
            method); ``"misclassified"``, ``"loss_quantile"`` (above the per-class median
            loss) and ``"random"`` (k-means' count per class, drawn at random with ``seed``)
            are the paper's ablation baselines, see `useful_data.strategies`.
        distributed: Under ``torch.distributed`` (DDP, ``torchrun``), split the work across
            ranks: each rank runs the model on every ``world_size``-th batch only, the
            outputs are gathered, and each class is clustered on one rank; every rank
            returns the same `Selection`, equal to the single-process one. Call it on every
            rank. ``None`` (default) does this whenever a process group with more than one
            rank is initialised; ``False`` makes every rank do all the work alone. See
            `useful_data.distributed`.
        key: For a ``dataset`` that is a stream (a torch ``IterableDataset``: WebDataset,
            Hugging Face ``datasets`` in streaming mode or ``to_iterable_dataset()``): how
            to read each item's example key, the name of a field of dict items (default
            ``"__key__"``, WebDataset's) or a function item -> key (a string or an integer).
            The `Selection` then records the keys (``Selection.keys``) and is upsampled with
            `useful_data.USEFULIterableDataset`; see `useful_data.streaming`.
        max_examples: For a stream: raise once it yields more examples than this, a bound
            for a stream that may never end (``None``: no bound; a stream that repeats a
            key is refused either way).

    Returns:
        The `Selection` of slow-learnable examples.

    Raises:
        TypeError: if neither ``model`` nor ``logits`` is given, or both are.
        ValueError: for non-finite outputs, mismatched lengths or labels, or bad arguments
            (among them a setting of the forward pass, such as ``batch_size=``, or ``key=``,
            given with ``logits=``: it would be ignored).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> targets = torch.arange(40) % 2
        >>> logits = 0.1 * torch.randn(40, 2, generator=g)
        >>> learned = torch.arange(40) >= 20  # the second half is already fit
        >>> logits[learned, targets[learned]] += 5.0
        >>> sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
        >>> sel.indices.tolist() == list(range(20))
        True
    """
    if features not in FEATURES:
        raise ValueError(f"features should be one of {FEATURES}, but got features={features!r}")
    _check_strategy(strategy)
    n_init = check_n_init(n_init)
    seed = check_seed("seed", seed)
    check_backend(backend)  # an unknown or unusable backend fails before the forward pass
    upsample_factor = check_upsample_factor(upsample_factor)
    sharded = resolve_distributed(distributed)
    stream, max_examples = _check_sources(model, dataset, logits, key, max_examples)
    if logits is not None:  # the forward pass's settings would be silently ignored
        _refuse_forward_settings(
            batch_size=batch_size,
            num_workers=num_workers,
            autocast_dtype=autocast_dtype,
            channels_last=channels_last,
            eval_dataset=eval_dataset,
        )
    keys: np.ndarray | None = None  # a stream's keys, row for row
    if model is not None:
        device = torch.device(device) if device is not None else model_device(model)
        logits, targets, keys = _model_outputs(
            model,
            dataset,
            stream=stream,
            key=key,
            max_examples=max_examples,
            eval_dataset=eval_dataset,
            targets=targets,
            sharded=sharded,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            autocast_dtype=autocast_dtype,
            channels_last=channels_last,
            progress=progress,
        )
    elif targets is None:
        targets = _targets_of(dataset)
    if logits is None or targets is None:  # narrowing for type checkers
        raise TypeError("find_slow_learnable needs both outputs and targets")
    select = functools.partial(
        _select_from_logits,
        features=features,
        n_init=n_init,
        seed=seed,
        backend=backend,
        upsample_factor=upsample_factor,
        strategy=strategy,
        device=device,
    )
    if sharded:  # each class is clustered on one rank; every rank gets the same Selection
        selection = select_across_ranks(select, logits, targets)
    else:
        selection = select(logits, targets)
    _warn_if_doubtful(selection)  # on the whole selection: the same on every rank
    if keys is not None:
        return with_keys(selection, keys, key)
    return _record_dataset_labels(selection, dataset)


def _model_outputs(
    model: nn.Module,
    dataset: Any,
    *,
    stream: bool,
    key: KeySpec | None,
    max_examples: int | None,
    eval_dataset: Any,
    targets: np.ndarray | torch.Tensor | None,
    sharded: bool,
    **collect_kwargs: Any,
) -> tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray, np.ndarray | None]:
    """The model's outputs on the data, their labels, and (for a stream) the examples' keys:
    a map-style dataset is read in order, a stream is named by key."""
    if stream:
        return stream_outputs(
            model,
            dataset,
            key=key,
            max_examples=max_examples,
            eval_dataset=eval_dataset,
            targets=targets,
            sharded=sharded,
            **collect_kwargs,
        )
    logits, labels = _dataset_outputs(
        model, dataset, eval_dataset=eval_dataset, targets=targets, sharded=sharded,
        **collect_kwargs,
    )  # fmt: skip
    return logits, labels, None


def _targets_of(dataset: Any) -> np.ndarray:
    """The labels of ``find_slow_learnable(logits=..., dataset=...)``: the dataset's own."""
    if dataset is None:
        raise TypeError("logits= needs targets= (or a dataset exposing .targets)")
    targets = dataset_targets(dataset)
    if targets is None:
        raise TypeError(
            "logits= needs targets=: the dataset exposes no .targets or .labels to read"
        )
    return targets


def _check_sources(
    model: Any, dataset: Any, logits: Any, key: Any, max_examples: Any
) -> tuple[bool, int | None]:
    """Check where the outputs come from; whether they come from a stream, and the bound.

    Raises:
        TypeError: for no source or two, a model that is not a module, or one without data.
        ValueError: for ``key=`` or ``max_examples=`` without a stream, or a bad bound.
    """
    if max_examples is not None:
        max_examples = check_positive_int("max_examples", max_examples)
    if (model is None) == (logits is None):
        raise TypeError(
            "find_slow_learnable needs exactly one source of outputs: either a model and a "
            "dataset, find_slow_learnable(model, dataset), or precomputed outputs, "
            "find_slow_learnable(logits=..., targets=...)"
        )
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(
            f"model should be a torch.nn.Module, but got {type(model).__name__}; "
            "for precomputed outputs pass logits=... and targets=..."
        )
    if model is not None and dataset is None:
        raise TypeError("find_slow_learnable(model, dataset) needs a dataset")
    stream = model is not None and isinstance(dataset, IterableDataset)
    for name, value in (("key", key), ("max_examples", max_examples)):
        if value is not None and not stream:
            raise ValueError(
                f"{name}= applies to a stream (an IterableDataset passed with a model) only, "
                f"but got {name}={value!r} with "
                + ("logits=" if logits is not None else "a map-style dataset")
                + f"; drop {name}= (examples are then addressed by position)"
            )
    return stream, max_examples


def _record_dataset_labels(selection: Selection, dataset: Dataset[Any] | None) -> Selection:
    """``selection`` with the fingerprint of the labels ``dataset`` exposes, where they are
    not the labels it was computed with (``targets=`` given for a ``target_transform``)."""
    if dataset is None:
        return selection
    exposed = exposed_labels(dataset, selection.num_examples, name="the selection")
    if exposed is None or selection.fits(exposed):
        return selection
    return dataclasses.replace(selection, data_fingerprint=dataset_fingerprint(exposed))


def _refuse_forward_settings(**settings: Any) -> None:
    """Raise a `ValueError` for a setting of the model's forward pass given with ``logits=``
    (``num_workers`` counts when not 0, the others when not ``None``)."""
    for name, value in settings.items():
        if value is not None and not (name == "num_workers" and value == 0):
            raise ValueError(
                f"{name}= applies to the model's forward pass only, but got {name}="
                f"{value!r:.100} with logits=, which are used as given; drop {name}="
            )


def _cluster_device(
    device: torch.device | str | None, logits: np.ndarray | torch.Tensor
) -> torch.device:
    """Where the torch backend clusters: ``device`` if given, else where the logits live;
    the CPU for devices other than CUDA (its k-means++ seeding needs float64, which MPS and
    XLA devices lack)."""
    if device is None:
        device = logits.device if isinstance(logits, torch.Tensor) else "cpu"
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy should be one of {STRATEGIES}, but got strategy={strategy!r}")


def _dataset_outputs(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    eval_dataset: Dataset[Any] | None,
    targets: np.ndarray | torch.Tensor | None,
    sharded: bool = False,
    **collect_kwargs: Any,
) -> tuple[torch.Tensor, np.ndarray]:
    """The map-style path: the outputs on ``eval_dataset`` (else ``dataset``), sharded
    across ranks where ``sharded``, and the labels, checked against what the datasets expose."""
    source = dataset if eval_dataset is None else eval_dataset
    n = check_sized("dataset", dataset)
    if eval_dataset is not None and check_sized("eval_dataset", eval_dataset) != n:
        raise ValueError(
            f"eval_dataset should be a view of dataset with the same examples, but it has "
            f"{len(eval_dataset)} examples and dataset has {n}"  # type: ignore[arg-type]
        )
    exposed = dataset_targets(dataset)
    known = as_numpy("targets", targets) if targets is not None else exposed
    # the eval view exposes what the training set exposes (its raw labels, where targets=
    # holds transformed ones): compare like with like
    reference = exposed if exposed is not None else known
    if reference is not None and eval_dataset is not None:
        _check_same_targets(reference, dataset_targets(eval_dataset), "eval_dataset.targets")
    elif eval_dataset is not None:
        warnings.warn(
            "cannot check that eval_dataset holds dataset's examples in the same order: "
            "dataset exposes no labels without loading its items (no .targets or .labels); "
            "give it a .targets attribute to have the order checked",
            UserWarning,
            stacklevel=3,
        )
    collect = collect_outputs_sharded if sharded else collect_outputs
    outputs, seen = collect(model, source, **collect_kwargs)
    if known is None:
        if seen is None:
            raise ValueError(
                "could not find the labels: the dataset has no .targets or .labels and its "
                "items carry none; pass targets=... or make items (input, target)"
            )
        return outputs, seen.numpy()
    if seen is not None and targets is None:  # explicit targets= win over the items' labels
        _check_same_targets(
            known,
            seen.numpy(),
            "the labels in the dataset's items (a target_transform? pass targets=)",
        )
    return outputs, known


def _check_same_targets(expected: np.ndarray, other: np.ndarray | None, what: str) -> None:
    if other is None:
        return
    expected = np.asarray(expected)
    if other.shape != expected.shape or not np.array_equal(other, expected):
        differ = (
            "a different number of labels"
            if other.shape != expected.shape
            else f"label {int(other[np.flatnonzero(other != expected)[0]])} at index "
            f"{int(np.flatnonzero(other != expected)[0])}"
        )
        raise ValueError(
            f"{what} should equal the dataset's labels in order, but they differ "
            f"({differ}); pass an eval-transform view of the SAME training set in the same order"
        )


def _select_from_logits(
    logits: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    *,
    features: Literal["logits", "probs"] = "logits",
    n_init: int = 10,
    seed: int = 0,
    backend: Literal["auto", "cuml", "sklearn", "torch"] = "auto",
    upsample_factor: int = 2,
    strategy: Literal["kmeans", "misclassified", "loss_quantile", "random"] = "kmeans",
    device: torch.device | str | None = None,
) -> Selection:
    """Cluster precomputed outputs class by class; the core of `find_slow_learnable`.

    Arguments are as in `find_slow_learnable`; ``device`` is where the ``"torch"`` backend
    clusters (default: the device of ``logits`` if it is a tensor, else the CPU).
    """
    _check_strategy(strategy)
    seed = check_seed("seed", seed)
    logits_np, targets_np = check_outputs(logits, targets)
    num_classes = logits_np.shape[1]

    logits_t = torch.from_numpy(logits_np)
    loss = F.cross_entropy(logits_t, torch.from_numpy(targets_np), reduction="none").numpy()
    feats = logits_np if features == "logits" else torch.softmax(logits_t, dim=1).numpy()
    if strategy in ("misclassified", "loss_quantile"):  # ablation baselines: no clustering
        rule_mask = (
            select_misclassified(logits_np, targets_np)
            if strategy == "misclassified"
            else select_loss_quantile(loss, targets_np)
        )
        return Selection(
            mask=rule_mask,
            loss=loss,
            targets=targets_np,
            upsample_factor=upsample_factor,
            params={"strategy": strategy, "num_classes": int(num_classes)},
        )

    kmeans = KMeans2(backend, n_init=n_init, seed=seed, device=_cluster_device(device, logits))
    mask, unsplit = _split_classes(kmeans, feats, loss, targets_np)
    if strategy == "random":  # k-means' count per class, drawn uniformly (Figure 6 baseline)
        mask = select_random_like(mask, targets_np, seed=seed)
    params = {
        "strategy": strategy,
        "features": features,
        "n_init": n_init,
        "seed": int(seed),
        "backend": kmeans.backend,
        "num_classes": int(num_classes),
    }
    return Selection(
        mask=mask,
        loss=loss,
        targets=targets_np,
        upsample_factor=upsample_factor,
        params=params,
        unsplit=unsplit,
    )


def _split_classes(
    kmeans: KMeans2, feats: np.ndarray, loss: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, dict[int, str]]:
    """Algorithm 1 on every class: 2-means on its features, the higher-loss cluster selected.

    Returns:
        The ``(N,)`` mask of slow-learnable examples, and the classes left unsplit with why.
    """
    num_examples = len(targets)
    mask = np.zeros(num_examples, dtype=bool)
    unsplit: dict[int, str] = {}
    order = np.argsort(targets, kind="stable")
    labels, starts = np.unique(targets[order], return_index=True)
    bounds = [*starts.tolist(), num_examples]
    to_split: list[tuple[int, np.ndarray]] = []
    for label, start, stop in zip(labels.tolist(), bounds[:-1], bounds[1:], strict=True):
        members = order[start:stop]
        if members.size < 2:
            unsplit[label] = "single example"
        elif (feats[members] == feats[members[0]]).all():
            unsplit[label] = IDENTICAL
        else:
            to_split.append((label, members))
    assignments = kmeans.fit_predict_many(feats, [members for _, members in to_split])
    for (label, members), assignment in zip(to_split, assignments, strict=True):
        member_loss = loss[members]
        in_one = assignment == 1
        if in_one.all() or not in_one.any():
            unsplit[label] = SINGLE_CLUSTER
            continue
        # Algorithm 1: the cluster with the higher average loss is slow-learnable.
        mean_one, mean_zero = member_loss[in_one].mean(), member_loss[~in_one].mean()
        if mean_one == mean_zero:  # neither is: upsampling one would be an arbitrary choice
            unsplit[label] = EQUAL_LOSS
            continue
        slow = in_one if mean_one > mean_zero else ~in_one
        mask[members[slow]] = True
    return mask, unsplit


def _warn_if_doubtful(selection: Selection) -> None:
    """Warn about classes left unsplit and a weak separation, from the whole selection.

    Called once per call of `find_slow_learnable`, on the selection of all classes (under
    ``torch.distributed``: after the ranks' classes are merged), so every rank warns alike.
    """
    unsplit = selection.unsplit
    for why, (message, hint) in _UNSPLIT_WARNINGS.items():
        which = [c for c, reason in unsplit.items() if reason == why]
        if which:
            warnings.warn(
                f"{len(which)} class(es) were not split because {message} (labels "
                f"{which[:10]}{'...' if len(which) > 10 else ''}){hint}",
                RuntimeWarning,
                stacklevel=3,
            )
    if unsplit:
        logger.info("classes not split: %s", unsplit)
    for message in selection.diagnose():  # untrained phase 1, share, weak split
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# 1.0 made the per-class step private: call find_slow_learnable(logits=..., targets=...)
__getattr__ = moved_names(
    __name__, {"select_from_logits": "useful_data.slow_learnable:_select_from_logits"}
)

"""The result of USEFUL's selection step: which training examples are slow-learnable.

Conventions: ``N`` is the number of training examples, ``C`` the number of classes (logit
columns). A `Selection` is immutable; its arrays are read-only numpy arrays in dataset
order, its ``params`` and ``unsplit`` read-only mappings. It saves to a portable ``.npz`` file
(no pickle) with a format version, written atomically with the permissions of any file the
process creates, and loads back with its integrity checked.

What a selection's fingerprint covers: ``N`` and a SHA-256 of the labels, in order, that the
selection was computed with; and, where those differ from the labels the dataset itself
exposes (``find_slow_learnable(..., targets=...)`` on a dataset with a ``target_transform``),
the same for the exposed labels (`Selection.data_fingerprint`). A dataset fits a selection
when its exposed labels match either, so another split, another dataset or another order of
the same examples is refused wherever a selection meets data (`Selection.check_fits`).

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024 (Algorithm 1).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from torch.utils.data import Dataset

from useful_data import _targets
from useful_data._checks import (
    as_labels,
    check_destination,
    check_positive_int,
    check_upsample_factor,
)
from useful_data._deprecation import moved_names
from useful_data._keys import decode_keys, encode_keys, keyed_fingerprint, keys_array
from useful_data._version import __version__

__all__ = ["ClassSummary", "Selection", "SelectionLike", "Separation"]

_FORMAT_NAME = "useful-data/selection"
_FORMAT_VERSION = 1
#: The members of a selection file that `Selection.load` reads (any other is never opened),
#: with the dtypes each may declare: ``keys`` (int64 keys, or ``<U`` strings in files of
#: useful-data 0.x) or ``keys_utf8`` + ``keys_offsets`` (strings) are optional.
_MEMBER_KINDS = {
    "mask": "b",
    "loss": "f",
    "targets": "iu",
    "keys": "iU",
    "keys_utf8": "u",
    "keys_offsets": "i",
}
_REQUIRED = ("mask", "loss", "targets", "meta")
#: Metadata larger than this is refused unread (a real selection's is a few KiB).
_MAX_META_BYTES = 2**24
#: The arrays of a file may declare at most this many bytes, or ``_MAX_EXPANSION`` times the
#: file's size, whichever is larger: `Selection.save` stores them uncompressed, so a file
#: whose members inflate far beyond its own size was not written by it (a "zip bomb").
_MIN_BYTES_BOUND = 2**26
_MAX_EXPANSION = 64
#: How deeply ``params`` may nest (JSON objects and arrays).
_MAX_PARAMS_DEPTH = 32
#: A temporary file of a `Selection.save` killed midway is removed by a later save to the
#: same path once it is this old (seconds): younger ones may belong to a save in progress.
_STALE_TMP_SECONDS = 3600

#: Below this overall ROC-AUC (loss as a score for membership in the slow-learnable cluster),
#: the k-means split is called weak: `find_slow_learnable` warns and `Separation.weak` is True.
#: 0.5 is what a random split of the same size gets; on data where the split follows the
#: planted truth (the paper's synthetic distribution, a model fit for a few epochs on digits)
#: the AUC is 0.9-1.0. See docs/guides/strategies.md, "Selection diagnostics".
_WEAK_SEPARATION_AUC = 0.7
#: The share of examples selected outside which `Selection.diagnose` warns: the paper's
#: selections hold about 30% of the training set.
_SELECTED_SHARE_RANGE = (0.05, 0.5)
#: `Selection.diagnose` calls phase 1 unlearned when its training accuracy is at most chance
#: (``1/C``) plus this share of the way from chance to 100% ...
_CHANCE_MARGIN = 0.1
#: ... or, with more than two classes (where the loss bounds the accuracy only loosely), its
#: mean loss is at least this share of ``ln C``: predictions barely differ from uniform ...
_UNIFORM_LOSS_SHARE = 0.95
#: ... or one class holds at least this share of the selected examples (with at least
#: ``_MIN_SELECTED_FOR_SHARE`` selected), and ``_SWALLOW_MARGIN`` more than its share of the data.
_SWALLOW_SHARE = 0.8
_SWALLOW_MARGIN = 0.25
_MIN_SELECTED_FOR_SHARE = 20

#: What `USEFULDataset` and `UpsampleSampler` accept
#: as a selection: a `Selection`, a path to a saved one, indices or a boolean mask.
SelectionLike: TypeAlias = (
    "Selection | str | os.PathLike[str] | Sequence[int] | np.ndarray | torch.Tensor"
)


def _loss_auc(loss: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of ``loss`` as a score for ``positive`` (rank-based, ties count one half).

    The probability that a randomly drawn positive example has a higher loss than a randomly
    drawn negative one: 1.0 when every selected example has a higher loss than every other,
    0.5 when the split ignores the loss (random). NaN when either group is empty.

    Args:
        loss: ``(n,)`` scores.
        positive: ``(n,)`` bool membership.

    Returns:
        The AUC, a float in ``[0, 1]`` or NaN.

    Example:
        >>> import numpy as np
        >>> _loss_auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([False, False, True, True]))
        1.0
        >>> _loss_auc(np.array([1.0, 1.0]), np.array([True, False]))
        0.5
    """
    loss = np.asarray(loss, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    return float(_loss_aucs(loss, positive, np.zeros(loss.shape[0], dtype=np.int64), 1)[0])


def _loss_aucs(loss: np.ndarray, positive: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """`_loss_auc` of every group at once: ``(k,)`` float64, NaN where a side is empty.

    One sort by (group, loss) instead of one per group (any order among tied losses gives
    the same ranks); ranks are 1-based within a group and
    tied losses share their mean rank. Rank sums are sums of half-integers, exact in float64,
    so the result does not depend on the order of summation.
    """
    order = np.argsort(loss)  # then a stable sort by group (a radix sort for 16-bit groups)
    order = order[
        np.argsort(group.astype(np.int16 if k <= 2**15 else np.int64)[order], kind="stable")
    ]
    grp, val, pos = group[order], loss[order], positive[order]
    n = grp.shape[0]
    size = np.bincount(grp, minlength=k)
    group_start = np.cumsum(size) - size
    new_run = np.ones(n, dtype=bool)  # runs of one group with one loss value
    new_run[1:] = (grp[1:] != grp[:-1]) | (val[1:] != val[:-1])
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_start, n))
    run_rank = run_start - group_start[grp[run_start]] + 1 + (run_len - 1) / 2.0
    mean_rank = run_rank[np.cumsum(new_run) - 1]
    n_pos = np.bincount(grp, weights=pos, minlength=k)
    n_neg = size - n_pos
    rank_sum = np.bincount(grp, weights=mean_rank * pos, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


@dataclass(frozen=True)
class Separation:
    """How well the loss separates the selected examples from the rest, over all classes.

    Attributes:
        auc: Example-weighted mean over the split classes of the per-class ROC-AUC of the loss
            for membership in the slow-learnable cluster (0.5 = no better than random,
            1.0 = every selected example has a higher loss than every other of its class).
        loss_gap: Example-weighted mean over the split classes of the per-class difference
            in mean loss, slow-learnable minus the rest.
        num_classes_split: Classes with examples on both sides (the ones averaged).
        weak: ``auc < 0.7`` (NaN, i.e. nothing split, counts as weak); 0.5 is what a
            random split of the same size gets.
    """

    auc: float
    loss_gap: float
    num_classes_split: int
    weak: bool


@dataclass(frozen=True)
class ClassSummary:
    """Per-class outcome of the 2-means split.

    Attributes:
        label: The class label.
        num_examples: Examples of this class.
        num_slow_learnable: Examples in the higher-loss cluster (upsampled).
        mean_loss_slow: Mean cross-entropy of the slow-learnable cluster (NaN if empty).
        mean_loss_fast: Mean cross-entropy of the rest of the class (NaN if empty).
        note: Why the class was not split (empty if it was).
        loss_auc: ROC-AUC of the loss for membership in the slow-learnable cluster, within the
            class (NaN if one side is empty).
    """

    label: int
    num_examples: int
    num_slow_learnable: int
    mean_loss_slow: float
    mean_loss_fast: float
    note: str = ""
    loss_auc: float = float("nan")

    @property
    def loss_gap(self) -> float:
        """Mean loss of the slow-learnable cluster minus that of the rest (NaN if one is empty)."""
        return self.mean_loss_slow - self.mean_loss_fast

    @property
    def split(self) -> bool:
        """Whether the class was split into two clusters."""
        return not self.note


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


class _ReadOnlyDict(dict[Any, Any]):
    """A `dict` that refuses changes (a `Selection`'s ``params`` and ``unsplit``): compares,
    prints, pickles and serialises as a dict; ``dict(d)`` is a mutable copy."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a Selection is immutable: copy it first, e.g. dict(selection.params)")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __copy__(self) -> _ReadOnlyDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _ReadOnlyDict:
        return self


def _frozen_json(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as read-only JSON data: mappings with string keys become `_ReadOnlyDict`,
    lists and tuples tuples, numpy scalars Python ones; anything else raises."""
    if depth > _MAX_PARAMS_DEPTH:
        raise ValueError(f"{where} nests deeper than {_MAX_PARAMS_DEPTH} levels")
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        bad = next((k for k in value if not isinstance(k, str)), None)
        if bad is not None:
            raise TypeError(
                f"{where} should have string keys (JSON), but got key {bad!r} of type "
                f"{type(bad).__name__}"
            )
        return _ReadOnlyDict(
            {k: _frozen_json(v, f"{where}[{k!r}]", depth + 1) for k, v in value.items()}
        )
    if isinstance(value, list | tuple):
        return tuple(_frozen_json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    raise TypeError(
        f"{where} should be JSON data (None, bool, int, float, str, lists and mappings with "
        f"string keys), but got {value!r} of type {type(value).__name__}"
    )


def _unsplit(unsplit: Any) -> _ReadOnlyDict:
    """``unsplit`` checked: a mapping from integer labels (or their decimal strings, as in
    a saved file) to reason strings."""
    if not isinstance(unsplit, Mapping):
        raise TypeError(
            f"unsplit should be a mapping from class label to reason, but got "
            f"{type(unsplit).__name__}"
        )
    checked = {}
    for key, reason in unsplit.items():
        label: int | None = None
        if isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_):
            label = int(key)
        elif isinstance(key, str) and key.lstrip("-").isdecimal():
            label = int(key)
        if label is None:
            raise ValueError(
                f"unsplit should map integer class labels to reasons, but got key {key!r}"
            )
        if not isinstance(reason, str):
            raise TypeError(
                f"unsplit should map class labels to reason strings, but got "
                f"unsplit[{label}]={reason!r}"
            )
        checked[label] = reason
    return _ReadOnlyDict(checked)


def _fingerprint(value: Any, name: str) -> _ReadOnlyDict | None:
    """A fingerprint as `_dataset_fingerprint` makes it (or ``None``), checked."""
    if value is None:
        return None
    if (
        not isinstance(value, Mapping)
        or set(value) != {"num_examples", "targets_sha256"}
        or not isinstance(value["num_examples"], int)
        or not isinstance(value["targets_sha256"], str)
    ):
        raise ValueError(
            f"{name} should be a fingerprint of a dataset "
            f"({{'num_examples': int, 'targets_sha256': str}}), but got {value!r:.200}"
        )
    return _ReadOnlyDict(value)


@dataclass(frozen=True, eq=False)
class Selection:
    """Slow-learnable examples of a training set, as found by USEFUL.

    Built by `find_slow_learnable`; you rarely construct one by hand.

    Attributes:
        mask: ``(N,)`` bool, ``True`` for slow-learnable examples (to upsample).
        loss: ``(N,)`` float32 cross-entropy of every example at the separating epoch.
        targets: ``(N,)`` int64 class labels the selection was computed with.
        upsample_factor: How many times a slow-learnable example should appear (the paper: 2).
        params: The parameters used (strategy, features, n_init, seed, backend, ...): a
            read-only mapping of JSON data (nested lists become tuples).
        unsplit: Classes that were not split, mapped to the reason (e.g. a single example);
            read-only.
        data_fingerprint: The fingerprint (see ``fingerprint``) of the labels the dataset exposes
            (``.targets``), where they differ from ``targets`` (a ``target_transform``);
            ``None`` where they are the same or unknown. See `check_fits`.
        keys: ``(N,)`` example keys (int64, or an object array of ``str``) for a selection
            computed on a stream (`useful_data.streaming`), whose examples are addressed by
            key, not position; ``None`` for a map-style dataset. With keys, the fingerprint is taken
            over the key set (any order), see `useful_data._keys.keyed_fingerprint`.

    Example:
        >>> import numpy as np
        >>> sel = Selection(
        ...     mask=np.array([True, False, False, True]),
        ...     loss=np.array([2.0, 0.1, 0.2, 1.5], dtype=np.float32),
        ...     targets=np.array([0, 0, 1, 1]),
        ... )
        >>> sel.indices.tolist(), sel.num_examples, sel.num_slow_learnable
        ([0, 3], 4, 2)
    """

    mask: np.ndarray
    loss: np.ndarray
    targets: np.ndarray
    upsample_factor: int = 2
    params: Mapping[str, Any] = field(default_factory=dict)
    unsplit: Mapping[int, str] = field(default_factory=dict)
    data_fingerprint: Mapping[str, Any] | None = None
    keys: np.ndarray | None = None

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 1 or mask.dtype != bool:
            raise ValueError(
                f"mask should be a 1-D bool array, but got dtype {mask.dtype} "
                f"and shape {mask.shape}"
            )
        n = mask.shape[0]
        loss = np.asarray(self.loss)
        if loss.dtype.kind not in "iuf":
            raise ValueError(f"loss should hold real numbers, but got dtype {loss.dtype}")
        loss = loss.astype(np.float32)
        if not np.isfinite(loss).all():
            bad = int(np.count_nonzero(~np.isfinite(loss)))
            raise ValueError(
                f"loss should be finite, but {bad} of {loss.shape[0]} values are NaN or "
                "infinite; recompute the selection from finite outputs"
            )
        targets = np.asarray(self.targets)
        for name, array in (("loss", loss), ("targets", targets)):
            if array.shape != (n,):
                raise ValueError(
                    f"{name} should have shape ({n},) like mask, but got shape {array.shape}"
                )
        if n and not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"targets should hold integer labels, but got dtype {targets.dtype}")
        check_upsample_factor(self.upsample_factor)
        object.__setattr__(self, "mask", _readonly(mask))
        object.__setattr__(self, "loss", _readonly(loss))
        object.__setattr__(self, "targets", _readonly(as_labels("targets", targets)))
        object.__setattr__(self, "upsample_factor", int(self.upsample_factor))
        if not isinstance(self.params, Mapping):
            raise TypeError(
                f"params should be a mapping of JSON data, but got {type(self.params).__name__}"
            )
        object.__setattr__(self, "params", _frozen_json(self.params, "params"))
        object.__setattr__(self, "unsplit", _unsplit(self.unsplit))
        data_fp = _fingerprint(self.data_fingerprint, "data_fingerprint")
        if data_fp is not None and data_fp["num_examples"] != n:
            raise ValueError(
                f"data_fingerprint should describe {n} examples like mask, but it describes "
                f"{data_fp['num_examples']}"
            )
        object.__setattr__(self, "data_fingerprint", data_fp)
        if self.keys is not None:
            keys = keys_array(self.keys)
            if keys.shape != (n,):
                raise ValueError(f"keys should have shape ({n},) like mask, but got {keys.shape}")
            object.__setattr__(self, "keys", _readonly(keys))

    # --- derived views -------------------------------------------------------------------
    @property
    def indices(self) -> np.ndarray:
        """``(|S|,)`` sorted int64 indices of the slow-learnable examples."""
        return np.flatnonzero(self.mask).astype(np.int64)

    @property
    def num_examples(self) -> int:
        """``N``, the size of the training set the selection was computed on."""
        return int(self.mask.shape[0])

    @property
    def num_slow_learnable(self) -> int:
        """``|S|``, the number of slow-learnable examples."""
        return int(self.mask.sum())

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The dataset fingerprint: ``N`` and a SHA-256 of the int64 labels in order; for
        a keyed selection, over its ``(key, label)`` pairs in any order."""
        if self.keys is not None:
            return keyed_fingerprint(self.keys, self.targets)
        return _targets.dataset_fingerprint(self.targets)

    def fits(self, targets: np.ndarray) -> bool:
        """Whether a dataset exposing the labels ``targets`` (in order) is the one this
        selection was computed on: they match `fingerprint` or `data_fingerprint`."""
        found = _targets.dataset_fingerprint(targets)
        return found == self.fingerprint or found == self.data_fingerprint

    def check_fits(self, dataset: Dataset[Any], *, name: str = "selection") -> None:
        """Raise a `ValueError` if ``dataset`` is not the one this selection was computed on.

        The one check every entry point that pairs a selection with data makes
        (`USEFULDataset`, `UpsampleSampler` given a dataset, the Lightning callback,
        ``USEFULTrainer``, `useful_data.plot.plot_selection`, ``useful-data inspect``): the
        same length, and, where the dataset exposes its labels without loading items
        (``.targets``, ``.labels``, a `TensorDataset`, a timm reader), labels that match
        `fingerprint` or `data_fingerprint`, in order (see `fits`).

        Args:
            dataset: The map-style dataset the selection is about to index.
            name: The argument name used in error messages.

        Raises:
            ValueError: if the selection is keyed (computed on a stream), or the length or
                the labels differ.
            TypeError: if ``dataset`` has no length.
        """
        from useful_data._resolve import refuse_keyed  # (it imports this module)

        refuse_keyed(self, name)
        targets = _targets.exposed_labels(dataset, self.num_examples, name=name)
        if targets is not None and not self.fits(targets):
            raise ValueError(
                f"{name} does not match dataset: same length but different labels "
                "(fingerprint mismatch); it was computed on another dataset, split or order. "
                "(A selection computed from logits with targets= other than the dataset's "
                ".targets records them only if find_slow_learnable is given the dataset too.)"
            )

    @property
    def upsampled_size(self) -> int:
        """Length of the upsampled training set: ``N + (k - 1) |S|``."""
        return self.num_examples + (self.upsample_factor - 1) * self.num_slow_learnable

    def relative_cost(
        self, *, separating_epoch: int, total_epochs: int, epoch_size: int | None = None
    ) -> float:
        """Compute of USEFUL with this selection, as a multiple of plain training (SGD).

        Phase 1 trains ``t`` epochs of ``N`` examples, phase 2 restarts and trains ``T``
        epochs, each of the upsampled ``N + (k - 1) |S|`` examples by default or of
        ``epoch_size = M`` with equal-length epochs (``UpsampleSampler(..., epoch_size=M)``);
        plain training is ``T`` epochs of ``N``. Hence ``t/T + (N + (k - 1)|S|)/N``, or
        ``t/T + M/N``. Both counts may be in steps instead of epochs, as long as both are.
        The padding of a distributed sampler (under ``num_replicas`` examples) is left out.

        Args:
            separating_epoch: ``t``, the epochs of phase 1 (0 if the selection came for free).
            total_epochs: ``T``, the epochs of the original schedule (and of phase 2).
            epoch_size: ``M``, examples per phase-2 epoch across all replicas; ``None`` for
                the whole upsampled set.

        Returns:
            The ratio, e.g. ``1.42`` for "1.42x SGD".

        Raises:
            TypeError: if an argument is not an integer.
            ValueError: if ``total_epochs < 1``, ``separating_epoch`` is outside
                ``[0, total_epochs]``, ``epoch_size < 1``, or the selection is empty.

        Example:
            >>> import numpy as np
            >>> sel = Selection(mask=np.arange(100) < 20, loss=np.zeros(100),
            ...                 targets=np.zeros(100, dtype=int))
            >>> round(sel.relative_cost(separating_epoch=10, total_epochs=200), 2)  # .05 + 1.2
            1.25
            >>> round(sel.relative_cost(separating_epoch=10, total_epochs=200, epoch_size=100), 2)
            1.05
        """
        total_epochs = check_positive_int("total_epochs", total_epochs)
        separating_epoch = check_positive_int("separating_epoch", separating_epoch, minimum=0)
        if separating_epoch > total_epochs:
            raise ValueError(
                f"separating_epoch should be in [0, total_epochs={total_epochs}], but got "
                f"separating_epoch={separating_epoch}"
            )
        if epoch_size is None:
            epoch_size = self.upsampled_size
        epoch_size = check_positive_int("epoch_size", epoch_size)
        if self.num_examples == 0:
            raise ValueError("relative_cost needs a selection of at least one example, got N=0")
        return separating_epoch / total_epochs + epoch_size / self.num_examples

    def class_summary(self) -> list[ClassSummary]:
        """Per-class counts, mean loss of both clusters and loss ROC-AUC, in label order."""
        labels, inverse = np.unique(self.targets, return_inverse=True)
        k = len(labels)
        total = np.bincount(inverse, minlength=k)
        slow = np.bincount(inverse, weights=self.mask, minlength=k).astype(np.int64)
        loss = self.loss.astype(np.float64)
        loss_slow = np.bincount(inverse, weights=loss * self.mask, minlength=k)
        loss_all = np.bincount(inverse, weights=loss, minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_slow = loss_slow / slow
            mean_fast = (loss_all - loss_slow) / (total - slow)
        auc = _loss_aucs(loss, self.mask, inverse, k)
        return [
            ClassSummary(
                label=int(labels[i]),
                num_examples=int(total[i]),
                num_slow_learnable=int(slow[i]),
                mean_loss_slow=float(mean_slow[i]),
                mean_loss_fast=float(mean_fast[i]),
                note=self.unsplit.get(int(labels[i]), ""),
                loss_auc=float(auc[i]),
            )
            for i in range(k)
        ]

    @property
    def separation(self) -> Separation:
        """Overall separation of the selected examples by loss (see `Separation`).

        Derived from ``mask``, ``loss`` and ``targets``, so it is the same after save/load.

        Example:
            >>> import numpy as np
            >>> sel = Selection(
            ...     mask=np.array([True, False, False, True, False, False]),
            ...     loss=np.array([2.0, 0.1, 0.2, 1.5, 0.3, 0.4], dtype=np.float32),
            ...     targets=np.array([0, 0, 0, 1, 1, 1]),
            ... )
            >>> sep = sel.separation
            >>> sep.auc, round(sep.loss_gap, 2), sep.weak
            (1.0, 1.5, False)
        """
        split = [c for c in self.class_summary() if not np.isnan(c.loss_auc)]
        if not split:
            return Separation(float("nan"), float("nan"), 0, True)
        sizes = np.array([c.num_examples for c in split], dtype=np.float64)
        auc = float(np.average([c.loss_auc for c in split], weights=sizes))
        gap = float(np.average([c.loss_gap for c in split], weights=sizes))
        return Separation(auc, gap, len(split), not auc >= _WEAK_SEPARATION_AUC)

    def diagnose(self) -> list[str]:
        """What looks wrong with this selection, one message per finding; empty if nothing.

        Computed from the whole selection (all ranks' examples), so `find_slow_learnable`,
        which warns with each message, and ``useful-data inspect``, which prints them, agree.
        It flags:

        * a phase-1 model that has not learned: a training accuracy within 10% (of the way
          to 100%) of chance, ``1/C``, read from the loss (an example counts as correct
          when its loss is below ``ln C``: exact for two classes, an upper bound for more);
          with more than two classes, also a mean loss of at least 95% of ``ln C``
          (predictions barely differ from uniform); or one class holding at least 80% of
          the selected examples (at least 20 of them), 25 points more than its share of
          the data;
        * a selected share outside 5%-50% of the training set (the paper's is about 30%);
        * a weak split of a k-means selection: loss ROC-AUC below 0.7 (see `separation`).

        Returns:
            The messages, each saying what was found and what to try.

        Example:
            >>> import numpy as np
            >>> sel = Selection(mask=np.arange(100) < 60, loss=np.linspace(0.1, 0.2, 100)[::-1],
            ...                 targets=np.zeros(100, dtype=int))
            >>> for message in sel.diagnose():
            ...     print(message[:49])
            60 of 100 examples (60.0%) are selected, outside
        """
        if self.num_examples == 0:
            return []
        messages = [
            *_untrained_phase_one(self),
            *_one_class_swallows(self),
            *_selected_share_off(self),
        ]
        separation = self.separation
        if (
            self.params.get("strategy", "kmeans") == "kmeans"
            and separation.weak
            and separation.num_classes_split
        ):
            messages.append(
                f"the slow-learnable clusters are weakly separated by loss (ROC-AUC "
                f"{separation.auc:.3f} < {_WEAK_SEPARATION_AUC}, mean-loss gap "
                f"{separation.loss_gap:.3g}), so the selection is close to random upsampling; "
                "try another separating epoch (see useful_data.separating_epoch) and check "
                "selection.class_summary()"
            )
        return messages

    def __repr__(self) -> str:
        return (
            f"Selection(num_examples={self.num_examples}, "
            f"num_slow_learnable={self.num_slow_learnable}, "
            f"upsample_factor={self.upsample_factor}, "
            f"num_classes={len(np.unique(self.targets))}, params={self.params})"
        )

    # --- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the selection to ``path`` (an ``.npz`` file, no pickle), atomically.

        The file is written to a temporary name in the same folder (``.<name>.<random>.tmp``)
        and renamed over ``path``, so a crash never leaves a half-written selection behind;
        `load` never reads such a file, and a later save to the same path removes those an
        hour old or older (a save killed midway leaves one). Otherwise it behaves like
        ``open(path, "w")``: a new file gets the permissions the process's umask gives any
        new file (``0o666 & ~umask``); an existing file keeps its permissions; a symbolic
        link is followed (the file it points to is replaced, the link kept); a read-only
        file, a FIFO, a socket or a device is refused. String keys are stored as their UTF-8
        bytes and offsets: the file costs their total length and gives each back exactly.

        Args:
            path: Destination file. Its folder must exist.

        Returns:
            The path written.

        Raises:
            FileNotFoundError: if the folder of ``path`` does not exist.
            IsADirectoryError: if ``path`` is a folder.
            PermissionError: if ``path`` is a read-only file.
            ValueError: if ``path`` is a FIFO, socket or device.
        """
        target = check_destination("path", path)
        meta = {
            "format": _FORMAT_NAME,
            "format_version": _FORMAT_VERSION,
            "library_version": __version__,
            "upsample_factor": self.upsample_factor,
            "params": self.params,
            "unsplit": {str(k): v for k, v in self.unsplit.items()},
            "fingerprint": self.fingerprint,
        }
        if self.data_fingerprint is not None:
            meta["data_fingerprint"] = self.data_fingerprint
        meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
        _remove_stale_tmp(target)
        fd, tmp = _create_beside(target)
        arrays: dict[str, Any] = {} if self.keys is None else encode_keys(self.keys)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    mask=self.mask,
                    loss=self.loss,
                    targets=self.targets,
                    meta=np.frombuffer(meta_bytes, dtype=np.uint8),
                    **arrays,
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Selection:
        """Read a selection written by `save`.

        Only the members a selection needs are read (``mask``, ``loss``, ``targets``,
        ``meta``, and the keys of a stream's selection); any other member of the file is
        never decompressed. Before a member is read, the shape and dtype its header
        declares are checked against the metadata (``N`` examples), and the bytes all of
        them declare are bounded (64 MiB, or 64 times the file's size, whichever is more:
        `save` stores them uncompressed), so a small crafted file is refused before it can
        take memory or time.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            IsADirectoryError: if ``path`` is a folder.
            ValueError: if ``path`` is not a regular file (a device, a FIFO), the file is not
                a useful-data selection, is of an unknown format version, is malformed (the
                message names the field), declares more data than it can hold, or is
                corrupt (its labels do not match its fingerprint).
        """
        path = Path(path)
        where = str(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"selection file {where!r} is a folder; pass the file Selection.save wrote"
            )
        if not path.exists():
            raise FileNotFoundError(f"selection file {where!r} does not exist")
        if not path.is_file():
            raise ValueError(
                f"selection file {where!r} is not a regular file (a device, FIFO or socket); "
                "pass the file Selection.save wrote"
            )
        try:
            meta, arrays = _read_members(path)
        except _Malformed as err:
            raise ValueError(f"{where!r} is not a useful-data selection file: {err}") from None
        except Exception as err:  # zipfile / numpy raise many types for a bad file
            raise ValueError(
                f"{where!r} is not a readable useful-data selection file ({err})"
            ) from err
        factor = meta.get("upsample_factor", 2)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(
                f"{where!r} is malformed: upsample_factor should be an integer >= 1, "
                f"but got {factor!r:.100}"
            )
        for name in ("params", "unsplit"):
            if not isinstance(meta.get(name, {}), dict):
                raise ValueError(
                    f"{where!r} is malformed: {name} should be a JSON object, but got "
                    f"{type(meta[name]).__name__}"
                )
        try:
            keys = arrays.get("keys")
            if "keys_utf8" in arrays:
                keys = decode_keys(arrays["keys_utf8"], arrays["keys_offsets"])
            selection = cls(
                mask=arrays["mask"],
                loss=arrays["loss"],
                targets=arrays["targets"],
                upsample_factor=factor,
                params=meta.get("params", {}),
                unsplit=meta.get("unsplit", {}),
                data_fingerprint=meta.get("data_fingerprint"),
                keys=keys,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where!r} is malformed: {err}") from None
        if meta.get("fingerprint") != selection.fingerprint:
            raise ValueError(f"{where!r} is corrupt: its labels do not match its fingerprint")
        return selection


class _Malformed(Exception):
    """A selection file's structure is wrong (the message says how)."""


def _read_members(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and the arrays of a selection file, each member's header checked
    against the metadata before the member is read (see `Selection.load`)."""
    with zipfile.ZipFile(path) as archive:
        info = {}
        for name in (*_REQUIRED, *_MEMBER_KINDS):
            try:
                info[name] = archive.getinfo(f"{name}.npy")
            except KeyError:
                continue
        missing = [m for m in _REQUIRED if m not in info]
        if missing:
            raise _Malformed(f"missing {missing}")
        if info["meta"].file_size > _MAX_META_BYTES:
            raise _Malformed(
                f"its metadata is {info['meta'].file_size} bytes, more than the "
                f"{_MAX_META_BYTES} a selection's can be"
            )
        meta = _parse_meta(_read_member(archive, info["meta"], "meta", "u", None))
        n = meta["fingerprint"]["num_examples"]
        length: dict[str, int | None] = {m: n for m in _MEMBER_KINDS}
        length["keys_utf8"] = None  # the total length of the keys (checked by decode_keys)
        length["keys_offsets"] = n + 1
        arrays = {m: (info[m], _MEMBER_KINDS[m], length[m]) for m in info if m != "meta"}
        for m, (member, kinds, size) in arrays.items():  # every header, before any body
            with archive.open(member) as f:
                _check_member(f, member, m, kinds, size)
        bound = max(_MIN_BYTES_BOUND, _MAX_EXPANSION * path.stat().st_size)
        declared = sum(member.file_size for member, _, _ in arrays.values())
        if declared > bound:
            raise _Malformed(
                f"its arrays declare {declared} bytes, more than the {bound} a selection file "
                f"of {path.stat().st_size} bytes can hold (Selection.save does not compress)"
            )
        read = {
            m: _read_member(archive, i, m, kinds, size) for m, (i, kinds, size) in arrays.items()
        }
    if ("keys_utf8" in read) != ("keys_offsets" in read) or (
        "keys" in read and "keys_utf8" in read
    ):
        raise _Malformed("its keys should be 'keys', or both 'keys_utf8' and 'keys_offsets'")
    return meta, read


def _check_member(
    f: Any, info: zipfile.ZipInfo, name: str, kinds: str, length: int | None
) -> tuple[int, np.dtype[Any]]:
    """Read the ``.npy`` header at the start of the open member ``f`` and check that it
    declares a 1-D array of ``length`` entries (any length if ``None``) of a dtype of one
    of ``kinds`` that fills the member; return its entry count and dtype."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise _Malformed(f"{name} is an .npy of unknown version {version}")
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read_header(f)
    if (
        len(shape) != 1
        or (length is not None and shape[0] != length)
        or dtype.kind not in kinds
        or dtype.hasobject
        or f.tell() + shape[0] * dtype.itemsize != info.file_size
    ):
        expected = "(N,)" if length is None else f"({length},)"
        raise _Malformed(
            f"{name} should be a {expected} array of a kind in {kinds!r} filling its "
            f"member, but its header declares shape {shape} and dtype {dtype} in "
            f"{info.file_size} bytes"
        )
    return int(shape[0]), dtype


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, kinds: str, length: int | None
) -> np.ndarray:
    """The member ``info`` as a read-only array, its header checked first (`_check_member`)."""
    with archive.open(info) as f:
        count, dtype = _check_member(f, info, name, kinds, length)
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise _Malformed(f"{name} ends before its declared size")
    return np.frombuffer(data, dtype=dtype)  # Selection copies what it keeps


def _parse_meta(raw: np.ndarray) -> dict[str, Any]:
    """The checked metadata of a selection file."""
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise _Malformed(f"unreadable metadata ({reason})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise _Malformed("its metadata does not name the format")
    version = meta.get("format_version")
    if version != _FORMAT_VERSION:
        raise _Malformed(
            f"it has selection format_version={version!r}, but this version of "
            f"useful-data ({__version__}) reads format_version={_FORMAT_VERSION}; "
            "recompute the selection or install a matching useful-data"
        )
    fingerprint = meta.get("fingerprint")
    if (
        not isinstance(fingerprint, dict)
        or isinstance(fingerprint.get("num_examples"), bool)
        or not isinstance(fingerprint.get("num_examples"), int)
        or fingerprint["num_examples"] < 0
    ):
        raise _Malformed(f"its fingerprint should hold num_examples, but got {fingerprint!r:.200}")
    return meta


# --- Selection.diagnose's checks, each over the whole selection ------------------------------
def _untrained_phase_one(sel: Selection) -> list[str]:
    """A phase-1 model at chance: accuracy (from the loss) near ``1/C``, or, for ``C > 2``, a
    mean loss near ``ln C`` (near-uniform predictions)."""
    num_classes = sel.params.get("num_classes", len(np.unique(sel.targets)))
    if not isinstance(num_classes, int) or num_classes < 2:
        return []
    chance = 1.0 / num_classes
    accuracy = float(np.mean(sel.loss < np.log(num_classes)))
    mean_loss = float(sel.loss.astype(np.float64).mean())
    if num_classes > 2 and mean_loss >= _UNIFORM_LOSS_SHARE * np.log(num_classes):
        return [
            f"the phase-1 model looks untrained: its mean loss {mean_loss:.4f} is "
            f"close to ln({num_classes}) = {np.log(num_classes):.4f}, what predicting "
            "every class alike gives, so the selection reflects noise, not slow "
            "learning; train phase 1 until the training loss falls (check the "
            "learning rate and the labels) and pick the separating epoch after that"
        ]
    if accuracy <= chance + _CHANCE_MARGIN * (1.0 - chance):
        bound = "" if num_classes == 2 else "at most "
        return [
            f"the phase-1 model looks untrained: it classifies {bound}{accuracy:.1%} "
            f"of the training examples correctly, chance is {chance:.1%} with "
            f"{num_classes} classes, so the selection reflects noise, not slow "
            "learning; train phase 1 until the training accuracy rises (check the "
            "learning rate and the labels) and pick the separating epoch after that"
        ]
    return []


def _one_class_swallows(sel: Selection) -> list[str]:
    """One class holding most of the selection, far beyond its share of the data."""
    n, num_selected = sel.num_examples, sel.num_slow_learnable
    labels, counts = np.unique(sel.targets, return_counts=True)
    if num_selected < _MIN_SELECTED_FOR_SHARE or len(labels) < 2:
        return []
    selected = np.bincount(np.searchsorted(labels, sel.targets[sel.mask]), minlength=len(labels))
    top = int(np.argmax(selected))
    share_selected, share_data = selected[top] / num_selected, counts[top] / n
    if share_selected < max(_SWALLOW_SHARE, share_data + _SWALLOW_MARGIN):
        return []
    return [
        f"class {int(labels[top])} holds {int(selected[top])} of the {num_selected} "
        f"selected examples but {int(counts[top])} of the {n} examples: a phase-1 "
        "model that predicts one class everywhere selects the other's examples; "
        "check that phase 1 learned (training accuracy above chance)"
    ]


def _selected_share_off(sel: Selection) -> list[str]:
    """A selected share outside `_SELECTED_SHARE_RANGE` (the paper selects about 30%)."""
    n, num_selected = sel.num_examples, sel.num_slow_learnable
    low, high = _SELECTED_SHARE_RANGE
    share = num_selected / n
    if low <= share <= high:
        return []
    advice = (
        "train phase 1 for fewer epochs (an earlier separating epoch)"
        if share > high
        else "train phase 1 for more epochs (a later separating epoch), or check "
        "that the model is not already fitting every example"
    )
    return [
        f"{num_selected} of {n} examples ({share:.1%}) are selected, outside "
        f"{low:.0%}-{high:.0%} (the paper selects about 30%); {advice}, see "
        "useful_data.separating_epoch"
    ]


def _create_beside(target: Path) -> tuple[int, Path]:
    """Create a new, empty temporary file next to ``target``; return its descriptor and path.

    Created with mode ``0o666``, so the kernel applies the umask (and a default ACL) as it
    does to any new file; ``target``'s own permissions if it exists (a save over a file
    keeps them, as ``open(target, "w")`` would).
    """
    try:
        keep: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        keep = None
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        if keep is not None and hasattr(os, "fchmod"):  # (POSIX)
            os.fchmod(fd, keep)
        return fd, tmp


def _remove_stale_tmp(target: Path) -> None:
    """Remove the temporary files `_create_beside` made for ``target`` that are at least
    ``_STALE_TMP_SECONDS`` old: left by a save that was killed before its rename."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]{{16}}\.tmp")
    now = time.time()
    try:
        siblings = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in siblings:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and (
                now - entry.stat(follow_symlinks=False).st_mtime >= _STALE_TMP_SECONDS
            ):
                os.unlink(entry.path)
        except OSError:  # removed by another save meanwhile, or not ours to remove
            continue


# 0.x names: ``check_selection_fits(selection, dataset)`` is ``Selection.check_fits``; the
# helpers below are private since 1.0 (``Selection.fingerprint``, ``Selection.separation`` and
# ``Selection.diagnose`` are their public faces).
__getattr__ = moved_names(
    __name__,
    {
        "check_selection_fits": "useful_data.selection:Selection.check_fits",
        "WEAK_SEPARATION_AUC": "useful_data.selection:_WEAK_SEPARATION_AUC",
        "dataset_fingerprint": "useful_data._targets:dataset_fingerprint",
        "loss_auc": "useful_data.selection:_loss_auc",
        "resolve_selection": "useful_data._resolve:resolve_selection",
    },
)

"""Training dynamics (experimental): the slow-learnable examples from a speed, not a snapshot.

USEFUL clusters one snapshot of the model outputs at the separating epoch ``t``, and the
paper's ablation (Appendix D.8, Figure 15b) shows how much rides on ``t``. What the theory
defines is a *speed*: slow-learnable examples are the ones learned late. This module measures
that speed during phase 1, from the outputs your own training loop computes anyway (no extra
pass), or from logits you record yourself, and selects the slowest examples of every class.
It imports the core; nothing in the library imports it, and no integration feeds it.

* `IndexedDataset` wraps any map-style dataset so that every item also carries its index:
  ``(x, y)`` items become ``(x, y, index)``, dict items gain an ``"index"`` key. It works with
  any sampler (shuffled, ``DistributedSampler``) and any number of DataLoader workers, since
  the index travels with the item.
* `TrainingDynamics` is the recorder: call ``update(logits, targets, indices)`` for every
  training batch, in any order, and `end_epoch` after every epoch. It keeps ``O(N)`` running
  statistics, not ``(N, epochs, C)`` outputs: per example the epochs seen, the sums of
  correctness, true-class probability, its square and the loss, forgetting events, the first
  epoch learned and the epoch since which it is learned. Under ``torch.distributed`` every rank
  feeds its own batches and `end_epoch` gathers them (one collective per epoch), so every rank
  holds the same record.
* `select_from_dynamics` picks, per class, the examples that are slow by one of these
  measures and returns the same `Selection` as `find_slow_learnable` (class summary,
  diagnostics, save/load):

  - ``"learned_epoch"``: the epoch since which the example is predicted correctly at every
    epoch (never, or not at the last epoch: one past the last epoch); the "iteration learned"
    of Toneva et al. (2019), and the theory's notion of learning speed.
  - ``"cumulative_accuracy"``: the fraction of epochs at which the example was predicted
    wrongly; Jiang et al. (2021) use the cumulative training accuracy as a cheap proxy of
    their consistency score.
  - ``"forgetting"``: the number of forgetting events (correct at one epoch, wrong at the
    next), never-learned examples counting as the most forgotten (Toneva et al., 2019).
  - ``"confidence"``: one minus the mean probability of the true class across epochs
    (Swayamdipta et al., 2020, dataset cartography; "hard-to-learn" examples have low
    confidence).

  Every measure is a score, higher meaning slower. By default each class is split in two
  by the exact 2-means of its scores (the optimal threshold, no seeds) and the upper cluster
  is selected, as USEFUL selects the higher-loss cluster of its 2-means; ``like=`` instead
  selects as many examples per class as a reference selection, the highest-scoring ones.

An epoch's observation of an example is its last one in that epoch (an example seen twice
in one epoch, e.g. through the padding of ``DistributedSampler``, counts once). The outputs
are the training-mode outputs of the forward pass the loop already runs, before that batch's
update; they differ from an eval pass over the data (augmentation, dropout, BatchNorm batch
statistics), which is the price of recording at no cost.

Measured (docs/benchmarks_accuracy.md, ``benchmarks/bench_dynamics.py``): on the paper's
synthetic distribution and on digits with a planted shortcut, no strategy here selected the
known slow-learnable examples better than the snapshot's k-means at any ``t``, nor beat it in
test accuracy beyond seed noise; ``"confidence"`` came closest. The paper's k-means stays the
default of `find_slow_learnable`.

Conventions: ``N`` examples, ``C`` classes (logit columns), ``E`` recorded epochs.

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024 (Section 4; Appendix
D.8). Measures: Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural
Network Learning", ICLR 2019; Jiang et al., "Characterizing Structural Regularities of Labeled
Data in Overparameterized Models", ICML 2021; Swayamdipta et al., "Dataset Cartography", EMNLP
2020.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import Dataset

from useful_data._checks import as_numpy, check_upsample_factor, memory_bytes
from useful_data._comm import all_gather_equal, comm_device, resolve_distributed
from useful_data._resolve import resolve_selection
from useful_data._targets import dataset_targets
from useful_data.selection import Selection, SelectionLike

__all__ = ["IndexedDataset", "TrainingDynamics", "select_from_dynamics"]

# Names accepted by ``select_from_dynamics(..., strategy=...)``.
_STRATEGIES = ("learned_epoch", "cumulative_accuracy", "forgetting", "confidence")

DynamicsStrategy = Literal["learned_epoch", "cumulative_accuracy", "forgetting", "confidence"]

# `Selection.unsplit` reason of a class whose examples all have the same score.
_EQUAL_SCORES = "all examples have the same score"

# the per-example columns of one epoch's observations: index, label, correct, loss
_COLUMNS = 4
#: Bytes of statistics kept per example (`TrainingDynamics._init_state`'s arrays).
_BYTES_PER_EXAMPLE = 53
# the O(N) arrays of the record, as named in state_dict (attributes ``_<name>``)
_STATE_FIELDS = (
    "targets", "seen", "correct", "conf", "conf_sq", "loss", "forgetting",
    "first_learned", "learned", "last_correct",
)  # fmt: skip


class IndexedDataset(Dataset[Any]):
    """A map-style dataset whose items also carry their index, for `TrainingDynamics`.

    The wrapped dataset is untouched. A tuple or list item ``(x, y)`` becomes
    ``(x, y, index)``; a dict item gains the key ``key`` (default ``"index"``); any other
    item ``x`` becomes ``(x, index)``. The default collate function turns the indices of a
    batch into an int64 tensor. Because the index travels with the item, it is right under
    any sampler (shuffled, `UpsampleSampler`, ``DistributedSampler``) and with any number of
    workers. ``targets`` is read from the wrapped dataset (see `find_slow_learnable`).

    Args:
        dataset: The map-style dataset to wrap.
        key: The key added to dict items.

    Raises:
        ValueError: if a dict item already has ``key``.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = IndexedDataset(TensorDataset(torch.zeros(5, 2), torch.arange(5) % 2))
        >>> x, y, index = next(iter(DataLoader(data, batch_size=2, shuffle=True)))
        >>> bool((y == index % 2).all()), len(data)
        (True, 5)
    """

    def __init__(self, dataset: Dataset[Any], *, key: str = "index") -> None:
        self.dataset = dataset
        self.key = key

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def targets(self) -> np.ndarray | None:
        """The wrapped dataset's labels, where it exposes them without loading items."""
        return dataset_targets(self.dataset)

    def __getitem__(self, index: int) -> Any:
        index = operator.index(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} examples")
        index %= n  # a negative index is reported as the example's own index
        item = self.dataset[index]
        if isinstance(item, tuple | list):
            return (*item, index)
        if isinstance(item, Mapping):
            if self.key in item:
                raise ValueError(
                    f"the dataset's items already have the key {self.key!r}; pass another "
                    "key, e.g. IndexedDataset(dataset, key='example_index')"
                )
            return {**item, self.key: index}
        return (item, index)


class TrainingDynamics:
    """Per-example learning statistics recorded during phase 1, in ``O(N)`` memory.

    Feed it every training batch with `update` and call `end_epoch` after every epoch; then
    read the statistics below, or pass it to `select_from_dynamics`. Get the batch indices
    with `IndexedDataset`.

    Args:
        num_examples: ``N``, the size of the training set (indices lie in ``[0, N)``).
        distributed: Under ``torch.distributed``, gather every rank's observations at
            `end_epoch`, so that every rank holds the record of the whole dataset. ``None``
            (default): whenever a process group with more than one rank is initialised (then
            `end_epoch` must be called on every rank); ``False``: record this rank's
            batches only.

    Raises:
        TypeError: if ``num_examples`` is not an integer.
        ValueError: if ``num_examples < 1``, or its statistics would not fit in memory.

    Example:
        >>> import torch
        >>> dynamics = TrainingDynamics(4)
        >>> targets = torch.tensor([0, 1, 0, 1])
        >>> order = torch.tensor([2, 0, 3, 1])  # batches may come in any order
        >>> for epoch in range(3):  # examples 0 and 1 learned at epoch 0, 2 at epoch 2, 3 never
        ...     learned = torch.tensor([True, True, epoch >= 2, False])
        ...     logits = torch.zeros(4, 2)
        ...     logits[torch.arange(4), targets] = torch.where(learned, 2.0, -2.0)
        ...     dynamics.update(logits[order], targets[order], order)
        ...     dynamics.end_epoch()
        >>> dynamics.learned_epoch.tolist(), dynamics.cumulative_accuracy.round(2).tolist()
        ([0, 0, 2, -1], [1.0, 1.0, 0.33, 0.0])
    """

    def __init__(self, num_examples: int, *, distributed: bool | None = None) -> None:
        if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
            raise TypeError(
                f"num_examples should be an integer >= 1, but got num_examples={num_examples!r} "
                f"of type {type(num_examples).__name__}"
            )
        if num_examples < 1:
            raise ValueError(
                f"num_examples should be an integer >= 1, but got num_examples={num_examples}"
            )
        if _BYTES_PER_EXAMPLE * num_examples > memory_bytes():
            raise ValueError(
                f"num_examples={num_examples} needs {_BYTES_PER_EXAMPLE} bytes of statistics "
                f"per example ({_BYTES_PER_EXAMPLE * num_examples / 2**30:.3g} GiB), more "
                f"than this machine's memory ({memory_bytes() / 2**30:.3g} GiB); pass the "
                "training set's length"
            )
        if distributed is not None and not isinstance(distributed, bool):
            raise TypeError(
                f"distributed should be None, True or False, but got distributed={distributed!r}"
            )
        self.num_examples = int(num_examples)
        self.distributed = distributed
        self.num_classes: int | None = None
        # per batch of the open epoch: the indices where they came (usually the CPU) and
        # (label, correct, loss) on the outputs' device; no copy, no synchronisation
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._init_state()

    def _init_state(self) -> None:
        n = self.num_examples
        self.num_epochs = 0
        self._targets = np.full(n, -1, dtype=np.int64)
        self._seen = np.zeros(n, dtype=np.int32)
        self._correct = np.zeros(n, dtype=np.int32)
        self._conf = np.zeros(n, dtype=np.float64)
        self._conf_sq = np.zeros(n, dtype=np.float64)
        self._loss = np.zeros(n, dtype=np.float64)
        self._forgetting = np.zeros(n, dtype=np.int32)
        self._first_learned = np.full(n, -1, dtype=np.int32)
        self._learned = np.full(n, -1, dtype=np.int32)
        self._last_correct = np.full(n, -1, dtype=np.int8)  # -1: never seen

    # --- recording -----------------------------------------------------------------------
    @torch.no_grad()
    def update(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor | np.ndarray | list[int],
    ) -> None:
        """Record one batch: its ``(B, C)`` outputs, ``(B,)`` labels and dataset indices.

        Cheap: three per-example numbers are computed on the outputs' device and kept there,
        and the indices where they are, until `end_epoch` (no copy between devices and no
        synchronisation per batch). Call it with the outputs of
        the training forward pass (they are detached here).

        Args:
            logits: ``(B, C)`` model outputs of the batch.
            targets: ``(B,)`` integer labels.
            indices: ``(B,)`` dataset indices of the batch's examples (from `IndexedDataset`).

        Raises:
            ValueError: if the shapes do not match, or ``C`` differs from earlier batches.
        """
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(f"logits should be a (B, C) tensor with C >= 2, but got {shape}")
        batch, num_classes = logits.shape
        device = logits.device
        targets = torch.as_tensor(targets, device=device)
        indices = torch.as_tensor(indices)
        for name, value in (("targets", targets), ("indices", indices)):
            if value.shape != (batch,):
                raise ValueError(
                    f"{name} should have shape ({batch},) to match logits of shape "
                    f"{tuple(logits.shape)}, but got shape {tuple(value.shape)}"
                )
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                raise ValueError(f"{name} should hold integers, but got dtype {value.dtype}")
        if self.num_classes is None:
            self.num_classes = int(num_classes)
        elif num_classes != self.num_classes:
            raise ValueError(
                f"logits should have {self.num_classes} columns like the earlier batches, "
                f"but got shape {tuple(logits.shape)}"
            )
        targets = targets.long()
        log_probs = F.log_softmax(logits.detach().float(), dim=1)
        # an out-of-range label must not index out of bounds here; end_epoch reports it
        safe = targets.clamp(0, num_classes - 1)
        loss = -log_probs.gather(1, safe[:, None])[:, 0]
        correct = logits.detach().argmax(dim=1) == targets
        stats = torch.stack([targets.double(), correct.double(), loss.double()], dim=1)
        self._pending.append((indices.detach().double(), stats))

    def end_epoch(self) -> None:
        """Close the epoch: fold its observations into the running statistics.

        Under ``torch.distributed`` (see ``distributed``) the observations of every rank are
        all-gathered first, so every rank gets the same record; call it on every rank.

        Raises:
            ValueError: for an index outside ``[0, N)``, a label outside ``[0, C)``, a
                non-finite output, or an example whose label changed between batches (on
                every rank alike under ``torch.distributed``).
        """
        local = torch.zeros((0, _COLUMNS), dtype=torch.float64)
        if self._pending:
            where = self._pending[0][0].device
            index = torch.cat([i.to(where) for i, _ in self._pending]).cpu()
            stats = torch.cat([s for _, s in self._pending]).cpu()  # one copy per epoch
            local = torch.cat([index[:, None], stats], dim=1)
        self._pending = []
        if resolve_distributed(self.distributed):
            local = _gather_rows(local)
        self._fold(local.cpu().numpy())
        self.num_epochs += 1

    def _fold(self, rows: np.ndarray) -> None:
        epoch = self.num_epochs
        if rows.shape[0] == 0:
            return
        raw_index, raw_targets = rows[:, 0], rows[:, 1]
        bad = (raw_index < 0) | (raw_index >= self.num_examples)
        if bad.any():
            raise ValueError(
                f"indices should lie in [0, {self.num_examples}) for a dataset of "
                f"{self.num_examples} examples, but got index {int(raw_index[bad][0])}; pass "
                "dataset indices (IndexedDataset), not positions in the batch"
            )
        num_classes = self.num_classes or 0  # rows exist, so update has set it
        bad = (raw_targets < 0) | (raw_targets >= num_classes)
        if bad.any():
            raise ValueError(
                f"targets should be class indices in [0, {num_classes}), but got label "
                f"{int(raw_targets[bad][0])} (example {int(raw_index[bad][0])})"
            )
        if not np.isfinite(rows[:, 3]).all():
            first = int(raw_index[~np.isfinite(rows[:, 3])][0])
            raise ValueError(
                f"logits should be finite, but the outputs of example {first} in epoch {epoch} "
                "contain NaN or inf; check the training for divergence"
            )
        # an example seen twice in the epoch counts once, with its last observation
        index = raw_index.astype(np.int64)
        _, first_from_end = np.unique(index[::-1], return_index=True)
        rows = rows[len(index) - 1 - first_from_end]
        index, targets = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
        correct, loss = rows[:, 2] > 0.5, rows[:, 3]
        known = self._targets[index]
        changed = (known >= 0) & (known != targets)
        if changed.any():
            i = int(index[changed][0])
            raise ValueError(
                f"example {i} was recorded with label {int(self._targets[i])} before and "
                f"{int(targets[changed][0])} now; are the indices dataset indices, the same "
                "dataset in the same order every epoch?"
            )
        self._targets[index] = targets
        conf = np.exp(-loss)
        self._seen[index] += 1
        self._correct[index] += correct
        self._conf[index] += conf
        self._conf_sq[index] += conf * conf
        self._loss[index] += loss
        before = self._last_correct[index]
        self._forgetting[index] += (before == 1) & ~correct
        learned_first = self._first_learned[index]
        self._first_learned[index] = np.where((learned_first < 0) & correct, epoch, learned_first)
        # learned since: kept while correct, restarted after a wrong epoch, -1 while wrong
        since = np.where(before == 1, self._learned[index], epoch)
        self._learned[index] = np.where(correct, since, -1)
        self._last_correct[index] = correct

    # --- statistics ------------------------------------------------------------------------
    @property
    def targets(self) -> np.ndarray:
        """``(N,)`` int64 labels recorded for every example; -1 for an example never seen."""
        return self._targets.copy()

    @property
    def epochs_seen(self) -> np.ndarray:
        """``(N,)`` int32: the number of epochs in which each example was recorded."""
        return self._seen.copy()

    def _mean(self, total: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / self._seen  # NaN for an example never seen

    @property
    def cumulative_accuracy(self) -> np.ndarray:
        """``(N,)`` float64: the fraction of its epochs at which an example was predicted
        correctly (Jiang et al., 2021); NaN for an example never seen."""
        return self._mean(self._correct.astype(np.float64))

    @property
    def mean_confidence(self) -> np.ndarray:
        """``(N,)`` float64: the mean softmax probability of the true class across epochs
        (dataset cartography's confidence); NaN for an example never seen."""
        return self._mean(self._conf)

    @property
    def confidence_variability(self) -> np.ndarray:
        """``(N,)`` float64: the standard deviation across epochs of the true-class
        probability (population std, dataset cartography's variability)."""
        mean = self.mean_confidence
        return np.sqrt(np.maximum(self._mean(self._conf_sq) - mean * mean, 0.0))

    @property
    def mean_loss(self) -> np.ndarray:
        """``(N,)`` float64: the mean cross-entropy across epochs (the area under an
        example's loss curve divided by its epochs); NaN for an example never seen."""
        return self._mean(self._loss)

    @property
    def forgetting_events(self) -> np.ndarray:
        """``(N,)`` int32: how often an example went from correct at one of its epochs to
        wrong at the next (Toneva et al., 2019)."""
        return self._forgetting.copy()

    @property
    def first_learned_epoch(self) -> np.ndarray:
        """``(N,)`` int32: the first epoch (0-based) at which an example was correct; -1 if
        never."""
        return self._first_learned.copy()

    @property
    def learned_epoch(self) -> np.ndarray:
        """``(N,)`` int32: the epoch since which an example has been correct at every epoch
        it was seen (0-based); -1 if it was wrong at its last epoch or never seen."""
        return self._learned.copy()

    def scores(self, strategy: DynamicsStrategy) -> np.ndarray:
        """``(N,)`` float64 slowness scores of a strategy, higher meaning slower.

        ``"learned_epoch"``: `learned_epoch`, with ``E`` (one past the last epoch) for the
        examples not learned at their last epoch. ``"cumulative_accuracy"``: one minus
        `cumulative_accuracy`. ``"forgetting"``: `forgetting_events`, with ``E`` (more than
        any count) for the examples never learned. ``"confidence"``: one minus
        `mean_confidence`. NaN for an example never seen.

        Raises:
            ValueError: for an unknown strategy.
        """
        _check_strategy(strategy)
        epochs = float(self.num_epochs)
        if strategy == "learned_epoch":
            score = np.where(self._learned >= 0, self._learned, epochs).astype(np.float64)
        elif strategy == "cumulative_accuracy":
            score = 1.0 - self.cumulative_accuracy
        elif strategy == "forgetting":
            score = np.where(self._first_learned >= 0, self._forgetting, epochs)
            score = score.astype(np.float64)
        else:
            score = 1.0 - self.mean_confidence
        score[self._seen == 0] = np.nan
        return score

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The record as a dict of tensors and numbers, for ``torch.save`` in a checkpoint.

        Observations of an epoch not yet closed by `end_epoch` are not included.
        """
        state: dict[str, Any] = {
            name: torch.from_numpy(getattr(self, f"_{name}").copy()) for name in _STATE_FIELDS
        }
        state.update(
            num_examples=self.num_examples,
            num_epochs=self.num_epochs,
            num_classes=self.num_classes,
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a record written by `state_dict` (the same ``N``).

        The record is checked before anything is replaced: a state that `update` and
        `end_epoch` could not have produced is refused, and the recorder is left as it was.

        Raises:
            TypeError: if ``state`` is not a mapping, or a count is not an integer.
            ValueError: if ``state`` was recorded for another number of examples, misses a
                field, or holds a value out of its range (a negative ``num_epochs``, an
                example seen in more epochs than were recorded, a label outside
                ``[0, num_classes)``, a non-finite loss, ...).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state should be a mapping from state_dict(), but got {type(state)}")
        if state.get("num_examples") != self.num_examples:
            raise ValueError(
                f"state was recorded for num_examples={state.get('num_examples')!r}, but this "
                f"recorder has num_examples={self.num_examples}"
            )
        epochs = _state_count("num_epochs", state.get("num_epochs"), low=0)
        classes = state.get("num_classes")
        if classes is not None:
            classes = _state_count("num_classes", classes, low=2)
        fresh = TrainingDynamics(self.num_examples)
        fields: dict[str, np.ndarray] = {}
        for name in _STATE_FIELDS:
            if name not in state:
                raise ValueError(f"state is missing the field {name!r}; was it a state_dict()?")
            current = getattr(fresh, f"_{name}")
            raw = as_numpy(f"state[{name!r}]", state[name])
            if raw.shape != current.shape:
                raise ValueError(
                    f"state[{name!r}] should have shape {current.shape}, but got {raw.shape}"
                )
            if raw.dtype.kind not in "biuf" or not np.isfinite(raw).all():
                raise ValueError(f"state[{name!r}] should hold finite numbers, but got {raw.dtype}")
            value = raw.astype(current.dtype)
            if current.dtype.kind == "i" and not np.array_equal(value, raw):
                raise ValueError(f"state[{name!r}] should hold integers in range for {value.dtype}")
            fields[name] = value
        _check_record(fields, epochs, classes)
        for name, value in fields.items():
            setattr(self, f"_{name}", value.copy())
        self.num_epochs = epochs
        self.num_classes = classes
        self._pending = []

    def __repr__(self) -> str:
        seen = int((self._seen > 0).sum())
        return (
            f"TrainingDynamics(num_examples={self.num_examples}, num_epochs={self.num_epochs}, "
            f"examples_seen={seen})"
        )


def _state_count(name: str, value: Any, *, low: int) -> int:
    """A count of a loaded state: an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"state[{name!r}] should be an integer >= {low}, but got {value!r}")
    if value < low:
        raise ValueError(f"state[{name!r}] should be an integer >= {low}, but got {value}")
    return int(value)


def _check_record(fields: Mapping[str, np.ndarray], epochs: int, classes: int | None) -> None:
    """Refuse per-example statistics that no sequence of epochs could have produced."""
    seen = fields["seen"]
    rules = {
        "seen": (seen >= 0) & (seen <= epochs),
        "correct": (fields["correct"] >= 0) & (fields["correct"] <= seen),
        "conf": (fields["conf"] >= 0) & (fields["conf"] <= seen),
        "conf_sq": (fields["conf_sq"] >= 0) & (fields["conf_sq"] <= seen),
        "loss": fields["loss"] >= 0,
        "forgetting": (fields["forgetting"] >= 0) & (fields["forgetting"] <= seen),
        "first_learned": (fields["first_learned"] >= -1) & (fields["first_learned"] < epochs),
        "learned": (fields["learned"] >= -1) & (fields["learned"] < epochs),
        "last_correct": np.isin(fields["last_correct"], (-1, 0, 1)),
        "targets": (fields["targets"] >= -1)
        & ((fields["targets"] < (classes or 0)) | (fields["targets"] == -1)),
    }
    rules["targets"] &= (fields["targets"] >= 0) == (seen > 0)  # a label once seen, only then
    for name, ok in rules.items():
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"state[{name!r}] holds a value no recording gives: example {i} has "
                f"{name}={fields[name][i]} with seen={seen[i]}, num_epochs={epochs} and "
                f"num_classes={classes}; was the state written by state_dict()?"
            )


def _gather_rows(local: torch.Tensor) -> torch.Tensor:
    """All-gather every rank's ``(n_r, 4)`` rows, rank-major, padded to the longest."""
    device = comm_device()
    world = dist.get_world_size()
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
    sizes = torch.empty(world, dtype=torch.int64, device=device)
    all_gather_equal(sizes, size, None)
    counts = sizes.cpu().tolist()
    longest = max(counts)
    padded = torch.zeros((longest, _COLUMNS), dtype=torch.float64, device=device)
    padded[: local.shape[0]].copy_(local)
    gathered = torch.empty((world * longest, _COLUMNS), dtype=torch.float64, device=device)
    all_gather_equal(gathered, padded, None)
    parts = gathered.view(world, longest, _COLUMNS)
    return torch.cat([parts[r, : counts[r]] for r in range(world)]).cpu()


def _check_strategy(strategy: str) -> None:
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy should be one of {_STRATEGIES}, but got strategy={strategy!r}")


def _two_means_1d(values: np.ndarray) -> np.ndarray:
    """The exact 2-means split of 1-D values: ``True`` for the upper cluster.

    In one dimension the optimal 2-means partition is a threshold between two sorted values;
    every threshold is tried (``O(n log n)``) and the one with the smallest within-cluster
    sum of squares kept (the lowest on ties). Deterministic, no seeds.

    Args:
        values: ``(n,)`` finite values with at least two distinct ones.

    Returns:
        ``(n,)`` bool mask of the upper cluster.

    Raises:
        ValueError: if ``values`` has fewer than two distinct values.

    Example:
        >>> _two_means_1d(np.array([0.0, 9.0, 1.0, 10.0, 0.5])).tolist()
        [False, True, False, True, False]
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size < 2 or values.min() == values.max():
        raise ValueError(
            f"values should be 1-D with at least two distinct values, but got shape "
            f"{values.shape} with {np.unique(values).size} distinct value(s)"
        )
    ordered = np.sort(values)
    n = ordered.size
    left = np.arange(1, n, dtype=np.float64)  # size of the lower cluster for a cut after k
    prefix = np.cumsum(ordered)[:-1]
    mean_low, mean_high = prefix / left, (ordered.sum() - prefix) / (n - left)
    # minimising the within-cluster sum of squares = maximising the between-cluster one
    between = left * (n - left) / n * (mean_high - mean_low) ** 2
    between[ordered[1:] == ordered[:-1]] = -np.inf  # cut only between distinct values
    cut = int(np.argmax(between))
    return values > ordered[cut]


def _split_classes(
    score: np.ndarray, targets: np.ndarray, reference: np.ndarray | None
) -> tuple[np.ndarray, dict[int, str]]:
    """Per class, the slow examples by ``score``: the upper 2-means cluster, or as many as
    ``reference`` selects in the class (the highest scores, the lower index first on ties).
    Returns the ``(N,)`` mask and the classes left unsplit, with why."""
    mask = np.zeros(score.shape[0], dtype=bool)
    unsplit: dict[int, str] = {}
    order = np.argsort(targets, kind="stable")
    labels, starts = np.unique(targets[order], return_index=True)
    for label, members in zip(labels.tolist(), np.split(order, starts[1:]), strict=True):
        values = score[members]
        if reference is not None:
            count = int(reference[members].sum())
            slowest = np.argsort(-values, kind="stable")[:count]  # members are sorted
            mask[members[slowest]] = True
        elif members.size < 2:
            unsplit[label] = "single example"
        elif values.min() == values.max():
            unsplit[label] = _EQUAL_SCORES
        else:
            mask[members[_two_means_1d(values)]] = True
    return mask, unsplit


def select_from_dynamics(
    dynamics: TrainingDynamics,
    *,
    strategy: DynamicsStrategy = "learned_epoch",
    like: SelectionLike | None = None,
    upsample_factor: int = 2,
) -> Selection:
    """Select the slow-learnable examples of every class from recorded training dynamics.

    For every class, the examples' slowness scores (`TrainingDynamics.scores`) are split in
    two by their exact 2-means (`_two_means_1d`) and the upper cluster is selected: the
    examples learned late, by the chosen measure. A class with one example, or whose scores
    are all equal, is not split and is reported in `Selection.unsplit` (with a warning for
    equal scores). With ``like``, every class instead selects as many examples as ``like``
    does in it, the highest-scoring ones (ties: the lower index first), which compares
    *which* examples are selected at an equal count.

    The result is a `Selection` like `find_slow_learnable`'s; its ``loss`` is the mean
    training loss across the recorded epochs (`TrainingDynamics.mean_loss`), which its
    diagnostics (`Selection.separation`, `Selection.class_summary`) use. Every rank of a
    distributed run holds the same record, so every rank returns the same selection.

    Args:
        dynamics: The record of phase 1; every example must have been seen at least once.
        strategy: ``"learned_epoch"`` (default), ``"cumulative_accuracy"``,
            ``"forgetting"`` or ``"confidence"``; see `useful_data.experimental`.
        like: A `Selection`, a path to a saved one, or an ``(N,)`` bool mask whose per-class
            counts are matched (e.g. USEFUL's k-means selection), instead of the 2-means.
        upsample_factor: Stored on the result as the factor to upsample with (paper: 2).

    Returns:
        The `Selection`, with ``params["strategy"]`` the strategy,
        ``params["source"] == "dynamics"``, the number of epochs and how counts were set.

    Raises:
        TypeError: if ``dynamics`` is not a `TrainingDynamics`.
        ValueError: for an unknown strategy, an empty record, an example never seen, or
            ``like`` of another size.

    Example:
        >>> import torch
        >>> dynamics = TrainingDynamics(6)
        >>> targets = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> for epoch in range(4):  # examples 2 and 5 are learned at epoch 3, the rest at 0
        ...     learned = torch.tensor([True, True, epoch >= 3] * 2)
        ...     logits = torch.zeros(6, 2)
        ...     logits[torch.arange(6), targets] = torch.where(learned, 3.0, -3.0)
        ...     dynamics.update(logits, targets, torch.arange(6))
        ...     dynamics.end_epoch()
        >>> select_from_dynamics(dynamics).indices.tolist()
        [2, 5]
    """
    if not isinstance(dynamics, TrainingDynamics):
        raise TypeError(
            f"dynamics should be a TrainingDynamics, but got {type(dynamics).__name__}; "
            "record one during phase 1 (see useful_data.experimental)"
        )
    _check_strategy(strategy)
    upsample_factor = check_upsample_factor(upsample_factor)
    if dynamics.num_epochs == 0:
        raise ValueError(
            "dynamics holds no epoch yet: call dynamics.end_epoch() after every epoch of "
            "phase 1 before selecting"
        )
    unseen = np.flatnonzero(dynamics.epochs_seen == 0)
    if unseen.size:
        raise ValueError(
            f"every example should be recorded at least once, but {unseen.size} of "
            f"{dynamics.num_examples} never were (first: index {int(unseen[0])}); feed every "
            "training batch to dynamics.update, on every rank"
        )
    targets = dynamics.targets
    score = dynamics.scores(strategy)
    reference = None
    if like is not None:
        reference, _ = resolve_selection(like, dynamics.num_examples, name="like")
    mask, unsplit = _split_classes(score, targets, reference)
    equal = [c for c, why in unsplit.items() if why == _EQUAL_SCORES]
    if equal:
        warnings.warn(
            f"{len(equal)} class(es) were not split because all their examples have the same "
            f"{strategy} score (labels {equal[:10]}{'...' if len(equal) > 10 else ''}); record "
            "more epochs, or try another strategy",
            RuntimeWarning,
            stacklevel=2,
        )
    params: dict[str, Any] = {
        "strategy": strategy,
        "source": "dynamics",
        "num_epochs": dynamics.num_epochs,
        "count": "2-means" if reference is None else "like",
    }
    if dynamics.num_classes is not None:
        params["num_classes"] = dynamics.num_classes
    return Selection(
        mask=mask,
        loss=dynamics.mean_loss.astype(np.float32),
        targets=targets,
        upsample_factor=upsample_factor,
        params=params,
        unsplit=unsplit,
    )

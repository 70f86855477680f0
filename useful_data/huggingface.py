"""USEFUL with the Hugging Face ``transformers.Trainer``: phase 1, the selection, phase 2.

USEFUL trains from the initial weights ``W0`` for ``t`` early epochs (phase 1), clusters the
model's outputs on the training set to find the slow-learnable examples (the selection),
then trains from ``W0`` again, with a fresh optimizer and learning-rate schedule,
for the whole schedule on the training set with those examples twice (phase 2). With the
``Trainer`` that is:

1. ``Trainer(..., callbacks=[SeparatingEpochCallback(t)])``: stops training after epoch
   ``t`` of the full schedule (``t`` fixed, or found by a
   `useful_data.separating_epoch.SeparatingEpoch` from the training loss the Trainer logs).
2. `select_with_trainer`: ``trainer.predict`` on an eval view of the training set, then
   `useful_data.find_slow_learnable` on the logits; under ``torchrun`` every rank gets the
   same `useful_data.Selection`.
3. `USEFULTrainer`: a ``Trainer`` whose training sampler is a
   `useful_data.UpsampleSampler` over the original training set. It saves the selection into
   every checkpoint folder and, on ``train(resume_from_checkpoint=...)``, checks it (or
   reads it, when built without one).

The Trainer hands its training ``DataLoader`` to ``accelerator.prepare``, whose
``BatchSamplerShard`` deals the sampler's batches out to the processes, so the sampler of
`USEFULTrainer` is built with ``num_replicas=1, rank=0``: it yields the whole upsampled
multiset, in the same order on every rank (seeded by ``args.data_seed`` or ``args.seed``
plus the epoch), and Accelerate does the sharding, once. A plain ``Trainer`` on
`useful_data.USEFULDataset` is the other door to the same multiset.

Beyond the paper, `DynamicsTrainer` is a phase-1 ``Trainer`` that also records a
`useful_data.dynamics.TrainingDynamics` from the logits of every training step, for
`useful_data.dynamics.select_from_dynamics` instead of step 2. It knows each batch's dataset
indices without touching your data: the items of its training loader carry their index
(`useful_data.dynamics.IndexedDataset`) and its collator takes it out before yours runs, so
the index stays right under Accelerate's sharding, workers and any sampler.

Needs the ``huggingface`` extra: ``pip install 'useful-data[huggingface]'``.

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024, Algorithm 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

try:
    import accelerate  # noqa: F401  (the Trainer runs on it; its absence fails here, not later)
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
    from transformers.training_args import TrainingArguments
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "useful_data.huggingface needs transformers and accelerate: "
        "pip install 'useful-data[huggingface]'"
    ) from err

from useful_data._checks import check_positive_int
from useful_data._targets import dataset_targets
from useful_data.dynamics import IndexedDataset, TrainingDynamics
from useful_data.sampler import UpsampleSampler
from useful_data.selection import Selection
from useful_data.selection import _dataset_fingerprint as dataset_fingerprint
from useful_data.separating_epoch import SeparatingEpoch
from useful_data.slow_learnable import find_slow_learnable

__all__ = [
    "SELECTION_FILE",
    "DynamicsTrainer",
    "SeparatingEpochCallback",
    "USEFULTrainer",
    "select_with_trainer",
]

#: Name of the selection file `USEFULTrainer` writes into every checkpoint folder.
SELECTION_FILE = "useful_selection.npz"
#: Dataset columns read as class labels (``datasets.Dataset``), in the order tried.
_LABEL_COLUMNS = ("labels", "label")
#: The batch key under which `DynamicsTrainer` carries the indices (never seen by the model).
_INDEX_KEY = "useful_data_index"


def _check_map_style(name: str, dataset: Any) -> None:
    """A map-style dataset (``__len__`` and ``__getitem__``) or a clear ``TypeError``."""
    if isinstance(dataset, IterableDataset) or not (
        hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    ):
        raise TypeError(
            f"{name} should be a map-style dataset (with __len__ and __getitem__, e.g. a "
            f"torch Dataset or a datasets.Dataset), but got {type(dataset).__name__}: USEFUL "
            "indexes every example, which an iterable (streaming) dataset cannot do; "
            "materialise it first (datasets: load it without streaming=True)"
        )


def _check_train_dataset_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A map-style ``train_dataset`` among a ``Trainer``'s arguments, checked before the
    Trainer's own checks (which ask an iterable dataset for ``max_steps``)."""
    # Trainer's signature is (model, args, data_collator, train_dataset, ...)
    train_dataset = kwargs.get("train_dataset", args[3] if len(args) > 3 else None)
    if train_dataset is not None:
        _check_map_style("train_dataset", train_dataset)


def _labels(dataset: Any) -> np.ndarray | None:
    """The labels of a dataset without loading its inputs: torchvision's ``.targets`` /
    ``.labels`` (see `useful_data._targets.dataset_targets`) or a ``datasets.Dataset``'s
    ``labels``/``label`` column; ``None`` when it exposes none."""
    labels = dataset_targets(dataset)
    if labels is not None:
        return labels
    columns = getattr(dataset, "column_names", None)
    for column in _LABEL_COLUMNS:
        if isinstance(columns, list) and column in columns:
            values = np.asarray(dataset[column])
            if values.ndim == 1 and np.issubdtype(values.dtype, np.integer):
                return values.astype(np.int64)
    return None


def _as_selection(selection: Selection | str | os.PathLike[str]) -> Selection:
    if isinstance(selection, Selection):
        return selection
    if isinstance(selection, str | os.PathLike):
        return Selection.load(selection)
    raise TypeError(
        "selection should be a Selection (what find_slow_learnable or select_with_trainer "
        f"returns) or the path of a saved one, but got {type(selection).__name__}; the "
        "trainer saves it into its checkpoints, so a bare mask or index list is not enough "
        "(for those, use USEFULDataset(train_set, mask) with a plain Trainer)"
    )


def _check_fits(selection: Selection, dataset: Any, what: str) -> None:
    """The selection was computed on ``dataset``: same length and, where the dataset exposes
    its labels, the same labels in the same order."""
    if selection.num_examples != len(dataset):
        raise ValueError(
            f"selection was computed on {selection.num_examples} examples, but {what} has "
            f"{len(dataset)}; was it computed on another dataset or split?"
        )
    labels = _labels(dataset)
    if labels is not None and dataset_fingerprint(labels) != selection.fingerprint:
        raise ValueError(
            f"selection does not match {what}: same length but different labels (fingerprint "
            "mismatch); it was computed on another dataset, split or order"
        )


def select_with_trainer(trainer: Trainer, eval_dataset: Dataset[Any], **kwargs: Any) -> Selection:
    """The slow-learnable examples of the training set, from the model ``trainer`` holds.

    Runs ``trainer.predict(eval_dataset)`` (the Trainer's collator, batch size, precision and
    devices; under ``torchrun`` each rank predicts its share and the logits are gathered on
    every rank, in dataset order), then `useful_data.find_slow_learnable` on the logits and
    the labels. Call it on every rank: each class is clustered on one rank and every rank
    returns the same `useful_data.Selection`.

    Args:
        trainer: The phase-1 ``Trainer`` after ``train()`` stopped at the separating epoch.
        eval_dataset: The training set, in its original order, seen with eval transforms (no
            augmentation); for text that is usually the tokenized training set itself. Its
            items must carry the labels (``label_names`` of the Trainer's arguments).
        **kwargs: Passed on to `useful_data.find_slow_learnable` (``seed``, ``backend``,
            ``strategy``, ``upsample_factor``, ``n_init``, ``features``, ``progress``...).

    Returns:
        The `useful_data.Selection` (save it with
        `useful_data.distributed.save_on_rank0` if you want it on disk).

    Raises:
        TypeError: for an iterable dataset, or predictions without labels.
        ValueError: if the Trainer predicts a different number of examples than the dataset
            holds (``dataloader_drop_last=True`` drops some).
    """
    _check_map_style("eval_dataset", eval_dataset)
    if not isinstance(trainer, Trainer):
        raise TypeError(
            f"trainer should be a transformers.Trainer, but got {type(trainer).__name__}"
        )
    for name in ("model", "dataset", "logits", "targets", "eval_dataset"):
        if name in kwargs:
            raise TypeError(
                f"select_with_trainer computes the outputs with trainer.predict, so it takes no "
                f"{name}= (got one); call useful_data.find_slow_learnable directly to pass it"
            )
    prediction = trainer.predict(eval_dataset)
    logits = prediction.predictions
    if isinstance(logits, tuple | list):  # (logits, hidden states, ...): logits come first
        logits = logits[0]
    if prediction.label_ids is None:
        raise TypeError(
            "trainer.predict returned no labels: the items of eval_dataset should carry the "
            f"class labels under the Trainer's label_names ({trainer.label_names})"
        )
    targets = prediction.label_ids
    if isinstance(targets, tuple | list):
        targets = targets[0]
    num_examples = len(eval_dataset)  # type: ignore[arg-type]
    if len(logits) != num_examples:
        raise ValueError(
            f"trainer.predict returned {len(logits)} rows for the {num_examples} examples of "
            "eval_dataset; every example needs its logits (dataloader_drop_last=True drops "
            "the last batch: set it to False)"
        )
    return find_slow_learnable(logits=np.asarray(logits), targets=np.asarray(targets), **kwargs)


class SeparatingEpochCallback(TrainerCallback):
    """Phase 1: stop the Trainer after the separating epoch ``t``.

    Give the phase-1 Trainer the arguments of the full schedule (``num_train_epochs`` of
    phase 2), so that its first ``t`` epochs follow the same learning-rate schedule, and this
    callback; ``trainer.train()`` then returns after epoch ``t``.

    Args:
        separating_epoch: ``t``, an integer ``>= 1``; or a fresh
            `useful_data.separating_epoch.SeparatingEpoch`, fed the training loss the Trainer
            logs at the end of every epoch (needs ``logging_strategy="epoch"``), which decides
            ``t``. Either way ``t`` is found identically on every rank (the logged loss is
            the mean over all ranks).

    Attributes:
        epoch: The separating epoch once training stopped there, else ``None``.

    Raises:
        TypeError: if ``separating_epoch`` is neither.
        ValueError: at ``train()``: a separating epoch past ``num_train_epochs``, a detector
            without epoch-wise logging, or one already fed.

    Example:
        >>> callback = SeparatingEpochCallback(8)
        >>> callback.separating_epoch, callback.epoch
        (8, None)
    """

    def __init__(self, separating_epoch: int | SeparatingEpoch) -> None:
        if isinstance(separating_epoch, SeparatingEpoch):
            self.detector: SeparatingEpoch | None = separating_epoch
            self.separating_epoch: int | None = None
        elif isinstance(separating_epoch, bool) or not isinstance(
            separating_epoch, int | np.integer
        ):
            raise TypeError(
                "separating_epoch should be an integer >= 1 or a SeparatingEpoch, but got "
                f"separating_epoch={separating_epoch!r} of type {type(separating_epoch).__name__}"
            )
        elif separating_epoch < 1:
            raise ValueError(
                f"separating_epoch should be an integer >= 1, but got "
                f"separating_epoch={separating_epoch}"
            )
        else:
            self.detector, self.separating_epoch = None, int(separating_epoch)
        self.epoch: int | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        total = state.num_train_epochs
        if self.detector is None:
            if self.separating_epoch is not None and self.separating_epoch > total:
                raise ValueError(
                    f"separating_epoch={self.separating_epoch} is past the schedule's "
                    f"num_train_epochs={total}: phase 1 trains the first epochs of the full "
                    "schedule, so give the phase-1 Trainer the arguments of phase 2 (or a "
                    "smaller separating epoch)"
                )
            return
        if self.detector.max_epoch > total:
            raise ValueError(
                f"the SeparatingEpoch may separate as late as epoch {self.detector.max_epoch}, "
                f"past the schedule's num_train_epochs={total}: build it with "
                f"SeparatingEpoch(total_epochs={total})"
            )
        if args.logging_strategy != "epoch":
            strategy = getattr(args.logging_strategy, "value", args.logging_strategy)
            raise ValueError(
                "a SeparatingEpoch reads the training loss the Trainer logs once per epoch, "
                f"but logging_strategy={strategy!r}: pass "
                "TrainingArguments(logging_strategy='epoch', ...) to phase 1"
            )
        if self.detector.errors and state.global_step == 0:
            raise ValueError(
                f"the SeparatingEpoch was already fed {len(self.detector.errors)} epoch(s); "
                "give every phase-1 run a fresh one"
            )
        if state.global_step > 0 and not self.detector.errors:
            # resumed from a checkpoint: its log history holds the losses of the past epochs
            for entry in state.log_history:
                if "loss" in entry and self._feed(entry["loss"]):
                    control.should_training_stop = True

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.separating_epoch is not None and round(state.epoch) >= self.separating_epoch:
            self.epoch = self.separating_epoch
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.detector is not None and logs and "loss" in logs and self.epoch is None:
            if self._feed(logs["loss"]):
                control.should_training_stop = True

    def _feed(self, loss: float) -> bool:
        """Feed one epoch's training loss to the detector; ``True`` when it separates."""
        detector = self.detector
        if detector is None or detector.epoch is not None:
            return False
        if detector.update(loss):
            self.epoch = detector.epoch
            return True
        return False


class _SelectionCheckpoint(TrainerCallback):
    """`USEFULTrainer`'s own callback: the selection goes into every checkpoint folder, and
    the sampler's epoch is set at every epoch's start (also in a resumed epoch, where
    Accelerate's ``skip_first_batches`` wraps the sampler out of ``set_epoch``'s reach)."""

    def __init__(self, trainer: USEFULTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        sampler = self.trainer.useful_sampler
        if sampler is not None:
            sampler.set_epoch(int(state.epoch))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        selection = self.trainer.selection
        if selection is None or not args.should_save:
            return
        folder = Path(str(args.output_dir)) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            selection.save(folder / SELECTION_FILE)


class USEFULTrainer(Trainer):
    """Phase 2: a ``transformers.Trainer`` that trains on the upsampled training set.

    Takes every argument of ``Trainer`` plus ``selection``. Its training sampler is a
    `useful_data.UpsampleSampler` over ``train_dataset`` (built with ``num_replicas=1``:
    Accelerate shards its batches across processes, see the module docstring), seeded by
    ``args.data_seed`` (or ``args.seed``) and set to the Trainer's epoch at every epoch.
    Build it with the initial weights ``W0`` (or the same ``model_init`` and seed as phase 1)
    and the full schedule; the optimizer and scheduler it creates are fresh.

    Every checkpoint folder gets the selection as ``useful_selection.npz``; ``train(
    resume_from_checkpoint=...)`` checks that it matches this trainer's selection, or adopts
    it when the trainer was built with ``selection=None``, so a resumed run trains on the
    same data and, mid-epoch, on exactly the batches the interrupted one had not reached.

    Args:
        *args: Positional arguments of ``Trainer`` (``model``, ``args``, ...).
        selection: The `useful_data.Selection` of ``train_dataset`` (or the path of a saved
            one); ``None`` only to take it from the checkpoint you resume from.
        epoch_size: Items per epoch across all processes, passed to `UpsampleSampler`:
            ``len(train_dataset)`` trains at SGD's step count (see the budget guide);
            ``None`` (default) makes every epoch the whole upsampled multiset.
        **kwargs: Keyword arguments of ``Trainer``.

    Attributes:
        selection: The selection trained on (``None`` until resolved from a checkpoint).
        useful_sampler: The sampler of the current training run, once built.

    Raises:
        TypeError: for a selection that is not a Selection or path, or an iterable
            ``train_dataset``.
        ValueError: if the selection does not fit ``train_dataset``, or
            ``train_sampling_strategy`` asks for another sampler.
    """

    def __init__(
        self,
        *args: Any,
        selection: Selection | str | os.PathLike[str] | None,
        epoch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        _check_train_dataset_argument(args, kwargs)
        super().__init__(*args, **kwargs)
        self.selection: Selection | None = None if selection is None else _as_selection(selection)
        self.useful_sampler: UpsampleSampler | None = None
        self.epoch_size = (
            None if epoch_size is None else check_positive_int("epoch_size", epoch_size)
        )
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if strategy != "random":
            raise ValueError(
                f"USEFULTrainer samples the upsampled training set itself, so "
                f"train_sampling_strategy={strategy!r} would be ignored: leave it 'random'"
            )
        if self.train_dataset is not None and self.selection is not None:
            _check_fits(self.selection, self.train_dataset, "train_dataset")
        self.add_callback(_SelectionCheckpoint(self))

    def train(  # type: ignore[override]
        self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """``Trainer.train``, with the checkpoint's selection checked (or adopted) first."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but output_dir={self.args.output_dir!r} "
                    "holds no checkpoint-* folder"
                )
        if isinstance(checkpoint, str | os.PathLike):
            self._resolve_checkpoint_selection(Path(checkpoint))
        if self.selection is None:
            raise ValueError(
                "USEFULTrainer has no selection: pass selection=... (from find_slow_learnable "
                "or select_with_trainer), or resume_from_checkpoint= a checkpoint it saved"
            )
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)

    def _resolve_checkpoint_selection(self, checkpoint: Path) -> None:
        path = checkpoint / SELECTION_FILE
        if not path.is_file():
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} holds no {SELECTION_FILE}: it was not saved "
                "by a USEFULTrainer (a phase-1 checkpoint?); phase 2 starts from the initial "
                "weights, not from a phase-1 checkpoint"
            )
        saved = Selection.load(path)
        if self.selection is None:
            if self.train_dataset is not None:
                _check_fits(saved, self.train_dataset, "train_dataset")
            self.selection = saved
            return
        if not (
            np.array_equal(saved.mask, self.selection.mask)
            and saved.upsample_factor == self.selection.upsample_factor
            and saved.fingerprint == self.selection.fingerprint
        ):
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} was trained on another selection "
                f"({saved.num_slow_learnable} of {saved.num_examples} examples upsampled "
                f"x{saved.upsample_factor}) than this trainer's "
                f"({self.selection.num_slow_learnable} of {self.selection.num_examples} "
                f"x{self.selection.upsample_factor}): resume "
                "with selection=None to train on the checkpoint's, or start a new output_dir"
            )

    def _get_train_sampler(
        self, train_dataset: Dataset[Any] | None = None
    ) -> torch.utils.data.Sampler[int] | None:
        if train_dataset is None:
            train_dataset = self.train_dataset
        if train_dataset is None:
            return None
        _check_map_style("train_dataset", train_dataset)
        if self.selection is None:
            raise ValueError(
                "USEFULTrainer has no selection: pass selection=... or resume from a "
                "checkpoint that holds one"
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self.useful_sampler = UpsampleSampler(
            self.selection,
            len(train_dataset),  # type: ignore[arg-type]
            seed=seed,
            num_replicas=1,  # Accelerate's BatchSamplerShard deals the batches to the ranks
            rank=0,
            epoch_size=self.epoch_size,
        )
        return self.useful_sampler


class _IndexCollator:
    """The Trainer's collator, run on the items without the index they carry; the indices
    are added to the batch as an int64 tensor under ``_INDEX_KEY``."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, features: list[Any]) -> Any:
        if not all(isinstance(f, Mapping) for f in features):
            raise TypeError(
                "DynamicsTrainer needs dict items (what the Trainer's collators take), but got "
                f"{type(features[0]).__name__} items"
            )
        indices = [f[_INDEX_KEY] for f in features]
        batch = self.collate([{k: v for k, v in f.items() if k != _INDEX_KEY} for f in features])
        batch[_INDEX_KEY] = torch.tensor(indices, dtype=torch.int64)
        return batch


class _EndEpoch(TrainerCallback):
    """`DynamicsTrainer`'s own callback: close the record's epoch (on every rank)."""

    def __init__(self, trainer: DynamicsTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.trainer.dynamics is not None:
            self.trainer.dynamics.end_epoch()


class DynamicsTrainer(Trainer):
    """Phase 1 that also records the training dynamics (beyond the paper).

    A ``transformers.Trainer`` whose every training step feeds its logits, labels and the
    batch's dataset indices to ``dynamics``, a `useful_data.dynamics.TrainingDynamics`, and
    closes the record's epoch at every epoch's end; with `SeparatingEpochCallback` it stops
    after epoch ``t``, and `useful_data.dynamics.select_from_dynamics` then selects from the
    record (the same on every rank under ``torchrun``), instead of `select_with_trainer`.

    The indices come with the items: the training loader reads ``train_dataset`` through an
    `useful_data.dynamics.IndexedDataset`, and the collator removes the index before your
    collator (or the Trainer's column removal) sees the items, so your dataset, collator and
    model are unchanged. The items must be dicts (as for any Trainer collator) and the model
    must return a mapping with ``"logits"`` (every ``transformers`` model does); the labels
    are the batch's ``label_names[0]`` (``"labels"``).

    Args:
        *args: Positional arguments of ``Trainer`` (``model``, ``args``, ...).
        dynamics: The recorder to feed; ``None`` (default): a new
            ``TrainingDynamics(len(train_dataset))``, built when training starts.
        **kwargs: Keyword arguments of ``Trainer``.

    Attributes:
        dynamics: The `useful_data.dynamics.TrainingDynamics` recorded (``None`` until
            training starts, when not given).

    Raises:
        TypeError: if ``dynamics`` is not a ``TrainingDynamics``, or ``train_dataset`` is
            iterable.
        ValueError: if ``dynamics`` was built for another number of examples than
            ``train_dataset`` holds, or ``train(resume_from_checkpoint=...)`` is asked (the
            record is not checkpointed: run phase 1 again).
    """

    def __init__(self, *args: Any, dynamics: TrainingDynamics | None = None, **kwargs: Any) -> None:
        if dynamics is not None and not isinstance(dynamics, TrainingDynamics):
            raise TypeError(
                "dynamics should be a useful_data.dynamics.TrainingDynamics or None, but got "
                f"{type(dynamics).__name__}"
            )
        _check_train_dataset_argument(args, kwargs)
        super().__init__(*args, **kwargs)
        self.dynamics = dynamics
        if self.train_dataset is not None:
            self._check_dynamics(self.train_dataset)
        self.add_callback(_EndEpoch(self))

    def _check_dynamics(self, dataset: Any) -> None:
        _check_map_style("train_dataset", dataset)
        if self.dynamics is None:
            self.dynamics = TrainingDynamics(len(dataset))
        elif self.dynamics.num_examples != len(dataset):
            raise ValueError(
                f"dynamics records {self.dynamics.num_examples} examples, but train_dataset "
                f"has {len(dataset)}; build it with TrainingDynamics(len(train_dataset))"
            )

    def train(  # type: ignore[override]
        self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """``Trainer.train``; resuming is refused, since checkpoints do not hold the record."""
        if resume_from_checkpoint:
            raise ValueError(
                "DynamicsTrainer cannot resume: the training dynamics of the epochs before the "
                f"checkpoint are not in it (resume_from_checkpoint={resume_from_checkpoint!r}); "
                "run phase 1 again from W0"
            )
        return super().train(**kwargs)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader[Any]:
        """The Trainer's training loader, over items that carry their dataset index."""
        dataset = self.train_dataset
        if dataset is None:
            return super().get_train_dataloader()  # the Trainer's own error
        self._check_dynamics(dataset)
        return self._get_dataloader(
            dataset=IndexedDataset(dataset, key=_INDEX_KEY),
            description="Training",
            batch_size=self._train_batch_size,
            # the Trainer's sampler, over the dataset itself (None for no sampler, as there)
            sampler_fn=lambda _: self._get_train_sampler(dataset),  # type: ignore[arg-type,return-value]
            is_training=True,
        )

    def _get_collator_with_removed_columns(
        self, data_collator: Callable[..., Any], description: str | None = None
    ) -> Callable[..., Any]:
        collate = super()._get_collator_with_removed_columns(data_collator, description)
        return _IndexCollator(collate) if description == "Training" else collate

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """``Trainer.compute_loss``; a training batch's outputs are recorded first."""
        if _INDEX_KEY not in inputs:  # evaluation, prediction
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        indices = inputs[_INDEX_KEY]
        inputs = {k: v for k, v in inputs.items() if k != _INDEX_KEY}
        label = self.label_names[0] if self.label_names else "labels"
        targets = inputs.get(label)
        if targets is None:
            raise TypeError(
                f"DynamicsTrainer records each example's label, but the batch has no {label!r} "
                f"(keys: {sorted(inputs)}); the items should carry it, or set label_names"
            )
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if not isinstance(logits, torch.Tensor):
            raise TypeError(
                "DynamicsTrainer records the logits, but the model's output has none: return "
                'a mapping (a ModelOutput or dict) with "logits"'
            )
        if self.dynamics is None:  # set with the training loader
            raise RuntimeError("DynamicsTrainer's record is built with its training loader")
        self.dynamics.update(logits, targets, indices)
        return (loss, outputs) if return_outputs else loss

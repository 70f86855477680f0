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
`USEFULTrainer` is built with ``num_replicas=1, rank=0`` (the documented switch of
`useful_data.UpsampleSampler` under Accelerate): it yields the whole upsampled multiset, in
the same order on every rank (seeded by ``args.data_seed`` or ``args.seed`` plus the epoch),
and Accelerate does the sharding, once. A plain ``Trainer`` on `useful_data.USEFULDataset`
is the other door to the same multiset.

The integration carries the paper's path only; the training-dynamics research tool lives in
``useful_data.experimental``, fed from a plain loop or from logits you record.

Needs the ``huggingface`` extra: ``pip install 'useful-data[huggingface]'``.

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024, Algorithm 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

try:
    import accelerate  # noqa: F401  (the Trainer runs on it; its absence fails here, not later)
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState
    from transformers.trainer_callback import ProgressCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from transformers.training_args import TrainingArguments
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "useful_data.huggingface needs transformers and accelerate: "
        "pip install 'useful-data[huggingface]'"
    ) from err

from useful_data._checks import check_positive_int
from useful_data._deprecation import moved_names
from useful_data._resolve import same_selection
from useful_data._summary import selected_per_class
from useful_data.sampler import UpsampleSampler
from useful_data.selection import Selection
from useful_data.separating_epoch import SeparatingEpoch
from useful_data.slow_learnable import find_slow_learnable

__all__ = ["SeparatingEpochCallback", "USEFULTrainer", "select_with_trainer"]

#: Name of the selection file `USEFULTrainer` writes into every checkpoint folder, last: a
#: checkpoint folder without it is incomplete (or not a phase-2 checkpoint).
_SELECTION_FILE = "useful_selection.npz"
#: The phase-2 settings a resume must match (``{"epoch_size": ...}``), written just before it.
_SETTINGS_FILE = "useful_settings.json"
#: Dataset columns read as class labels (``datasets.Dataset``), in the order tried.
_LABEL_COLUMNS = ("labels", "label")
#: Checkpoint folder names, as the Trainer writes and finds them.
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


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


def _column_labels(dataset: Any) -> np.ndarray | None:
    """The ``labels``/``label`` column of a ``datasets.Dataset`` (read without its inputs),
    or ``None``."""
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


def _check_fits(selection: Selection, dataset: Any) -> None:
    """`Selection.check_fits`, the library's one rule, and the same `Selection.fits` for the
    label column of a ``datasets.Dataset`` (which exposes no ``.targets``)."""
    selection.check_fits(dataset, name="selection")
    labels = _column_labels(dataset)
    if labels is not None and not selection.fits(labels):
        raise ValueError(
            "selection does not match dataset: same length but different labels (fingerprint "
            "mismatch); it was computed on another dataset, split or order"
        )


def select_with_trainer(
    trainer: Trainer, eval_dataset: Dataset[Any], *, progress: bool | None = None, **kwargs: Any
) -> Selection:
    """The slow-learnable examples of the training set, from the model ``trainer`` holds.

    Runs ``trainer.predict(eval_dataset)`` (the Trainer's collator, batch size, precision and
    devices; under ``torchrun`` each rank predicts its share and the logits are gathered on
    every rank, in dataset order), then `useful_data.find_slow_learnable` on the logits and
    the labels. Call it on every rank: each class is clustered on one rank and every rank
    returns the same `useful_data.Selection`. The main process then prints a short summary
    (selected per class, separation, cost), as the Trainer prints its logs.

    Args:
        trainer: The phase-1 ``Trainer`` after ``train()`` stopped at the separating epoch.
        eval_dataset: The training set, in its original order, seen with eval transforms (no
            augmentation); for text that is usually the tokenized training set itself. Its
            items must carry the labels (``label_names`` of the Trainer's arguments).
        progress: The prediction pass's progress bar: ``None`` (default) shows the Trainer's
            own where it shows one (``disable_tqdm=False``), ``True``/``False`` force it.
        **kwargs: Passed on to `useful_data.find_slow_learnable` (``seed``, ``backend``,
            ``strategy``, ``upsample_factor``, ``n_init``, ``features``...).

    Returns:
        The `useful_data.Selection` (save it with
        `useful_data.distributed.save_on_rank0` if you want it on disk).

    Raises:
        TypeError: for an iterable dataset, predictions without labels, or a ``progress``
            that is not a bool or ``None``.
        ValueError: if the Trainer predicts a different number of examples than the dataset
            holds (``dataloader_drop_last=True`` drops some).
    """
    _check_map_style("eval_dataset", eval_dataset)
    if not isinstance(trainer, Trainer):
        raise TypeError(
            f"trainer should be a transformers.Trainer, but got {type(trainer).__name__}"
        )
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(
            f"progress should be True, False or None (the Trainer's own bar), but got "
            f"progress={progress!r}"
        )
    for name in ("model", "dataset", "logits", "targets", "eval_dataset"):
        if name in kwargs:
            raise TypeError(
                f"select_with_trainer computes the outputs with trainer.predict, so it takes no "
                f"{name}= (got one); call useful_data.find_slow_learnable directly to pass it"
            )
    with _prediction_bar(trainer, progress):
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
    selection = find_slow_learnable(
        logits=np.asarray(logits), targets=np.asarray(targets), **kwargs
    )
    if trainer.is_world_process_zero():
        print(_summary(selection, trainer.state), flush=True)  # as the Trainer prints its logs
    return selection


@contextlib.contextmanager
def _prediction_bar(trainer: Trainer, progress: bool | None) -> Iterator[None]:
    """Show (or hide) the Trainer's progress bar during ``predict`` as ``progress`` asks,
    then put the Trainer's callbacks back as they were."""
    shown = any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks)
    if progress is None or progress == shown:
        yield
    elif progress:
        trainer.add_callback(ProgressCallback)
        try:
            yield
        finally:
            trainer.pop_callback(ProgressCallback)
    else:
        bar = trainer.pop_callback(ProgressCallback)
        try:
            yield
        finally:
            if bar is not None:
                trainer.add_callback(bar)


def _summary(selection: Selection, state: TrainerState) -> str:
    """A few lines on the selection: selected per class, separation and compute cost (with
    ``t`` the epochs phase 1 trained and ``T`` its schedule's, from the Trainer's state)."""
    n, s = selection.num_examples, selection.num_slow_learnable
    per_class = selected_per_class(selection)
    separation = selection.separation
    verdict = "weak" if separation.weak else "ok"
    t, total = round(state.epoch or 0), int(state.num_train_epochs or 0)
    if 0 < t <= total:
        cost = (
            f"cost: {selection.relative_cost(separating_epoch=t, total_epochs=total):.2f}x "
            f"plain training (t/T = {t}/{total} + phase 2's {selection.upsampled_size}/{n} "
            "examples per epoch)"
        )
    else:
        cost = f"cost: phase 2 trains {selection.upsampled_size / max(n, 1):.2f}x per epoch"
    return "\n".join(
        [
            f"USEFUL selection: {s} of {n} examples slow-learnable "
            f"({100.0 * s / max(n, 1):.1f}%), upsampled x{selection.upsample_factor}: "
            f"{selection.upsampled_size} examples per phase-2 epoch",
            f"  selected per class: {per_class}",
            f"  separation: loss AUC {separation.auc:.3f} over "
            f"{separation.num_classes_split} split classes ({verdict})",
            f"  {cost}",
        ]
    )


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
            settings = json.dumps({"epoch_size": self.trainer.epoch_size})
            (folder / _SETTINGS_FILE).write_text(settings, encoding="utf-8")
            selection.save(folder / _SELECTION_FILE)  # last: it marks the folder complete


class USEFULTrainer(Trainer):
    """Phase 2: a ``transformers.Trainer`` that trains on the upsampled training set.

    Takes every argument of ``Trainer`` plus ``selection``. Its training sampler is a
    `useful_data.UpsampleSampler` over ``train_dataset`` (built with ``num_replicas=1,
    rank=0``: Accelerate shards its batches across processes, see the module docstring),
    seeded by ``args.data_seed`` (or ``args.seed``) and set to the Trainer's epoch at every
    epoch. Build it with the initial weights ``W0`` (or the same ``model_init`` and seed as
    phase 1) and the full schedule; the optimizer and scheduler it creates are fresh.

    Every checkpoint folder gets the selection as ``useful_selection.npz``, written after the
    Trainer's own files, so a folder without it is incomplete (its save failed or was
    killed). ``train(resume_from_checkpoint=True)`` resumes from the newest complete
    checkpoint, with a warning naming the incomplete ones it skips; a checkpoint given by
    path must be complete. The checkpoint's selection is adopted when the trainer was built
    with ``selection=None``; an equal one is fine; another is refused. A resumed run trains on
    the same data and, mid-epoch, on exactly the batches the interrupted one had not reached.

    Args:
        *args: Positional arguments of ``Trainer`` (``model``, ``args``, ...).
        selection: The `useful_data.Selection` of ``train_dataset`` (or the path of a saved
            one); ``None`` only to take it from the checkpoint you resume from.
        epoch_size: Items per epoch across all processes, passed to `UpsampleSampler`:
            ``len(train_dataset)`` trains at SGD's step count (see the budget guide); at most
            ``upsample_factor * len(train_dataset)``. ``None`` (default) makes every epoch
            the whole upsampled multiset.
        **kwargs: Keyword arguments of ``Trainer``.

    Attributes:
        selection: The selection trained on (``None`` until resolved from a checkpoint).
        useful_sampler: The sampler of the current training run, once built.

    Raises:
        TypeError: for a selection that is not a Selection or path, or an iterable
            ``train_dataset``.
        ValueError: if the selection does not fit ``train_dataset``, ``epoch_size`` is out of
            range, or ``train_sampling_strategy`` asks for another sampler.
    """

    def __init__(
        self,
        *args: Any,
        selection: Selection | str | os.PathLike[str] | None,
        epoch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        _check_train_dataset_argument(args, kwargs)
        self.epoch_size = (
            None if epoch_size is None else check_positive_int("epoch_size", epoch_size)
        )
        super().__init__(*args, **kwargs)
        self.selection: Selection | None = None if selection is None else _as_selection(selection)
        self.useful_sampler: UpsampleSampler | None = None
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if strategy != "random":
            raise ValueError(
                f"USEFULTrainer samples the upsampled training set itself, so "
                f"train_sampling_strategy={strategy!r} would be ignored: leave it 'random'"
            )
        if self.train_dataset is not None and self.selection is not None:
            _check_fits(self.selection, self.train_dataset)
            self._build_sampler(self.train_dataset)  # epoch_size's bound, checked now
        self.add_callback(_SelectionCheckpoint(self))

    def train(  # type: ignore[override]
        self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """``Trainer.train``, with the checkpoint's selection checked (or adopted) first;
        ``resume_from_checkpoint=True`` takes the newest complete checkpoint."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = self._last_complete_checkpoint()
        if isinstance(checkpoint, str | os.PathLike):
            self._resolve_checkpoint_selection(Path(checkpoint))
        if self.selection is None:
            raise ValueError(
                "USEFULTrainer has no selection: pass selection=... (from find_slow_learnable "
                "or select_with_trainer), or resume_from_checkpoint= a checkpoint it saved"
            )
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)

    def _last_complete_checkpoint(self) -> str:
        """The newest ``checkpoint-*`` folder of ``output_dir`` that holds the selection (a
        complete one); the newer, incomplete ones are skipped with a warning."""
        folder = Path(str(self.args.output_dir))
        found = sorted(
            (int(match.group(1)), path)
            for path in (folder.iterdir() if folder.is_dir() else ())
            if (match := _CHECKPOINT_NAME.match(path.name)) and path.is_dir()
        )
        complete = [(step, path) for step, path in found if (path / _SELECTION_FILE).is_file()]
        if not complete:
            what = (
                f"only checkpoints without {_SELECTION_FILE} "
                f"({', '.join(p.name for _, p in found)}: incomplete saves, or not saved by a "
                "USEFULTrainer)"
                if found
                else "no checkpoint-* folder"
            )
            raise ValueError(
                f"resume_from_checkpoint=True but output_dir={str(folder)!r} holds {what}; "
                "start phase 2 without resume_from_checkpoint"
            )
        newest_step, newest = complete[-1]
        skipped = [path.name for step, path in found if step > newest_step]
        if skipped:
            warnings.warn(
                f"resume_from_checkpoint=True skips {', '.join(skipped)} in {str(folder)!r}: "
                f"incomplete (no {_SELECTION_FILE}, so saving it failed or was interrupted); "
                f"resuming from {newest.name}",
                stacklevel=3,
            )
        return str(newest)

    def _resolve_checkpoint_selection(self, checkpoint: Path) -> None:
        if not checkpoint.exists():
            raise ValueError(
                f"resume_from_checkpoint={str(checkpoint)!r} does not exist; pass a "
                "checkpoint-* folder this trainer saved, or True for the newest in output_dir"
            )
        if not checkpoint.is_dir():
            raise ValueError(
                f"resume_from_checkpoint={str(checkpoint)!r} is not a folder; pass a "
                "checkpoint-* folder this trainer saved, or True for the newest in output_dir"
            )
        path = checkpoint / _SELECTION_FILE
        if not path.is_file():
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} holds no {_SELECTION_FILE}, so it is "
                "incomplete (saving it failed or was interrupted: resume from an earlier one, "
                "or pass resume_from_checkpoint=True, which skips incomplete ones) or was not "
                "saved by a USEFULTrainer (phase 2 starts from the initial weights, not from a "
                "phase-1 checkpoint)"
            )
        saved = Selection.load(path)
        self._check_saved_settings(checkpoint)
        if self.selection is None:
            if self.train_dataset is not None:
                _check_fits(saved, self.train_dataset)
            self.selection = saved
            return
        if not same_selection(saved, self.selection):
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} was trained on another selection "
                f"({saved.num_slow_learnable} of {saved.num_examples} examples upsampled "
                f"x{saved.upsample_factor}) than selection= "
                f"({self.selection.num_slow_learnable} of {self.selection.num_examples} "
                f"x{self.selection.upsample_factor}): the checkpoint holds a selection; pass "
                "selection=None to resume it, or start a new run to use another"
            )

    def _check_saved_settings(self, checkpoint: Path) -> None:
        """Refuse a resume whose ``epoch_size`` differs from the checkpoint's (checkpoints
        saved before the settings file existed are not checked)."""
        path = checkpoint / _SETTINGS_FILE
        if not path.is_file():
            return
        try:
            if path.stat().st_size > 2**16:
                raise ValueError("larger than any USEFULTrainer writes")
            saved = json.loads(path.read_text(encoding="utf-8"))["epoch_size"]
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as err:
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} has an unreadable {_SETTINGS_FILE} ({err!r:.200})"
            ) from None
        if saved != self.epoch_size:
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} was trained with epoch_size={saved!r:.50}, but "
                f"this trainer has epoch_size={self.epoch_size}; pass epoch_size={saved!r:.50} "
                "to resume it, or start a new run to use another"
            )

    def _build_sampler(self, train_dataset: Dataset[Any]) -> UpsampleSampler:
        if self.selection is None:
            raise ValueError(
                "USEFULTrainer has no selection: pass selection=... or resume from a "
                "checkpoint that holds one"
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return UpsampleSampler(
            self.selection,
            len(train_dataset),  # type: ignore[arg-type]
            seed=seed,
            num_replicas=1,  # Accelerate's BatchSamplerShard deals the batches to the ranks
            rank=0,
            epoch_size=self.epoch_size,
        )

    def _get_train_sampler(
        self, train_dataset: Dataset[Any] | None = None
    ) -> torch.utils.data.Sampler[int] | None:
        if train_dataset is None:
            train_dataset = self.train_dataset
        if train_dataset is None:
            return None
        _check_map_style("train_dataset", train_dataset)
        self.useful_sampler = self._build_sampler(train_dataset)
        return self.useful_sampler


__getattr__ = moved_names(
    __name__,
    {
        "SELECTION_FILE": "useful_data.huggingface:_SELECTION_FILE",
        "DynamicsTrainer": (
            "!the training-dynamics tool is now in useful_data.experimental (TrainingDynamics, "
            "select_from_dynamics), fed from a plain training loop or from logits you record; "
            "phase 1 with the Trainer is a plain Trainer with SeparatingEpochCallback"
        ),
    },
)

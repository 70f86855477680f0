"""PyTorch Lightning integration: USEFUL's three phases in one ``Trainer.fit``.

`USEFUL` is a Lightning `Callback`. Add it to a ``Trainer`` whose ``max_epochs`` is your full
schedule ``T`` and fit your own ``LightningModule`` and ``LightningDataModule``, unchanged:

1. **Phase 1**: train from the initial weights ``W0`` for ``t`` epochs, ``t`` fixed or
   detected by `useful_data.separating_epoch.SeparatingEpoch` from the training error or loss
   your module logs (``self.log("train_loss", ..., on_epoch=True)``).
2. **Selection**: at the end of epoch ``t``, `find_slow_learnable` runs the module over an
   eval view of the training set (on every rank under DDP, each rank 1/W of the batches).
3. **Phase 2**: the next epoch restarts from ``W0`` with a fresh optimizer and LR scheduler
   (your ``configure_optimizers`` is called again) on the upsampled training set, for the full
   ``T`` epochs (so the fit runs ``t + T`` epochs in all). Your training ``DataLoader`` is
   rebuilt with an `UpsampleSampler` in place of its sampler, the way Lightning itself
   injects a ``DistributedSampler``; since an `UpsampleSampler` is a ``DistributedSampler``
   that shards by the process group, Lightning leaves it in place and every epoch trains on
   exactly the upsampled multiset across all ranks.

What a user sees (rank 0 only, through Lightning's own console output): at the start of the
fit, the plan (``t`` phase-1 epochs, then ``T`` phase-2 epochs, and what ``max_epochs``
becomes); during the selection pass, a progress bar when the trainer shows its own; after it,
a short summary of the selection (selected per class, separation, relative cost).

Checkpoints carry ``W0`` (until the restart), the separating-epoch state and the `Selection`
(in the callback's ``state_dict``, like ``StochasticWeightAveraging``'s average model), so a
run resumed from a Lightning checkpoint in phase 1 still restarts from ``W0``, and one resumed
in phase 2 trains on the same selection, checked against the training set
(`Selection.check_fits`). A checkpoint and the arguments never disagree silently: resuming a
checkpoint that holds a selection with another ``selection=`` is refused.

Two places touch Lightning internals (the version pinned in the ``dev`` extra is tested): the
fit loop's training-data source is wrapped so that the loader your hook returns is upsampled,
and the fit loop's training loader is dropped at the switch so that Lightning requests it again.

Needs ``pip install 'useful-data[lightning]'``.

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024 (Algorithm 1).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from useful_data._checks import (
    as_numpy,
    check_int,
    check_positive_int,
    check_seed,
    check_upsample_factor,
)
from useful_data._cluster import check_backend, check_n_init
from useful_data._resolve import resolve_selection, same_selection
from useful_data._summary import selected_per_class
from useful_data.sampler import UpsampleSampler
from useful_data.selection import Selection, SelectionLike
from useful_data.separating_epoch import SeparatingEpoch
from useful_data.slow_learnable import find_slow_learnable

try:
    import lightning.pytorch as pl
    from lightning.fabric.utilities.data import _reinstantiate_wrapped_cls
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import (
        DDPStrategy,
        DeepSpeedStrategy,
        SingleDeviceStrategy,
        SingleDeviceXLAStrategy,
        XLAStrategy,
    )
    from lightning.pytorch.trainer.connectors.data_connector import _DataLoaderSource
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _get_dataloader_init_args_and_kwargs
    from lightning.pytorch.utilities.rank_zero import rank_zero_info
except ImportError as err:  # pragma: no cover - exercised by simulating a missing install
    raise ImportError(
        "useful_data.lightning needs PyTorch Lightning: pip install 'useful-data[lightning]'"
    ) from err

__all__ = ["USEFUL"]

logger = logging.getLogger(__name__)

# find_slow_learnable arguments the callback fills in itself
_OWN_FIND_ARGS = frozenset({"model", "dataset", "logits", "targets", "eval_dataset"})
_STATE_VERSION = 1
_STATE_FIELDS = ("separating_epoch", "restart_pending", "initial_state", "monitored", "selection")
_SELECTION_FIELDS = ("mask", "loss", "targets", "upsample_factor", "params", "unsplit")


class _UpsampledSource(_DataLoaderSource):
    """The fit loop's training-data source, with the loader it returns upsampled."""

    def __init__(self, source: _DataLoaderSource, callback: USEFUL, trainer: pl.Trainer) -> None:
        super().__init__(source.instance, source.name)
        self.original = source
        self.callback = callback
        self.trainer = trainer

    def dataloader(self) -> Any:
        return self.callback._upsample(super().dataloader(), self.trainer)


class USEFUL(Callback):
    """Run USEFUL inside ``Trainer.fit``: phase 1, selection, restart from ``W0`` upsampled.

    ``Trainer(max_epochs=T)`` is the full schedule: phase 1 trains ``t`` epochs, then phase 2
    trains ``T`` epochs from ``W0`` with a fresh optimizer and LR scheduler (``t + T`` in
    all; ``trainer.current_epoch`` keeps counting, and ``max_epochs`` becomes ``t + T`` at the
    selection, as the callback says when the fit starts). ``configure_optimizers`` is called
    again at the restart, so a schedule built from ``self.trainer.estimated_stepping_batches``
    spans phase 2's ``T`` epochs of upsampled data. Works with one device and with DDP
    (``strategy="ddp"``, launched by Lightning or ``torchrun``), automatic and manual
    optimization (`SAM` included). With ``"ddp_spawn"`` the fit runs too, but the attributes
    below are set in the spawned processes only.

    With ``selection=`` (computed beforehand, e.g. from logits of ``trainer.predict``), there
    is no phase 1: the whole fit trains on the upsampled data from the module's current
    weights (load ``W0`` into it first).

    The module's ``forward(x)`` must return the logits (or a tuple or output object holding
    them, as `find_slow_learnable` accepts), and the training ``DataLoader`` must be a single
    map-style one with a ``RandomSampler`` (``shuffle=True``) or ``SequentialSampler``.

    Args:
        separating_epoch: ``t``, the number of phase-1 epochs (``1 <= t <= max_epochs``), or a
            `SeparatingEpoch` detector fed the logged ``monitor`` value after every epoch.
            ``None`` (default): ``SeparatingEpoch(total_epochs=max_epochs)`` with its defaults.
        selection: A precomputed selection (a `Selection`, a saved ``.npz`` path, a mask or
            indices) to upsample from the first epoch; excludes ``separating_epoch``.
        eval_dataset: The training set with eval transforms, in the same order (its labels
            are checked), or a function of no arguments returning it (called after your
            datamodule's ``setup``: when training starts, to check it, and at the end of
            phase 1). ``None``: the training loader's own dataset, with its training
            transforms.
        monitor: The logged metric the detector reads, a per-epoch training error or loss
            (log it with ``on_epoch=True``, and ``sync_dist=True`` under DDP for the mean over
            ranks; rank 0's value decides on every rank).
        seed: Seed of the upsampled shuffle; ``None``: ``PL_GLOBAL_SEED`` (set by
            ``seed_everything``) or 0, as Lightning seeds its ``DistributedSampler``.
        epoch_size: ``M``, phase 2's items per epoch across all ranks (`UpsampleSampler`'s
            ``epoch_size``: ``M = N`` keeps SGD's steps per epoch, the epochs then continue
            through the upsampled multiset); ``None``: every epoch is the whole multiset.
        find_kwargs: More keyword arguments for `find_slow_learnable` (``upsample_factor``,
            ``backend``, ``n_init``, ``batch_size``, ``strategy``, ...). ``progress``
            defaults to ``verbose`` and whether the trainer shows its own progress bar.
        verbose: Show, on rank 0 through Lightning's console output, the plan of the fit
            (``t + T`` epochs) at its start and a summary of the selection after it, and a
            progress bar during the selection pass when the trainer shows its own.
            ``False``: the plan and the summary go to this module's logger only, and no
            progress bar is shown.
        **removed: Arguments removed in useful-data 1.0 (``dynamics=``, now
            `useful_data.experimental`), refused with a `TypeError` that says where they went.

    Attributes:
        selection: The `Selection` once computed (or given as one, or as a file), else
            ``None``.
        separating_epoch: ``t`` once known (0 with ``selection=``), else ``None``.

    Raises:
        TypeError: if both ``separating_epoch`` and ``selection`` are given, an argument has
            the wrong type (``selection`` not selection-like, ``eval_dataset`` neither a
            map-style dataset nor a function), or a removed argument is passed.
        ValueError: if ``separating_epoch < 1``, or ``find_kwargs`` names an argument the
            callback fills in or one `find_slow_learnable` does not take, or gives a number it
            would refuse (``upsample_factor``, ``seed``, ``n_init``, ...). Errors about the
            trainer, the data and checkpoints are raised when the fit starts (see the
            Lightning guide).

    Example:
        >>> from useful_data.lightning import USEFUL
        >>> useful = USEFUL(separating_epoch=2, find_kwargs={"backend": "sklearn"})
        >>> useful.phase
        'early'
    """

    def __init__(
        self,
        separating_epoch: int | SeparatingEpoch | None = None,
        *,
        selection: SelectionLike | None = None,
        eval_dataset: Dataset[Any] | Callable[[], Dataset[Any]] | None = None,
        monitor: str = "train_loss",
        seed: int | None = None,
        epoch_size: int | None = None,
        find_kwargs: Mapping[str, Any] | None = None,
        verbose: bool = True,
        **removed: Any,
    ) -> None:
        _refuse_removed(removed)
        if separating_epoch is not None and selection is not None:
            raise TypeError(
                "USEFUL takes either separating_epoch= (phase 1 runs inside the fit) or "
                "selection= (computed beforehand, no phase 1), not both"
            )
        self._fixed_epoch: int | None = None
        self._detector: SeparatingEpoch | None = None
        if isinstance(separating_epoch, SeparatingEpoch):
            self._detector = separating_epoch
        elif separating_epoch is not None:
            self._fixed_epoch = check_positive_int("separating_epoch", separating_epoch)
        if not isinstance(monitor, str):
            raise TypeError(f"monitor should be a str, but got monitor={monitor!r}")
        if not isinstance(verbose, bool):
            raise TypeError(f"verbose should be True or False, but got verbose={verbose!r}")
        self.monitor = monitor
        self.verbose = verbose
        self.seed = None if seed is None else check_int("seed", seed)
        self.epoch_size = (
            None if epoch_size is None else check_positive_int("epoch_size", epoch_size)
        )
        self.eval_dataset = _check_eval_dataset(eval_dataset)
        self.find_kwargs = _check_find_kwargs(find_kwargs)
        self.selection: Selection | None = None
        self.separating_epoch: int | None = None
        self._upsample_from: SelectionLike | None = None  # what the sampler is built from
        self._given: SelectionLike | None = None  # selection= as given (after loading a path)
        self._initial_state: dict[str, torch.Tensor] | None = None
        self._restart_pending = False
        self._replay: list[float] = []  # the monitored curve of a resumed phase 1
        self._total_epochs = 0
        if selection is not None:  # set now: configure_optimizers may load the data early
            _check_selection_type(selection)
            self._set_selection(selection, 0)
            self._given = self._upsample_from

    @property
    def phase(self) -> str:
        """``"early"`` before the selection, ``"upsampled"`` once it is made."""
        return "early" if self._upsample_from is None else "upsampled"

    # --- Lightning hooks ---------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = trainer.strategy
        if not isinstance(strategy, SingleDeviceStrategy | DDPStrategy) or isinstance(
            strategy, DeepSpeedStrategy | XLAStrategy | SingleDeviceXLAStrategy
        ):
            raise ValueError(
                "USEFUL supports the single-device and DDP strategies (it restores W0 into "
                "the module and rebuilds its optimizers), but got "
                f"strategy={type(strategy).__name__}"
            )
        source = trainer.fit_loop._data_source
        if not source.is_defined() or source.instance is None:
            raise ValueError(
                "USEFUL needs a training set, but neither the LightningModule nor the "
                "datamodule defines train_dataloader() and no train_dataloaders= was passed"
            )
        if not isinstance(source, _UpsampledSource):
            trainer.fit_loop._data_source = _UpsampledSource(source, self, trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        source = trainer.fit_loop._data_source
        if isinstance(source, _UpsampledSource):
            trainer.fit_loop._data_source = source.original

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.max_epochs
        if total is None or total < 1:
            raise ValueError(
                "USEFUL needs a finite schedule: set Trainer(max_epochs=T) to the full number "
                f"of epochs (phase 2 trains T epochs), but got max_epochs={total}"
            )
        if trainer.max_steps != -1:
            raise ValueError(
                "USEFUL counts the schedule in epochs (max_epochs); leave max_steps unset, "
                f"but got max_steps={trainer.max_steps}"
            )
        self._total_epochs = total
        if self._upsample_from is None:
            self._check_phase_one(total)
            if self._initial_state is None:
                if trainer.ckpt_path is not None:
                    raise RuntimeError(
                        f"the checkpoint {trainer.ckpt_path!r} holds no USEFUL state, so the "
                        "initial weights W0 are unknown; resume from a checkpoint written by a "
                        "Trainer with the USEFUL callback, or start a new fit"
                    )
                self._initial_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
                }
        else:
            self._extend_schedule(trainer)
        if trainer.is_global_zero:
            self._show(self._plan())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._upsample_from is None:  # fail now, not after phase 1
            self._training_set(trainer)
            self._eval_view()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._upsample_from is not None or not self._separates_now(trainer):
            return
        selection = self._select(trainer, pl_module)
        self._set_selection(selection, trainer.current_epoch + 1)
        self._prepare_restart(trainer)
        if trainer.is_global_zero:
            self._show(self._summary(selection))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._restart_pending:
            return
        if self._initial_state is None:  # pragma: no cover - the state always holds W0 here
            raise RuntimeError("USEFUL lost the initial weights W0 before the restart")
        pl_module.load_state_dict(self._initial_state)
        # a fresh optimizer and scheduler; the schedule they see is phase 2's T epochs
        fit_loop = trainer.fit_loop
        full = fit_loop.max_epochs
        fit_loop.max_epochs = self._total_epochs
        try:
            trainer.strategy.setup_optimizers(trainer)
        finally:
            fit_loop.max_epochs = full
        self._initial_state = None
        self._restart_pending = False

    def state_dict(self) -> dict[str, Any]:
        selection = None
        if self.selection is not None:
            sel = self.selection
            selection = {
                "mask": torch.from_numpy(np.array(sel.mask)),
                "loss": torch.from_numpy(np.array(sel.loss)),
                "targets": torch.from_numpy(np.array(sel.targets)),
                "upsample_factor": sel.upsample_factor,
                "params": json.dumps(sel.params, sort_keys=True, default=str),
                "unsplit": sorted(sel.unsplit.items()),
            }
        elif self._upsample_from is not None:  # a mask or indices given as selection=
            selection = {"given": torch.as_tensor(np.asarray(self._upsample_from))}
        return {
            "version": _STATE_VERSION,
            "separating_epoch": self.separating_epoch,
            "restart_pending": self._restart_pending,
            "initial_state": self._initial_state,
            "monitored": None if self._detector is None else list(self._detector.errors),
            "selection": selection,
            "epoch_size": self.epoch_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _check_state(state_dict)
        epoch = state_dict["separating_epoch"]
        if self._fixed_epoch is not None and epoch not in (None, self._fixed_epoch):
            raise ValueError(
                f"the checkpoint separated at epoch {epoch}, but this callback has "
                f"separating_epoch={self._fixed_epoch}; resume with the same setting"
            )
        saved = state_dict["selection"]
        if saved is None and state_dict.get("dynamics") is not None:
            raise ValueError(
                "the checkpoint is in phase 1 of a fit with USEFUL(dynamics=...), which was "
                "removed in useful-data 1.0 (see useful_data.experimental); start a new fit"
            )
        if saved is None:
            if self._given is not None:
                raise ValueError(
                    "the checkpoint is in phase 1 (it holds no selection yet), but USEFUL was "
                    "given selection=; pass separating_epoch= (or nothing) instead to resume "
                    "it, or start a new run to use the selection"
                )
            self._replay = list(state_dict["monitored"] or [])  # fed to the detector later
        else:
            saved_size = state_dict.get("epoch_size", self.epoch_size)  # absent before 1.0
            if saved_size != self.epoch_size:
                raise ValueError(
                    f"the checkpoint trained phase 2 with epoch_size={saved_size}, but this "
                    f"callback has epoch_size={self.epoch_size}; pass epoch_size={saved_size} "
                    "to resume it (its epochs continue through the same passes), or start a "
                    "new run to use another"
                )
            selection = _saved_selection(saved)
            if self._given is not None and not same_selection(self._given, selection):
                raise ValueError(
                    "the checkpoint holds a selection that differs from the selection= given "
                    "to USEFUL; pass selection=None to resume it, or start a new run to use "
                    "another"
                )
            self._set_selection(selection, epoch)
        self._restart_pending = bool(state_dict["restart_pending"])
        self._initial_state = state_dict["initial_state"]

    # --- the steps of the method ---------------------------------------------------------
    def _separates_now(self, trainer: pl.Trainer) -> bool:
        """Whether the epoch just ended is ``t`` (every rank agrees: rank 0's value decides)."""
        if self._detector is None:
            return trainer.current_epoch + 1 == self._fixed_epoch
        value = trainer.strategy.broadcast(self._logged_value(trainer), src=0)
        return self._detector.update(value)

    def _select(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Selection:
        """The paper's selection on the weights at epoch ``t``: `find_slow_learnable`."""
        kwargs = dict(self.find_kwargs)
        kwargs.setdefault(
            "progress",
            self.verbose and trainer.is_global_zero and trainer.progress_bar_callback is not None,
        )
        train_set = self._training_set(trainer)
        return find_slow_learnable(pl_module, train_set, eval_dataset=self._eval_view(), **kwargs)

    def _prepare_restart(self, trainer: pl.Trainer) -> None:
        """Schedule phase 2: ``W0`` and a fresh optimizer at the next epoch, on new data."""
        self._restart_pending = True
        self._extend_schedule(trainer)
        # drop the phase-1 loader: Lightning requests the (now upsampled) one at the next epoch
        fit_loop = trainer.fit_loop
        if fit_loop._data_fetcher is not None:
            fit_loop._data_fetcher.teardown()
        fit_loop._combined_loader = None

    def _check_phase_one(self, total: int) -> None:
        if self._fixed_epoch is not None and self._fixed_epoch > total:
            raise ValueError(
                f"separating_epoch should be <= max_epochs (phase 1 is a few early epochs of "
                f"the schedule), but got separating_epoch={self._fixed_epoch} and "
                f"max_epochs={total}"
            )
        if self._fixed_epoch is None and self._detector is None:
            self._detector = SeparatingEpoch(total)
        if self._detector is not None and self._detector.max_epoch > total:
            raise ValueError(
                f"the SeparatingEpoch detector may separate as late as epoch "
                f"{self._detector.max_epoch}, past max_epochs={total}; build it with "
                f"SeparatingEpoch(total_epochs={total})"
            )
        if self._detector is not None:
            for value in self._replay:  # the curve up to the checkpoint restores the detector
                self._detector.update(value)
        self._replay = []

    def _extend_schedule(self, trainer: pl.Trainer) -> None:
        """Phase 1's ``t`` epochs come before phase 2's full schedule of ``T`` epochs."""
        if self.separating_epoch is None:
            raise RuntimeError("USEFUL extends the schedule once the separating epoch is known")
        trainer.fit_loop.max_epochs = self.separating_epoch + self._total_epochs

    def _set_selection(self, selection: SelectionLike, epoch: int | None) -> None:
        if isinstance(selection, str | os.PathLike):
            selection = Selection.load(selection)
        self.selection = selection if isinstance(selection, Selection) else None
        self._upsample_from = selection  # a mask or indices is checked once N is known
        self.separating_epoch = epoch

    # --- what the user sees ----------------------------------------------------------------
    def _show(self, message: str) -> None:
        """Print through Lightning's console output (rank 0), or only log when not verbose."""
        if self.verbose:
            rank_zero_info(message)
        else:
            logger.info(message)

    def _plan(self) -> str:
        """The fit's epochs, said at its start: ``t`` (phase 1) + ``T`` (phase 2)."""
        total = self._total_epochs
        if self.separating_epoch == 0:
            return (
                f"USEFUL: selection given, no phase 1: all {total} epochs (max_epochs) train "
                "on the upsampled data"
            )
        if self.separating_epoch is not None:  # resumed in phase 2
            t = self.separating_epoch
            return (
                f"USEFUL: resuming phase 2: t={t} epochs of phase 1 + T={total} of phase 2 "
                f"from W0 on the upsampled data; max_epochs is {t + total}"
            )
        if self._fixed_epoch is not None:
            t = self._fixed_epoch
            return (
                f"USEFUL: this fit trains t={t} epochs (phase 1) + T={total} epochs (phase 2, "
                f"from W0 on the upsampled data) = {t + total} epochs: max_epochs={total} "
                f"becomes {t + total} at the selection, so Lightning counts epochs 0 to "
                f"{t + total - 1}"
            )
        latest = self._detector.max_epoch if self._detector is not None else total
        return (
            f"USEFUL: this fit trains t epochs (phase 1, t detected from {self.monitor!r}, "
            f"at most {latest}) + T={total} epochs (phase 2, from W0 on the upsampled data): "
            f"max_epochs={total} becomes t + {total} at the selection"
        )

    def _summary(self, selection: Selection) -> str:
        """The selection as a user checks it: per class, separation, relative cost."""
        t, total = self.separating_epoch or 0, self._total_epochs
        n, k = selection.num_examples, selection.num_slow_learnable
        shown = selected_per_class(selection, notes=True)
        separation = selection.separation
        cost = selection.relative_cost(
            separating_epoch=t, total_epochs=total, epoch_size=self.epoch_size
        )
        return "\n".join(
            [
                f"USEFUL: separating epoch t={t}: {k} of {n} examples slow-learnable "
                f"({k / n:.1%}), upsampled x{selection.upsample_factor}",
                f"  selected per class: {shown}",
                f"  separation: loss ROC-AUC {separation.auc:.3f}, loss gap "
                f"{separation.loss_gap:.3f}" + (" (weak)" if separation.weak else ""),
                f"  relative cost: {cost:.2f}x plain training",
                f"  phase 2: restarting from W0 for T={total} epochs (epochs {t} to "
                f"{t + total - 1})",
            ]
        )

    # --- data ----------------------------------------------------------------------------
    def _logged_value(self, trainer: pl.Trainer) -> float:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise RuntimeError(
                f"USEFUL detects the separating epoch from the logged {self.monitor!r}, which "
                f"was not logged this epoch (logged: {sorted(metrics)}); log the training "
                f"error or loss with self.log({self.monitor!r}, ..., on_epoch=True), or pass "
                "monitor= or a fixed separating_epoch="
            )
        return float(metrics[self.monitor])

    def _training_set(self, trainer: pl.Trainer) -> Dataset[Any]:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise TypeError(
                "USEFUL needs train_dataloader() to return one DataLoader, but got "
                f"{type(loader).__name__}"
            )
        return _map_style("the training set", loader.dataset)

    def _eval_view(self) -> Dataset[Any] | None:
        view = self.eval_dataset
        if view is not None and callable(view) and not isinstance(view, Dataset):
            view = view()
        if view is None:
            return None
        return _map_style("eval_dataset", view)

    def _upsample(self, loader: Any, trainer: pl.Trainer) -> Any:
        """The training loader with an `UpsampleSampler` in place of its sampler."""
        selection = self._upsample_from
        if selection is None:
            return loader
        if not isinstance(loader, DataLoader):
            raise TypeError(
                "USEFUL upsamples one training DataLoader, but train_dataloader() returned "
                f"{type(loader).__name__}; return a single DataLoader"
            )
        dataset = _map_style("the training set", loader.dataset)
        num_examples = len(dataset)  # type: ignore[arg-type]
        try:
            if self.selection is not None:
                self.selection.check_fits(dataset, name="the selection")
            else:
                resolve_selection(selection, num_examples)
        except ValueError as err:
            raise ValueError(
                f"USEFUL's selection does not match the training set: {err}. Pass the "
                "selection computed on this training set, or resume from a checkpoint of a "
                "run on the same training data"
            ) from err
        shuffle = _shuffles(loader.sampler, "an UpsampleSampler")
        sampler = UpsampleSampler(
            selection, num_examples, shuffle=shuffle, seed=self._seed(), epoch_size=self.epoch_size
        )
        return _with_sampler(loader, sampler)

    def _seed(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))


def _refuse_removed(removed: Mapping[str, Any]) -> None:
    if "dynamics" in removed:
        raise TypeError(
            "USEFUL(dynamics=...) was removed in useful-data 1.0: the training-dynamics tool "
            "moved to useful_data.experimental (TrainingDynamics, select_from_dynamics), fed "
            "from your own loop; the callback runs the paper's k-means selection"
        )
    if removed:
        raise TypeError(f"USEFUL got unexpected keyword arguments {sorted(removed)}")


def _check_find_kwargs(find_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``find_kwargs`` checked now, not after phase 1 has trained for ``t`` epochs."""
    if find_kwargs is not None and not isinstance(find_kwargs, Mapping):
        raise TypeError(
            f"find_kwargs should be a mapping of find_slow_learnable arguments, but got "
            f"find_kwargs={find_kwargs!r}"
        )
    kwargs = dict(find_kwargs or {})
    if own := sorted(_OWN_FIND_ARGS & kwargs.keys()):
        raise ValueError(
            f"find_kwargs should not hold {own}: USEFUL passes the module and the "
            "training set itself (use eval_dataset= for an eval view)"
        )
    accepted = inspect.signature(find_slow_learnable).parameters.keys() - _OWN_FIND_ARGS
    if unknown := sorted(kwargs.keys() - accepted):
        raise ValueError(
            f"find_kwargs: find_slow_learnable takes no {unknown}; it accepts {sorted(accepted)}"
        )
    for name, value in kwargs.items():  # the numbers find_slow_learnable checks first
        if name == "upsample_factor":
            check_upsample_factor(value)
        elif name == "seed":
            check_seed(name, value)
        elif name == "backend":
            check_backend(value)
        elif name == "n_init":
            check_n_init(value)
        elif name in ("batch_size", "max_examples") and value is not None:
            check_positive_int(name, value)
        elif name == "num_workers":
            check_positive_int(name, value, minimum=0)
    return kwargs


def _check_selection_type(selection: object) -> None:
    accepted = Selection | str | os.PathLike | np.ndarray | torch.Tensor
    if not isinstance(selection, accepted) and (
        not isinstance(selection, Sequence) or isinstance(selection, bytes)
    ):
        raise TypeError(
            "selection should be a Selection, a path to a saved one, a boolean mask or a "
            f"sequence of indices, but got selection={selection!r} of type "
            f"{type(selection).__name__}"
        )
    if isinstance(selection, Selection | str | os.PathLike):
        return
    # a mask or indices: what does not need N is checked now, the range when N is known
    array = as_numpy("selection", selection)
    if array.ndim != 1:
        raise ValueError(f"selection should be 1-D, but got shape {tuple(array.shape)}")
    if array.dtype == bool or not array.size:
        return
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"selection should be a boolean mask or integer indices, but got dtype {array.dtype}"
        )
    if int(array.min()) < 0:
        raise ValueError(f"selection's indices should be >= 0, but got index {int(array.min())}")
    values, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"selection should not repeat an index (upsampling is set by upsample_factor), "
            f"but index {int(values[counts > 1][0])} appears {int(counts.max())} times"
        )


def _check_eval_dataset(eval_dataset: Any) -> Dataset[Any] | Callable[[], Dataset[Any]] | None:
    if eval_dataset is None or (callable(eval_dataset) and not isinstance(eval_dataset, Dataset)):
        return eval_dataset
    if isinstance(eval_dataset, IterableDataset) or not (
        hasattr(eval_dataset, "__len__") and hasattr(eval_dataset, "__getitem__")
    ):
        raise TypeError(
            "eval_dataset should be a map-style dataset (with __len__ and __getitem__, in the "
            "training set's order) or a function of no arguments returning one, but got "
            f"eval_dataset={eval_dataset!r} of type {type(eval_dataset).__name__}"
        )
    return eval_dataset


def _check_state(state: Any) -> None:
    """Raise a `ValueError` saying what is wrong if ``state`` is not a whole USEFUL state of
    this version (a checkpoint cut short, edited, or of another useful-data)."""
    if not isinstance(state, Mapping):
        raise ValueError(
            f"the checkpoint's USEFUL state should be a dict, but got {type(state).__name__}"
        )
    version = state.get("version")
    if version != _STATE_VERSION:
        raise ValueError(
            f"the checkpoint's USEFUL state has version={version!r}; this useful-data "
            f"reads version {_STATE_VERSION}"
        )
    missing = [k for k in _STATE_FIELDS if k not in state]
    epoch, monitored, saved = (state.get(k) for k in ("separating_epoch", "monitored", "selection"))
    problem = None
    if missing:
        problem = f"is missing {missing}"
    elif epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        problem = f"has separating_epoch={epoch!r:.100}, not None or an integer >= 0"
    elif not isinstance(state["restart_pending"], bool):
        problem = f"has restart_pending={state['restart_pending']!r:.100}, not a bool"
    elif monitored is not None and not isinstance(monitored, list | tuple):
        problem = f"has monitored={monitored!r:.100}, not None or a list of numbers"
    elif saved is not None:
        fields = (
            ("given",) if isinstance(saved, Mapping) and "given" in saved else _SELECTION_FIELDS
        )
        if not isinstance(saved, Mapping) or any(k not in saved for k in fields):
            problem = f"should hold a selection with the fields {fields}, but got {saved!r:.200}"
        elif any(
            not isinstance(saved[k], torch.Tensor)
            for k in ("given", "mask", "loss", "targets")
            if k in saved
        ):
            problem = "should hold the selection's arrays as tensors"
    if problem is not None:
        raise ValueError(
            f"the checkpoint's USEFUL state {problem}: the checkpoint is incomplete or was "
            "not written by USEFUL; resume from another checkpoint or start a new fit"
        )


def _saved_selection(saved: Mapping[str, Any]) -> SelectionLike:
    """The selection a checkpoint's callback state holds (a `Selection`, or a given mask)."""
    if "given" in saved:  # a mask or indices given as selection=
        return saved["given"].numpy()
    try:
        params = json.loads(saved["params"])
    except (TypeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise ValueError(
            f"the checkpoint's USEFUL state has unreadable selection params ({reason})"
        ) from None
    if not isinstance(params, dict):
        raise ValueError(
            f"the checkpoint's USEFUL state should hold the selection params as a JSON "
            f"object, but got {type(params).__name__}"
        )
    try:
        return Selection(
            mask=saved["mask"].numpy(),
            loss=saved["loss"].numpy(),
            targets=saved["targets"].numpy(),
            upsample_factor=saved["upsample_factor"],
            params=params,
            unsplit=dict(saved["unsplit"]),
        )
    except (TypeError, ValueError) as err:  # dict() of a non-pair list raises either
        raise ValueError(
            f"the checkpoint's USEFUL state holds a malformed selection: {err}"
        ) from None


def _with_sampler(loader: DataLoader[Any], sampler: DistributedSampler[int]) -> DataLoader[Any]:
    """``loader`` rebuilt with ``sampler`` in place of its own, as Lightning injects its
    ``DistributedSampler`` (every other argument kept)."""
    args, kwargs = _get_dataloader_init_args_and_kwargs(loader, sampler, mode=RunningStage.TRAINING)
    if (
        kwargs.get("batch_sampler") is not None
        and loader.batch_size is not None  # not a batch_sampler= of the user's
        and _stateful_batches(loader)
    ):
        # torchdata's StatefulDataLoader batches with its own BatchSampler subclass, which
        # Lightning rebuilds as a custom batch sampler around ours, leaving the loader's
        # .sampler a SequentialSampler: under DDP Lightning would then replace ours by a
        # DistributedSampler of the plain data. Pass the sampler itself instead.
        positional = getattr(loader, "__pl_saved_arg_names", ())
        kwargs.update(sampler=sampler, batch_sampler=None)
        for key in ("batch_size", "drop_last"):
            if key in positional:
                kwargs.pop(key, None)
            else:
                kwargs[key] = getattr(loader, key)
    return _reinstantiate_wrapped_cls(loader, *args, **kwargs)


def _shuffles(sampler: object, replacement: str) -> bool:
    """Whether a loader's sampler is a shuffling one; a custom one cannot be replaced."""
    if isinstance(sampler, SequentialSampler):
        return False
    if isinstance(sampler, RandomSampler):
        return True
    # torchdata's StatefulDataLoader(shuffle=True) has its own RandomSampler
    stateful = sys.modules.get("torchdata.stateful_dataloader.sampler")
    if stateful is not None and isinstance(sampler, stateful.RandomSampler):
        return True
    raise TypeError(
        f"USEFUL replaces the training sampler by {replacement}, so it needs a DataLoader "
        f"built with shuffle=True or shuffle=False, but got sampler={type(sampler).__name__}"
    )


def _stateful_batches(loader: DataLoader) -> bool:
    """Whether the loader batches with torchdata's ``StatefulDataLoader`` batch sampler."""
    stateful = sys.modules.get("torchdata.stateful_dataloader.sampler")
    return stateful is not None and type(loader.batch_sampler) is stateful.BatchSampler


def _map_style(name: str, dataset: Any) -> Dataset[Any]:
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"USEFUL needs {name} to be a map-style dataset (with __len__ and __getitem__, "
            f"indexable by example), but got {type(dataset).__name__}; an IterableDataset "
            "cannot be upsampled by index"
        )
    return dataset

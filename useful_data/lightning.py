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

With ``dynamics=`` (beyond the paper, `useful_data.dynamics`), phase 1 also feeds a
`TrainingDynamics` from the logits your ``training_step`` returns (``{"loss": loss,
"logits": logits}``), and the selection comes from the recorded dynamics instead of the
snapshot's k-means (no eval pass). The dataset indices of every batch are known without
touching your data: phase 1's sampler is the ``DistributedSampler`` Lightning itself would
inject under DDP (built by the callback, on one device too), and it remembers the order it
deals, which the DataLoader keeps (``in_order=True``), with any number of workers.

Checkpoints carry ``W0`` (until the restart), the separating-epoch state and the `Selection`
(in the callback's ``state_dict``, like ``StochasticWeightAveraging``'s average model), so a
run resumed from a Lightning checkpoint in phase 1 still restarts from ``W0``, and one resumed
in phase 2 trains on the same selection, checked against the training set.

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
from collections import deque
from collections.abc import Callable, Iterator, Mapping
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

from useful_data._checks import check_int, check_positive_int
from useful_data._targets import dataset_targets
from useful_data.dynamics import (
    DYNAMICS_STRATEGIES,
    DynamicsStrategy,
    TrainingDynamics,
    select_from_dynamics,
)
from useful_data.sampler import UpsampleSampler
from useful_data.selection import Selection, SelectionLike
from useful_data.selection import _dataset_fingerprint as dataset_fingerprint
from useful_data.selection import _resolve_selection as resolve_selection
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
except ImportError as err:  # pragma: no cover - exercised by simulating a missing install
    raise ImportError(
        "useful_data.lightning needs PyTorch Lightning: pip install 'useful-data[lightning]'"
    ) from err

__all__ = ["USEFUL"]

logger = logging.getLogger(__name__)

# find_slow_learnable arguments the callback fills in itself
_OWN_FIND_ARGS = frozenset({"model", "dataset", "logits", "targets", "eval_dataset"})
# the find_kwargs that mean something to a selection from the dynamics
_DYNAMICS_FIND_ARGS = frozenset({"upsample_factor", "progress"})
_STATE_VERSION = 1


class _UpsampledSource(_DataLoaderSource):
    """The fit loop's training-data source, with the loader it returns upsampled."""

    def __init__(self, source: _DataLoaderSource, callback: USEFUL, trainer: pl.Trainer) -> None:
        super().__init__(source.instance, source.name)
        self.original = source
        self.callback = callback
        self.trainer = trainer

    def dataloader(self) -> Any:
        return self.callback._upsample(super().dataloader(), self.trainer)


class _RecordingSampler(DistributedSampler[int]):
    """The ``DistributedSampler`` Lightning injects, remembering the indices it deals.

    The DataLoader asks its sampler for indices in the main process and returns the batches
    in that order (``in_order=True``), with or without workers, so the ``k``-th training batch
    of the epoch holds the ``k``-th ``batch_size`` indices dealt: `take` pops them.
    """

    def __init__(
        self, dataset: Dataset[Any], *, num_replicas: int, rank: int, shuffle: bool, seed: int
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.dealt: deque[int] = deque()

    def __iter__(self) -> Iterator[int]:
        self.dealt.clear()  # a new epoch: what the last one dealt and never trained on goes
        for index in super().__iter__():
            self.dealt.append(index)
            yield index

    def take(self, count: int) -> list[int]:
        """The next ``count`` indices dealt (fewer at the end of the epoch)."""
        return [self.dealt.popleft() for _ in range(min(count, len(self.dealt)))]


class USEFUL(Callback):
    """Run USEFUL inside ``Trainer.fit``: phase 1, selection, restart from ``W0`` upsampled.

    ``Trainer(max_epochs=T)`` is the full schedule: phase 1 trains ``t`` epochs, then phase 2
    trains ``T`` epochs from ``W0`` with a fresh optimizer and LR scheduler (``t + T`` in
    all; ``trainer.current_epoch`` keeps counting). ``configure_optimizers`` is called again
    at the restart, so a schedule built from ``self.trainer.estimated_stepping_batches`` spans
    phase 2's ``T`` epochs of upsampled data. Works with one device and with DDP
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
            ``backend``, ``n_init``, ``batch_size``, ``strategy``, ...); ``progress`` defaults
            to ``False``. With ``dynamics=``, only ``upsample_factor``.
        dynamics: Beyond the paper: a strategy of `select_from_dynamics`
            (``"learned_epoch"``, ``"cumulative_accuracy"``, ``"forgetting"`` or
            ``"confidence"``). Phase 1 then records a `TrainingDynamics` from the logits
            ``training_step`` returns as ``{"loss": loss, "logits": logits}`` (optionally
            ``"targets"``, else the labels are read from the training set's ``targets``), and
            the selection is made from it. ``None`` (default): the paper's k-means on the
            snapshot at epoch ``t``.

    Attributes:
        selection: The `Selection` once computed (or given as one, or as a file), else
            ``None``.
        separating_epoch: ``t`` once known (0 with ``selection=``), else ``None``.
        training_dynamics: With ``dynamics=``, the `TrainingDynamics` recorded during phase 1
            (the same on every rank under DDP), else ``None``.

    Raises:
        TypeError: if both ``separating_epoch`` and ``selection`` are given, or an argument has
            the wrong type.
        ValueError: if ``separating_epoch < 1``, ``find_kwargs`` names an argument the
            callback fills in or one `find_slow_learnable` does not take (or, with
            ``dynamics=``, one the dynamics do not use), or ``dynamics`` is not a strategy
            name. Errors about the trainer, the data and checkpoints are raised when the fit
            starts (see the Lightning guide).

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
        dynamics: DynamicsStrategy | None = None,
    ) -> None:
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
        self.monitor = monitor
        self.seed = None if seed is None else check_int("seed", seed)
        self.epoch_size = (
            None if epoch_size is None else check_positive_int("epoch_size", epoch_size)
        )
        self.eval_dataset = eval_dataset
        find_kwargs = dict(find_kwargs or {})
        if own := sorted(_OWN_FIND_ARGS & find_kwargs.keys()):
            raise ValueError(
                f"find_kwargs should not hold {own}: USEFUL passes the module and the "
                "training set itself (use eval_dataset= for an eval view)"
            )
        accepted = inspect.signature(find_slow_learnable).parameters.keys() - _OWN_FIND_ARGS
        if unknown := sorted(find_kwargs.keys() - accepted):
            raise ValueError(  # now, not after phase 1 has trained for t epochs
                f"find_kwargs: find_slow_learnable takes no {unknown}; it accepts "
                f"{sorted(accepted)}"
            )
        self.find_kwargs = {"progress": False, **find_kwargs}
        if dynamics is not None:
            if dynamics not in DYNAMICS_STRATEGIES:
                raise ValueError(
                    f"dynamics should be None (the paper's k-means) or one of "
                    f"{DYNAMICS_STRATEGIES}, but got dynamics={dynamics!r}"
                )
            if selection is not None or eval_dataset is not None:
                raise TypeError(
                    "dynamics= selects from what phase 1 records, so it takes neither "
                    "selection= (no phase 1) nor eval_dataset= (no eval pass)"
                )
            if unused := sorted(find_kwargs.keys() - _DYNAMICS_FIND_ARGS):
                raise ValueError(
                    f"with dynamics={dynamics!r}, find_kwargs may only hold "
                    f"{sorted(_DYNAMICS_FIND_ARGS)}, but got {unused}"
                )
        self.dynamics = dynamics
        self.training_dynamics: TrainingDynamics | None = None
        self._recorder: _RecordingSampler | None = None  # phase 1's sampler, with dynamics=
        self._batch_size = 0
        self._labels: np.ndarray | None = None
        self.selection: Selection | None = None
        self.separating_epoch: int | None = None
        self._upsample_from: SelectionLike | None = None  # what the sampler is built from
        self._initial_state: dict[str, torch.Tensor] | None = None
        self._restart_pending = False
        self._replay: list[float] = []  # the monitored curve of a resumed phase 1
        self._total_epochs = 0
        if selection is not None:  # set now: configure_optimizers may load the data early
            self._set_selection(selection, 0)

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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._upsample_from is None:  # fail now, not after phase 1
            self._training_set(trainer)
            self._eval_view()
            if self.dynamics is not None and trainer.fit_loop.restarted_mid_epoch:
                raise RuntimeError(
                    "USEFUL(dynamics=...) cannot resume phase 1 from a mid-epoch checkpoint: "
                    "the record holds whole epochs only. Resume from a checkpoint written at "
                    "the end of an epoch (ModelCheckpoint(every_n_epochs=1)), or start again"
                )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._recorder is None or self._upsample_from is not None:
            return
        if self.training_dynamics is None:  # built with the recorder, just above
            raise RuntimeError("USEFUL's recording sampler is set but its record is not")
        indices = self._recorder.take(self._batch_size)
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if not isinstance(logits, torch.Tensor):
            raise TypeError(
                "USEFUL(dynamics=...) records the logits training_step returns: return "
                '{"loss": loss, "logits": logits}, but got '
                + (f"keys {sorted(outputs)}" if isinstance(outputs, Mapping) else repr(outputs))
            )
        if logits.shape[0] != len(indices):
            raise RuntimeError(
                f"USEFUL(dynamics=...) expected the logits of the {len(indices)} examples the "
                f"sampler dealt for this batch, but got shape {tuple(logits.shape)}; return "
                "the logits of the whole batch, in its order"
            )
        targets = outputs.get("targets")
        if targets is None:
            if self._labels is None:
                raise TypeError(
                    "USEFUL(dynamics=...) needs the labels: the training set exposes no "
                    'targets attribute, so return them too: {"loss": loss, "logits": logits, '
                    '"targets": y}'
                )
            targets = torch.from_numpy(self._labels[indices])
        self.training_dynamics.update(logits, targets, indices)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._upsample_from is not None:
            return
        if self.training_dynamics is not None:
            self.training_dynamics.end_epoch()  # on every rank: it gathers under DDP
        epochs_done = trainer.current_epoch + 1
        if self._detector is not None:
            value = trainer.strategy.broadcast(self._logged_value(trainer), src=0)
            separate = self._detector.update(value)
        else:
            separate = epochs_done == self._fixed_epoch
        if not separate:
            return
        if self.training_dynamics is not None:
            if self.dynamics is None:  # the recorder exists only with dynamics=
                raise RuntimeError("USEFUL holds training dynamics but no dynamics= strategy")
            selection = select_from_dynamics(
                self.training_dynamics,
                strategy=self.dynamics,
                upsample_factor=self.find_kwargs.get("upsample_factor", 2),
            )
        else:
            train_set = self._training_set(trainer)
            selection = find_slow_learnable(
                pl_module, train_set, eval_dataset=self._eval_view(), **self.find_kwargs
            )
        self._set_selection(selection, epochs_done)
        self._restart_pending = True
        self._extend_schedule(trainer)
        # drop the phase-1 loader: Lightning requests the (now upsampled) one at the next epoch
        fit_loop = trainer.fit_loop
        if fit_loop._data_fetcher is not None:
            fit_loop._data_fetcher.teardown()
        fit_loop._combined_loader = None
        if trainer.is_global_zero:
            logger.info(
                "USEFUL: separating epoch %d, %d of %d examples slow-learnable; restarting "
                "from the initial weights for %d epochs",
                epochs_done,
                selection.num_slow_learnable,
                selection.num_examples,
                self._total_epochs,
            )

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
        dynamics = self.training_dynamics if self._upsample_from is None else None
        return {
            "version": _STATE_VERSION,
            "separating_epoch": self.separating_epoch,
            "restart_pending": self._restart_pending,
            "initial_state": self._initial_state,
            "monitored": None if self._detector is None else list(self._detector.errors),
            "selection": selection,
            "dynamics": None if dynamics is None else dynamics.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version")
        if version != _STATE_VERSION:
            raise ValueError(
                f"the checkpoint's USEFUL state has version={version!r}; this useful-data "
                f"reads version {_STATE_VERSION}"
            )
        epoch = state_dict["separating_epoch"]
        if self._fixed_epoch is not None and epoch not in (None, self._fixed_epoch):
            raise ValueError(
                f"the checkpoint separated at epoch {epoch}, but this callback has "
                f"separating_epoch={self._fixed_epoch}; resume with the same setting"
            )
        saved = state_dict["selection"]
        if saved is not None:
            if "given" in saved:  # a mask or indices given as selection=
                selection: SelectionLike = saved["given"].numpy()
            else:
                selection = Selection(
                    mask=saved["mask"].numpy(),
                    loss=saved["loss"].numpy(),
                    targets=saved["targets"].numpy(),
                    upsample_factor=saved["upsample_factor"],
                    params=json.loads(saved["params"]),
                    unsplit=dict(saved["unsplit"]),
                )
            self._set_selection(selection, epoch)
        else:  # replayed into the detector once it exists (the default one: at fit start)
            self._replay = list(state_dict["monitored"] or [])
        recorded = state_dict.get("dynamics")  # phase 1 with dynamics=: the closed epochs
        if recorded is not None and saved is None:
            self.training_dynamics = TrainingDynamics(int(recorded["num_examples"]))
            self.training_dynamics.load_state_dict(recorded)
        self._restart_pending = bool(state_dict["restart_pending"])
        self._initial_state = state_dict["initial_state"]

    # --- helpers -----------------------------------------------------------------------
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
        """The training loader with an `UpsampleSampler` in place of its sampler (phase 1 with
        dynamics=: a `_RecordingSampler`)."""
        selection = self._upsample_from
        if selection is None:
            return loader if self.dynamics is None else self._recording(loader, trainer)
        if not isinstance(loader, DataLoader):
            raise TypeError(
                "USEFUL upsamples one training DataLoader, but train_dataloader() returned "
                f"{type(loader).__name__}; return a single DataLoader"
            )
        dataset = _map_style("the training set", loader.dataset)
        num_examples = len(dataset)  # type: ignore[arg-type]
        try:
            resolve_selection(selection, num_examples)
            targets = dataset_targets(dataset)
            if (
                self.selection is not None
                and targets is not None
                and dataset_fingerprint(targets) != self.selection.fingerprint
            ):
                raise ValueError(
                    "same length but different labels (fingerprint mismatch); it was computed "
                    "on another dataset, split or order"
                )
        except ValueError as err:
            raise ValueError(
                f"USEFUL's selection does not match the training set: {err}. Resume from a "
                "checkpoint of a run on the same training data"
            ) from err
        shuffle = _shuffles(loader.sampler, "an UpsampleSampler")
        sampler = UpsampleSampler(
            selection, num_examples, shuffle=shuffle, seed=self._seed(), epoch_size=self.epoch_size
        )
        return _with_sampler(loader, sampler)

    def _seed(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _recording(self, loader: Any, trainer: pl.Trainer) -> Any:
        """Phase 1's loader with dynamics=: a `_RecordingSampler` in place of its sampler."""
        if not isinstance(loader, DataLoader):
            raise TypeError(
                "USEFUL(dynamics=...) records one training DataLoader, but train_dataloader() "
                f"returned {type(loader).__name__}; return a single DataLoader"
            )
        if not getattr(loader, "in_order", True):
            raise ValueError(
                "USEFUL(dynamics=...) knows each batch's indices from the order the sampler "
                "deals them, which DataLoader(in_order=False) does not keep; leave in_order=True"
            )
        dataset = _map_style("the training set", loader.dataset)
        num_examples = len(dataset)  # type: ignore[arg-type]
        if self.training_dynamics is None:
            self.training_dynamics = TrainingDynamics(num_examples)
        elif self.training_dynamics.num_examples != num_examples:
            raise ValueError(
                "USEFUL's training dynamics were recorded for "
                f"{self.training_dynamics.num_examples} examples, but the training set has "
                f"{num_examples}; resume on the same data"
            )
        if loader.batch_size is None:
            raise ValueError(
                "USEFUL(dynamics=...) reads each batch's indices in batch_size steps, so it needs "
                "a DataLoader with a batch_size, not batch_sampler= or batch_size=None"
            )
        # the sampler Lightning injects under DDP (same shuffle, seed and sharding), on one
        # device too, so that it can tell the indices of every batch
        replicas = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
        self._recorder = _RecordingSampler(
            dataset,
            num_replicas=int(replicas.get("num_replicas", 1)),
            rank=int(replicas.get("rank", 0)),
            shuffle=_shuffles(loader.sampler, "a DistributedSampler that records the order"),
            seed=self._seed(),
        )
        self._batch_size = loader.batch_size
        self._labels = dataset_targets(dataset)
        return _with_sampler(loader, self._recorder)


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

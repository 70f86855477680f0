"""useful_data.lightning: USEFUL inside Trainer.fit, counted item by item on every rank."""

from __future__ import annotations

import builtins
import functools
import importlib
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from _lightning_helpers import (  # noqa: E402
    SLOW,
    Data,
    IndexedData,
    Model,
    N,
    ShownMessages,
    Stream,
    trainer,
)
from torch.utils.data import DataLoader, SequentialSampler, WeightedRandomSampler  # noqa: E402

from useful_data import SAM, Selection, UpsampleSampler, find_slow_learnable  # noqa: E402
from useful_data.lightning import USEFUL  # noqa: E402
from useful_data.separating_epoch import SeparatingEpoch, find_separating_epoch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / "_lightning_helpers.py"
SKLEARN = {"backend": "sklearn"}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def upsampled(selection, epoch=0, shuffle=True, num_replicas=1, rank=0):
    sampler = UpsampleSampler(
        selection, N, shuffle=shuffle, num_replicas=num_replicas, rank=rank, seed=0
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def expected_counts(slow):
    return Counter({i: 2 if i in set(slow) else 1 for i in range(N)})


# --- two processes, gloo, Trainer(strategy="ddp") under torchrun --------------------------
@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One torchrun launch runs every scenario of _lightning_helpers.py; {scenario: [rank 0,
    rank 1]} of what each rank trained on."""
    from test_distributed import free_port

    out = tmp_path_factory.mktemp("lightning_ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(HELPERS), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = {}
    for path in sorted(out.glob("*_rank*.json")):
        name, rank = path.stem.rsplit("_rank", 1)
        runs.setdefault(name, {})[int(rank)] = json.loads(path.read_text())
    return {name: [ranks[0], ranks[1]] for name, ranks in runs.items()}


@pytest.mark.parametrize("scenario", ["sampler_early", "sampler", "dataset"])
def test_user_built_upsampling_under_ddp_trains_on_the_whole_multiset(ddp_runs, scenario):
    """UpsampleSampler built in train_dataloader() or before the process group exists, or
    USEFULDataset, with Lightning's default use_distributed_sampler=True: every epoch the two
    ranks together train on 50 items, the 40 examples with the 10 slow-learnable ones twice."""
    ranks = ddp_runs[scenario]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for epoch in ("0", "1"):
        per_rank = [r["seen"][epoch] for r in ranks]
        assert [len(items) for items in per_rank] == [25, 25]
        assert Counter(per_rank[0] + per_rank[1]) == expected_counts(SLOW)
    assert ranks[0]["seen"]["0"] != ranks[0]["seen"]["1"]  # set_epoch reached the shuffle


@pytest.mark.parametrize("scenario", ["useful", "useful_sam", "useful_stateful"])
def test_callback_under_ddp(ddp_runs, scenario):
    """The whole workflow on 2 ranks (SGD + StepLR, SAM with manual optimization, or
    torchdata's StatefulDataLoader): phase 1 on the 40 examples, one selection on both ranks,
    then a restart from W0 with a fresh optimizer in which each rank trains on exactly its
    shard of the upsampled multiset."""
    ranks = ddp_runs[scenario]
    selection = ranks[0]["selection"]
    assert ranks[1]["selection"] == selection and 0 < len(selection) < N
    for epoch in ("0", "1"):  # phase 1: t=2 epochs of the plain data, sharded by Lightning
        per_rank = [r["seen"][epoch] for r in ranks]
        assert [len(items) for items in per_rank] == [20, 20]
        assert Counter(per_rank[0] + per_rank[1]) == expected_counts([])
    mask = np.isin(np.arange(N), selection)
    for epoch in (2, 3):  # phase 2: max_epochs=2 more epochs, upsampled
        for rank, record in enumerate(ranks):
            shard = upsampled(mask, epoch, num_replicas=2, rank=rank)
            assert record["seen"][str(epoch)] == shard
        both = Counter(ranks[0]["seen"][str(epoch)] + ranks[1]["seen"][str(epoch)])
        padding = both - expected_counts(selection)  # DistributedSampler's padding, < 2
        assert (
            both - padding == expected_counts(selection)
            and padding.total() == (N + len(selection)) % 2
        )
    assert all(r["restarted_from_w0"] and r["fresh_optimizer"] for r in ranks)
    assert set(ranks[0]["seen"]) == {"0", "1", "2", "3"}


def test_plan_and_summary_show_on_rank_zero_only(ddp_runs):
    """Under DDP, Lightning's console output shows the plan and the selection summary once:
    on rank 0, not on rank 1."""
    shown = [r["shown"] for r in ddp_runs["useful"]]
    assert len(shown[0]) == 2 and shown[1] == []
    assert "t=2 epochs (phase 1) + T=2 epochs" in shown[0][0]
    assert "selected per class" in shown[0][1]


# --- one process -------------------------------------------------------------------------
def test_workflow_is_the_hand_written_one():
    """Phase 1 for t epochs, the selection find_slow_learnable gives on those weights, then
    T epochs from W0 with a fresh optimizer and scheduler on the upsampled data."""
    model, useful = Model(), USEFUL(separating_epoch=2, find_kwargs=SKLEARN)
    w0 = [p.detach().clone() for p in model.parameters()]
    fit = trainer(max_epochs=3, callbacks=[useful])
    fit.fit(model, datamodule=Data(shuffle=False))

    by_hand = Model()  # the same two epochs without the callback, then the selection
    trainer(max_epochs=2).fit(by_hand, datamodule=Data(shuffle=False))
    expected = find_slow_learnable(by_hand, IndexedData(), progress=False, **SKLEARN)
    np.testing.assert_array_equal(useful.selection.mask, expected.mask)
    assert useful.separating_epoch == 2 and useful.phase == "upsampled"

    assert fit.current_epoch == 2 + 3
    assert [model.seen[e] for e in (0, 1)] == [list(range(N))] * 2
    for epoch in (2, 3, 4):
        assert model.seen[epoch] == upsampled(expected.mask, epoch, shuffle=False)
    restart = model.epoch_start[2]
    assert all(torch.equal(a, b) for a, b in zip(restart["weights"], w0, strict=True))
    assert restart["optimizer_state"] == 0  # no momentum carried over
    assert restart["lr"] == 0.1 and model.epoch_start[1]["lr"] == 0.05  # the schedule restarts
    assert model.epoch_start[4]["lr"] == 0.025
    # a schedule built in configure_optimizers spans phase 2: T epochs of upsampled batches
    upsampled_batches = -(-(N + useful.selection.num_slow_learnable) // 5)
    assert model.estimated_steps == [3 * N // 5, 3 * upsampled_batches]


class AutoSAMModel(Model):
    """SAM returned to Lightning's automatic optimization: step(closure), two passes a batch."""

    def configure_optimizers(self):
        return SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)


def test_sam_with_automatic_optimization_restarts_with_a_fresh_sam():
    model, useful = AutoSAMModel(), USEFUL(separating_epoch=2, find_kwargs=SKLEARN)
    trainer(max_epochs=2, callbacks=[useful]).fit(model, datamodule=Data())
    assert model.epoch_start[1]["optimizer_state"] > 0  # SAM's buffers of phase 1
    assert model.epoch_start[2]["optimizer_state"] == 0  # a new SAM at the restart
    for epoch in (2, 3):  # training_step runs twice per batch, once per SAM pass
        assert Counter(model.seen[epoch]) == Counter(
            {i: 2 * n for i, n in expected_counts(useful.selection.indices).items()}
        )


class CurveModel(Model):
    """Logs a prescribed training-error curve, one value per epoch."""

    curve = (30.0, 12.0, 11.0, 10.5, 10.2, 10.0, 9.9, 9.8, 9.7)

    def training_step(self, batch, batch_idx):
        self.log("train_error", self.curve[self.current_epoch], on_epoch=True)
        return super().training_step(batch, batch_idx)


def test_separating_epoch_detected_from_the_logged_error():
    detector = SeparatingEpoch(6, min_epochs=2, smoothing=1, patience=1, max_fraction=1.0)
    model = CurveModel()
    useful = USEFUL(detector, monitor="train_error", find_kwargs=SKLEARN)
    fit = trainer(max_epochs=6, callbacks=[useful])
    fit.fit(model, datamodule=Data())
    rule = find_separating_epoch(
        CurveModel.curve, total_epochs=6, min_epochs=2, smoothing=1, patience=1, max_fraction=1
    )
    assert useful.separating_epoch == rule == 3
    assert detector.errors == list(CurveModel.curve[:3])
    assert fit.current_epoch == 3 + 6
    assert len(model.seen[3]) == N + useful.selection.num_slow_learnable


def test_resuming_phase_one_keeps_the_detected_curve(tmp_path):
    """The default detector is built when the fit starts; a resumed one replays the curve."""
    every_epoch = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    useful = USEFUL(monitor="train_error", find_kwargs=SKLEARN)
    fit = trainer(max_epochs=6, callbacks=[useful, every_epoch], enable_checkpointing=True)
    fit.fit(CurveModel(), datamodule=Data())
    resumed = USEFUL(monitor="train_error", find_kwargs=SKLEARN)
    trainer(max_epochs=6, callbacks=[resumed]).fit(
        CurveModel(), datamodule=Data(), ckpt_path=tmp_path / "epoch=0.ckpt"
    )
    assert resumed.separating_epoch == useful.separating_epoch == 3  # the cap of T=6
    assert resumed._detector.errors == list(CurveModel.curve[:3])


def test_precomputed_selection_upsamples_from_the_first_epoch(tmp_path):
    model = Model()
    mask = np.isin(np.arange(N), SLOW)
    fit = trainer(max_epochs=2, callbacks=[USEFUL(selection=mask)])
    fit.fit(model, datamodule=Data())
    assert fit.current_epoch == 2
    for epoch in (0, 1):
        assert model.seen[epoch] == upsampled(mask, epoch)
    assert model.epoch_start[0]["lr"] == 0.1  # no restart: nothing was reset


def test_equal_length_epochs():
    """epoch_size=N: phase 2 keeps SGD's epoch length, continuing through the multiset."""
    model, mask = Model(), np.isin(np.arange(N), SLOW)
    trainer(max_epochs=5, callbacks=[USEFUL(selection=mask, epoch_size=N)]).fit(model, Data())
    stream = UpsampleSampler(mask, N, seed=0, epoch_size=N)
    for epoch in range(5):
        stream.set_epoch(epoch)
        assert model.seen[epoch] == list(stream) and len(model.seen[epoch]) == N
    assert Counter(i for e in range(5) for i in model.seen[e]) == Counter(
        {i: 4 * n for i, n in expected_counts(SLOW).items()}
    )  # 200 items: the 50-item multiset four times over


# --- checkpoints ---------------------------------------------------------------------------
def fit_with_checkpoints(
    path, max_epochs, separating_epoch, data=None, ckpt=None, seed=0, selection=None
):
    model = Model(seed=seed)
    if selection is None:
        useful = USEFUL(separating_epoch, find_kwargs=SKLEARN)
    else:
        useful = USEFUL(selection=selection)
    every_epoch = pl.callbacks.ModelCheckpoint(
        dirpath=path, filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    fit = trainer(max_epochs=max_epochs, callbacks=[useful, every_epoch], enable_checkpointing=True)
    fit.fit(model, datamodule=data or Data(), ckpt_path=ckpt)
    return model, useful


@pytest.mark.parametrize(
    ("checkpoint", "epochs_left"),
    [("epoch=0.ckpt", [1, 2, 3]), ("epoch=1.ckpt", [2, 3])],  # restart pending; in phase 2
)
def test_resuming_phase_two_trains_on_the_same_selection(tmp_path, checkpoint, epochs_left):
    model, useful = fit_with_checkpoints(tmp_path, 3, 1)
    resumed, useful2 = fit_with_checkpoints(
        tmp_path / "resumed", 3, 1, ckpt=tmp_path / checkpoint, seed=1
    )
    np.testing.assert_array_equal(useful2.selection.mask, useful.selection.mask)
    assert useful2.selection.params == useful.selection.params
    assert sorted(resumed.seen) == epochs_left
    assert [resumed.seen[e] for e in epochs_left] == [model.seen[e] for e in epochs_left]
    for a, b in zip(resumed.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # W0 travels until the restart, then no longer
    state = torch.load(tmp_path / checkpoint, weights_only=True)["callbacks"]["USEFUL"]
    assert (state["initial_state"] is None) == (checkpoint == "epoch=1.ckpt")
    assert state["selection"]["mask"].sum() > 0


def test_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(N, 3, generator=g), torch.arange(N) % 3
    selection = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    mask = np.isin(np.arange(N), SLOW)
    for given, expected in ((selection, selection.mask), (SLOW, SLOW), (mask, mask)):
        torch.save({"state": USEFUL(selection=given).state_dict()}, tmp_path / "state.pt")
        loaded = USEFUL()
        loaded.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True)["state"])
        assert loaded.phase == "upsampled" and loaded.separating_epoch == 0
        upsampled_from = loaded.selection.mask if loaded.selection else loaded._upsample_from
        np.testing.assert_array_equal(np.asarray(upsampled_from), expected)
        if given is selection:  # the whole Selection travels, not only its mask
            for field in ("mask", "loss", "targets"):
                np.testing.assert_array_equal(
                    getattr(loaded.selection, field), getattr(selection, field)
                )
            assert loaded.selection.params == selection.params
            assert loaded.selection.unsplit == selection.unsplit
        else:
            assert loaded.selection is None


def test_resuming_phase_one_restarts_from_the_initial_weights(tmp_path):
    data = Data(shuffle=False)
    model, useful = fit_with_checkpoints(tmp_path, 2, 2, data=data)
    # a module initialised differently resumes after epoch 1 of phase 1
    resumed, useful2 = fit_with_checkpoints(
        tmp_path / "resumed", 2, 2, data=data, ckpt=tmp_path / "epoch=0.ckpt", seed=1
    )
    w0 = [p.detach() for p in Model(seed=0).parameters()]
    restart = resumed.epoch_start[2]["weights"]
    assert all(torch.equal(a, b) for a, b in zip(restart, w0, strict=True))
    np.testing.assert_array_equal(useful2.selection.mask, useful.selection.mask)
    for a, b in zip(resumed.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class StatefulData(Data):
    def train_dataloader(self):
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(self.train_set, batch_size=5, shuffle=True)


class ConstantLR(Model):
    """No estimated_stepping_batches: reading it makes Lightning load the training data
    before it restores the loader's state, which it then never restores."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_mid_epoch_resume_with_a_stateful_dataloader(tmp_path):
    """torchdata's StatefulDataLoader keeps its type when USEFUL swaps its sampler, and its
    state (the UpsampleSampler's position) travels in the checkpoint: resuming mid-epoch in
    phase 2 trains exactly on the indices that epoch had not reached."""
    pytest.importorskip("torchdata")
    every_3 = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}-{step}", save_top_k=-1, every_n_train_steps=3
    )
    model, useful = ConstantLR(), USEFUL(1, find_kwargs=SKLEARN)
    fit = trainer(max_epochs=2, callbacks=[useful, every_3], enable_checkpointing=True)
    fit.fit(model, datamodule=StatefulData())
    resumed = ConstantLR(seed=1)
    trainer(max_epochs=2, callbacks=[USEFUL(1, find_kwargs=SKLEARN)]).fit(
        resumed, datamodule=StatefulData(), ckpt_path=tmp_path / "epoch=1-step=12.ckpt"
    )
    done = (12 - N // 5) * 5  # items of phase 2's first epoch trained before step 12
    assert resumed.seen[1] == model.seen[1][done:]
    assert resumed.seen[2] == model.seen[2]
    assert len(model.seen[1]) == N + useful.selection.num_slow_learnable


class StatefulBatchSamplerData(Data):
    def train_dataloader(self):
        from torchdata.stateful_dataloader import StatefulDataLoader
        from torchdata.stateful_dataloader.sampler import BatchSampler

        batches = BatchSampler(SequentialSampler(self.train_set), batch_size=5, drop_last=False)
        return StatefulDataLoader(self.train_set, batch_sampler=batches)


def test_stateful_dataloader_given_a_batch_sampler_is_upsampled_in_batches():
    """A StatefulDataLoader built with batch_sampler= (no batch_size) is rebuilt by Lightning's
    own rule, still in batches of 5, over the upsampled multiset."""
    pytest.importorskip("torchdata")
    model = Model()
    trainer(max_epochs=1, callbacks=[USEFUL(selection=SLOW)]).fit(
        model, datamodule=StatefulBatchSamplerData()
    )
    assert Counter(model.seen[0]) == expected_counts(SLOW)  # unbatched, the step would fail


def test_checkpoint_whose_selection_does_not_match_the_data(tmp_path):
    fit_with_checkpoints(tmp_path, 2, 1)
    with pytest.raises(ValueError, match=r"selection does not match the training set.*fingerpr"):
        fit_with_checkpoints(
            tmp_path / "b", 2, 1, data=Data(flip=True), ckpt=tmp_path / "epoch=1.ckpt"
        )
    with pytest.raises(ValueError, match="separated at epoch 1, but this callback has"):
        fit_with_checkpoints(tmp_path / "c", 2, 2, ckpt=tmp_path / "epoch=1.ckpt")


def test_checkpoint_without_the_callback_state(tmp_path):
    every_epoch = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}")
    trainer(max_epochs=1, callbacks=[every_epoch], enable_checkpointing=True).fit(
        Model(), datamodule=Data()
    )
    with pytest.raises(RuntimeError, match=r"holds no USEFUL state.*W0"):
        fit_with_checkpoints(tmp_path / "b", 2, 1, ckpt=tmp_path / "epoch=0.ckpt")


def test_resuming_with_another_selection_is_refused(tmp_path):
    """A checkpoint that holds a selection resumes with selection=None or the same one; with
    another, the fit is refused and told which to pass (not trained on one silently)."""
    _, useful = fit_with_checkpoints(tmp_path, 2, 1)  # phase 2 from epoch 1 on
    ckpt = tmp_path / "epoch=1.ckpt"
    other = np.setdiff1d(np.arange(N), useful.selection.indices)[:5]
    for given in (other, useful.selection.indices[:-1]):
        with pytest.raises(ValueError, match=r"pass selection=None to resume it.*another"):
            fit_with_checkpoints(tmp_path / "b", 3, None, ckpt=ckpt, selection=given)
    _, resumed = fit_with_checkpoints(
        tmp_path / "c", 2, None, ckpt=ckpt, selection=useful.selection
    )
    np.testing.assert_array_equal(resumed.selection.mask, useful.selection.mask)
    _, given = fit_with_checkpoints(tmp_path / "d", 2, None, selection=SLOW)
    fit_with_checkpoints(
        tmp_path / "e", 3, None, ckpt=tmp_path / "d" / "epoch=0.ckpt", selection=SLOW
    )
    with pytest.raises(ValueError, match="pass selection=None to resume it"):
        fit_with_checkpoints(
            tmp_path / "f", 3, None, ckpt=tmp_path / "d" / "epoch=0.ckpt", selection=SLOW[1:]
        )
    fit_with_checkpoints(tmp_path / "g", 2, 2)  # phase 1 after epoch 0: no selection yet
    with pytest.raises(ValueError, match=r"in phase 1.*pass separating_epoch="):
        fit_with_checkpoints(tmp_path / "h", 2, None, ckpt=tmp_path / "g" / "epoch=0.ckpt",
                             selection=SLOW)  # fmt: skip


def test_deeply_nested_params_in_a_checkpoint_raise_value_error(tmp_path):
    """A crafted checkpoint whose selection params are a 100,000-deep JSON array is refused
    with a ValueError, not a RecursionError."""
    fit_with_checkpoints(tmp_path, 2, 1)
    checkpoint = torch.load(tmp_path / "epoch=1.ckpt", weights_only=True)
    checkpoint["callbacks"]["USEFUL"]["selection"]["params"] = "[" * 100_000 + "]" * 100_000
    torch.save(checkpoint, tmp_path / "deep.ckpt")
    with pytest.raises(ValueError, match=r"unreadable selection params.*nested too deeply"):
        fit_with_checkpoints(tmp_path / "b", 2, 1, ckpt=tmp_path / "deep.ckpt")


def test_selection_computed_with_other_targets_is_accepted():
    """The target_transform workflow: find_slow_learnable(..., targets=) on labels other than
    the dataset's .targets records the dataset's own fingerprint, and the callback accepts
    that selection for the dataset (Selection.check_fits, as USEFULDataset does)."""
    data = IndexedData()
    relabelled = 1 - data.targets  # what a target_transform would hand the model
    selection = find_slow_learnable(Model(), data, targets=relabelled, backend="sklearn")
    assert selection.fingerprint != selection.data_fingerprint
    model = Model()
    trainer(max_epochs=1, callbacks=[USEFUL(selection=selection)]).fit(model, datamodule=Data())
    assert Counter(model.seen[0]) == expected_counts(selection.indices.tolist())
    reordered = Data()
    reordered.train_set.targets = torch.arange(N) // (N // 2)  # fits neither fingerprint
    with pytest.raises(ValueError, match="selection does not match the training set"):
        fit_one(USEFUL(selection=selection), reordered, max_epochs=1)


def shown_messages(fit_call):
    """What Lightning's console output shows of USEFUL during ``fit_call()``."""
    shown = ShownMessages()
    logging.getLogger("lightning.pytorch").addHandler(shown)
    try:
        fit_call()
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(shown)
    return shown.messages


def test_plan_and_summary_are_shown_where_lightning_prints():
    """At the start: t (phase 1) + T (phase 2) and what max_epochs becomes; after the
    selection: per class, separation, relative cost; verbose=False keeps both off the
    console output."""
    useful = USEFUL(2, find_kwargs=SKLEARN)
    plan, summary = shown_messages(lambda: fit_one(useful, Data(), max_epochs=3))
    assert "t=2 epochs (phase 1) + T=3 epochs (phase 2" in plan
    assert "max_epochs=3 becomes 5" in plan
    sel = useful.selection
    per_class = ", ".join(f"{c.label}: {c.num_slow_learnable}/20" for c in sel.class_summary())
    assert f"{sel.num_slow_learnable} of {N} examples slow-learnable" in summary
    assert f"selected per class: {per_class}" in summary
    assert f"loss ROC-AUC {sel.separation.auc:.3f}" in summary
    cost = sel.relative_cost(separating_epoch=2, total_epochs=3)
    assert f"relative cost: {cost:.2f}x plain training" in summary
    detected = shown_messages(lambda: fit_one(USEFUL(find_kwargs=SKLEARN), Data(), max_epochs=5))[0]
    assert "t detected from 'train_loss'" in detected and "becomes t + 5" in detected
    [given] = shown_messages(lambda: fit_one(USEFUL(selection=SLOW), Data(), max_epochs=1))
    assert "no phase 1" in given
    quiet = USEFUL(1, find_kwargs=SKLEARN, verbose=False)
    assert shown_messages(lambda: fit_one(quiet, Data(), max_epochs=1)) == []


@pytest.mark.parametrize(
    ("bar", "kwargs", "expected"),
    [
        (True, {}, True),
        (False, {}, False),
        (True, {"verbose": False}, False),
        (True, {"find_kwargs": {"progress": False}}, False),
        (False, {"find_kwargs": {"progress": True}}, True),
    ],
)
def test_selection_pass_shows_a_progress_bar_when_the_trainer_does(
    monkeypatch, bar, kwargs, expected
):
    import useful_data.lightning as integration

    seen = []

    @functools.wraps(find_slow_learnable)
    def recording(*args, **find_kwargs):
        seen.append(find_kwargs["progress"])
        return find_slow_learnable(*args, **{**find_kwargs, "backend": "sklearn"})

    monkeypatch.setattr(integration, "find_slow_learnable", recording)
    fit_one(USEFUL(1, **kwargs), Data(), max_epochs=1, enable_progress_bar=bar)
    assert seen == [expected]


# --- bad input -----------------------------------------------------------------------------
class StreamData(Data):
    def train_dataloader(self):
        return DataLoader(Stream(), batch_size=5)


class WeightedData(Data):
    def train_dataloader(self):
        sampler = WeightedRandomSampler(torch.ones(N), N)
        return DataLoader(self.train_set, batch_size=5, sampler=sampler)


class NoTrainingSet(pl.LightningDataModule):
    def val_dataloader(self):
        return DataLoader(IndexedData(), batch_size=5)


def fit_one(useful, data, max_epochs=2, **kwargs):
    trainer(max_epochs=max_epochs, callbacks=[useful], **kwargs).fit(Model(), datamodule=data)


def test_iterable_dataset_is_refused_before_training():
    with pytest.raises(TypeError, match=r"the training set to be a map-style.*Stream"):
        fit_one(USEFUL(1), StreamData())
    with pytest.raises(TypeError, match="eval_dataset to be a map-style"):
        fit_one(USEFUL(1, eval_dataset=lambda: Stream()), Data())


def test_datamodule_without_a_training_set():
    with pytest.raises(ValueError, match="USEFUL needs a training set, but neither"):
        fit_one(USEFUL(1), NoTrainingSet())


def test_separating_epoch_past_max_epochs():
    with pytest.raises(ValueError, match="separating_epoch=5 and max_epochs=3"):
        fit_one(USEFUL(5), Data(), max_epochs=3)
    with pytest.raises(ValueError, match="as late as epoch 40, past max_epochs=3"):
        fit_one(USEFUL(SeparatingEpoch(200)), Data(), max_epochs=3)
    with pytest.raises(ValueError, match=r"finite schedule.*max_epochs=-1"):
        fit_one(USEFUL(1), Data(), max_epochs=-1)
    with pytest.raises(ValueError, match="max_steps=3"):
        fit_one(USEFUL(1), Data(), max_steps=3)


@pytest.mark.parametrize("name", ["DeepSpeedStrategy", "FSDPStrategy", "XLAStrategy"])
def test_sharded_and_xla_strategies_are_refused(name):
    strategy = object.__new__(getattr(pl.strategies, name))  # needs no deepspeed/XLA install
    fake_trainer = type("FakeTrainer", (), {"strategy": strategy})()
    with pytest.raises(ValueError, match=f"single-device and DDP.*strategy={name}"):
        USEFUL(1).setup(fake_trainer, Model(), "fit")


def test_bad_arguments_and_data():
    with pytest.raises(TypeError, match="not both"):
        USEFUL(2, selection=SLOW)
    with pytest.raises(ValueError, match=r"find_kwargs should not hold \['model'\]"):
        USEFUL(2, find_kwargs={"model": None})
    with pytest.raises(ValueError, match=r"find_slow_learnable takes no \['upsample_facter'\]"):
        USEFUL(2, find_kwargs={"upsample_facter": 3})  # a typo fails now, not after phase 1
    with pytest.raises(ValueError, match="separating_epoch"):
        USEFUL(0)
    with pytest.raises(TypeError, match=r"selection should be a Selection.*selection=123"):
        USEFUL(selection=123)
    with pytest.raises(TypeError, match=r"eval_dataset should be a map-style.*eval_dataset=5"):
        USEFUL(eval_dataset=5)
    with pytest.raises(TypeError, match=r"eval_dataset should be a map-style.*Stream"):
        USEFUL(eval_dataset=Stream())
    with pytest.raises(TypeError, match=r"dynamics=\.\.\.\) was removed.*useful_data.experimental"):
        USEFUL(2, dynamics="confidence")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['separating_epochs'\]"):
        USEFUL(2, separating_epochs=3)
    old_phase_one = {**USEFUL(2).state_dict(), "dynamics": {"num_examples": N}}
    with pytest.raises(ValueError, match=r"phase 1 of a fit with USEFUL\(dynamics=\.\.\.\)"):
        USEFUL(2).load_state_dict(old_phase_one)  # a 0.x checkpoint: not resumed as k-means
    with pytest.raises(TypeError, match="verbose should be True or False"):
        USEFUL(2, verbose="yes")
    with pytest.raises(TypeError, match=r"shuffle=True or shuffle=False.*WeightedRandomSampler"):
        fit_one(USEFUL(selection=SLOW), WeightedData())
    with pytest.raises(RuntimeError, match=r"'train_acc', which was not logged.*train_loss"):
        fit_one(USEFUL(monitor="train_acc"), Data(), max_epochs=3)


def test_missing_lightning_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_lightning(name, *args, **kwargs):
        if name == "lightning" or name.startswith("lightning."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lightning)
    monkeypatch.delitem(sys.modules, "useful_data.lightning")
    for name in [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"pip install 'useful-data\[lightning\]'"):
        importlib.import_module("useful_data.lightning")


def test_import_useful_data_does_not_import_lightning():
    code = "import sys, useful_data; print(any(m.startswith('lightning') for m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda s: s.pop("selection"), r"is missing \['selection'\]"),
        (lambda s: s.pop("restart_pending"), r"is missing \['restart_pending'\]"),
        (lambda s: s.update(separating_epoch="1"), "has separating_epoch='1'"),
        (lambda s: s.update(monitored=5), "has monitored=5"),
        (lambda s: s["selection"].pop("mask"), "should hold a selection with the fields"),
        (lambda s: s["selection"].update(mask=[True] * N), "arrays as tensors"),
        (lambda s: s["selection"].update(unsplit=5), "holds a malformed selection"),
        (lambda s: s["selection"].update(upsample_factor=-1), "malformed selection.*upsample"),
    ],
)  # fmt: skip
def test_an_incomplete_or_edited_state_is_a_value_error(cut, message):
    """Issue #25 (incomplete checkpoints): a cut-short or edited callback state is refused
    with a ValueError saying what is wrong, never a KeyError or AttributeError."""
    mask = np.isin(np.arange(N), SLOW)
    selection = Selection(mask=mask, loss=np.zeros(N), targets=np.arange(N) % 2)
    state = USEFUL(selection=selection).state_dict()
    cut(state)
    with pytest.raises(ValueError, match=message):
        USEFUL().load_state_dict(state)


@pytest.mark.parametrize(
    ("find_kwargs", "error", "message"),
    [
        ({"upsample_factor": 0}, ValueError, "upsample_factor should be an integer >= 1"),
        ({"upsample_factor": 2.0}, TypeError, "upsample_factor should be an integer"),
        ({"seed": -1}, ValueError, "seed should be an integer >= 0"),
        ({"n_init": 0}, ValueError, "n_init should be an integer >= 1"),
        ({"n_init": 10**9}, ValueError, r"n_init should be an integer in \[1, 1000\]"),
        ({"batch_size": 0}, ValueError, "batch_size should be an integer >= 1"),
        ({"max_examples": -5}, ValueError, "max_examples should be an integer >= 1"),
        ({"num_workers": -1}, ValueError, "num_workers should be an integer >= 0"),
        ({"backend": "gpu"}, ValueError, "backend should be one of"),
    ],
)
def test_find_kwargs_numbers_are_checked_at_construction(find_kwargs, error, message):
    """Issue #25: refused when the callback is built, not after phase 1 trained t epochs."""
    with pytest.raises(error, match=message):
        USEFUL(2, find_kwargs=find_kwargs)
    USEFUL(2, find_kwargs={"batch_size": None, "max_examples": None, "upsample_factor": 3})


@pytest.mark.parametrize(
    ("selection", "error", "message"),
    [
        ([1.5, 2.0], TypeError, "boolean mask or integer indices, but got dtype float64"),
        ([-1, 3], ValueError, "indices should be >= 0, but got index -1"),
        ([2, 2], ValueError, "should not repeat an index"),
        ([[1, 2]], ValueError, r"should be 1-D, but got shape \(1, 2\)"),
        (["a"], TypeError, "boolean mask or integer indices"),
    ],
)
def test_given_indices_are_checked_at_construction(selection, error, message):
    """Issue #25 (accepted at construction): what needs no dataset size is checked when the
    callback is built; the range is checked when the fit starts."""
    with pytest.raises(error, match=message):
        USEFUL(selection=selection)
    USEFUL(selection=[]), USEFUL(selection=[10**12]), USEFUL(selection=np.ones(3, bool))


def test_resuming_phase_two_with_another_epoch_size_is_refused():
    """Issue #25 (conflicts): a phase-2 state records its epoch_size; resuming it with another
    would silently change which items the remaining epochs train on."""
    selection = Selection(mask=np.isin(np.arange(N), SLOW), loss=np.zeros(N),
                          targets=np.arange(N) % 2)  # fmt: skip
    state = USEFUL(selection=selection, epoch_size=N).state_dict()
    for other in (None, N + 5):
        with pytest.raises(ValueError, match=rf"epoch_size={N}, but .* pass epoch_size={N} to"):
            USEFUL(epoch_size=other).load_state_dict(state)
    USEFUL(epoch_size=N).load_state_dict(state)
    del state["epoch_size"]  # a state saved before the field existed: not checked
    USEFUL().load_state_dict(state)

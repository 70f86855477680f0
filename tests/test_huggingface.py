"""The Hugging Face Trainer integration: exact upsampled epochs on 2 processes, the workflow,
checkpoints, and clear errors.

One ``torchrun --nproc_per_node 2`` run (tests/_hf_worker.py, CPU, gloo) carries every
multi-process check; the errors and the single-process workflow run in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import Trainer, TrainingArguments

import useful_data.huggingface as hf
from useful_data import Selection, find_slow_learnable
from useful_data.huggingface import SeparatingEpochCallback, USEFULTrainer, select_with_trainer
from useful_data.separating_epoch import SeparatingEpoch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _hf_worker import tiny_model_classes  # noqa: E402
from _two_processes import (  # noqa: E402
    Items,
    N,
    assert_upsampled_epoch,
    fixed_selection,
    load_example,
    run_two_processes,
)

TinyConfig, TinyModel = tiny_model_classes()
SELECTION_FILE = "useful_selection.npz"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("hf") / "result.json"
    return run_two_processes(ROOT / "tests" / "_hf_worker.py", out)


@pytest.mark.parametrize(
    "case", ["dataset", "useful_trainer", "sampler_after_group", "sampler_before_group"]
)
def test_every_epoch_trains_on_the_upsampled_multiset(two_ranks, case):
    """Counted on what both ranks' models saw: USEFULDataset with a plain Trainer,
    USEFULTrainer, and an UpsampleSampler returned from a user's ``_get_train_sampler``,
    built after or before the process group exists."""
    assert two_ranks["world"] == 2 and two_ranks["group_before"] is False
    epochs = two_ranks["counts"][case]
    assert len(epochs) == 2
    for items in epochs:
        assert_upsampled_epoch(items)
    if case != "dataset":
        assert epochs[0] != epochs[1]  # set_epoch reached the sampler: a new order


def test_workflow_on_two_ranks(two_ranks):
    # phase 1 stopped after epoch 2 of the 4-epoch schedule
    assert two_ranks["phase1_epoch"] == [2.0, 2, 2]
    # every rank got the same selection, equal to one computed from local logits
    masks = two_ranks["selection_masks"]
    assert masks[0] == masks[1] == two_ranks["selection_alone"]
    assert 0 < sum(masks[0]) < N
    # phase 2 started from W0 on both ranks, and trained 3 exact upsampled epochs
    assert two_ranks["phase2_from_w0"] == [True, True]
    multiset = Counter(range(N)) + Counter(np.flatnonzero(masks[0]).tolist())
    size = sum(multiset.values())
    steps_per_epoch = -(-size // (2 * 5))  # Accelerate completes the last round of batches
    assert two_ranks["steps_per_epoch"] == steps_per_epoch
    assert two_ranks["phase2_optimizer_steps"] == 3 * steps_per_epoch
    for items in two_ranks["phase2_epochs"]:
        assert len(items) == steps_per_epoch * 2 * 5
        assert not multiset - Counter(items)  # every item of the multiset, as often
        assert sum((Counter(items) - multiset).values()) == len(items) - size  # + the padding


def test_resume_mid_epoch_trains_the_batches_not_yet_seen(two_ranks):
    """The checkpoint is 2 steps into epoch 1: the resumed run (built with selection=None)
    takes the checkpoint's selection and trains, on every rank, exactly the batches the
    original run trained after it, in the same order."""
    assert two_ranks["checkpoint_has_selection"]
    assert two_ranks["resume_adopted"]
    done_in_epoch = two_ranks["save_step"] - two_ranks["steps_per_epoch"]
    assert done_in_epoch == 2
    for original, resumed in zip(
        two_ranks["original_batches"], two_ranks["resumed_batches"], strict=True
    ):
        assert resumed == [original[1][done_in_epoch:], original[2]]


def test_a_sampler_built_without_the_switch_refuses_to_train_on_every_rank(two_ranks):
    """A user's ``_get_train_sampler`` returning ``UpsampleSampler(selection)`` without
    ``num_replicas=1, rank=0``: under the Trainer's Accelerate it would shard a second time
    (each rank training on a quarter), so it raises, on both ranks, saying what to pass."""
    for message in two_ranks["forgotten_switch"]:
        assert "num_replicas=1, rank=0" in message and "Accelerate" in message


# --- one process ---------------------------------------------------------------------------
def arguments(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path / "run"), use_cpu=True, per_device_train_batch_size=5,
        num_train_epochs=2, learning_rate=0.1, report_to="none", disable_tqdm=True,
        save_strategy="no", logging_strategy="no", seed=0,
    )  # fmt: skip
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


class Stream(IterableDataset):
    def __iter__(self):
        yield from Items()


def test_useful_trainer_single_process_and_checkpoint(tmp_path):
    data = Items()
    selection = fixed_selection(data)
    args = arguments(tmp_path, save_strategy="epoch")
    model = TinyModel(TinyConfig())
    trainer = USEFULTrainer(model, args, train_dataset=data, selection=selection)
    trainer.train()
    assert trainer.state.global_step == 2 * 10  # 50 items per epoch, batch 5
    for step in (10, 20):
        saved = Selection.load(tmp_path / "run" / f"checkpoint-{step}" / SELECTION_FILE)
        assert np.array_equal(saved.mask, selection.mask)
    # resuming with another selection is refused, before any training
    other_mask = ~selection.mask
    other = Selection(mask=other_mask, loss=selection.loss, targets=selection.targets)
    again = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=other)
    with pytest.raises(ValueError, match="the checkpoint holds a selection; pass selection=None"):
        again.train(resume_from_checkpoint=True)
    # a checkpoint of a plain Trainer (phase 1) has no selection to resume
    plain = Trainer(
        TinyModel(TinyConfig()),
        arguments(tmp_path / "p1", save_strategy="epoch"),
        train_dataset=data,
    )
    plain.train()
    resume = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=selection)
    with pytest.raises(ValueError, match="not saved by a USEFULTrainer"):
        resume.train(resume_from_checkpoint=str(tmp_path / "p1" / "run" / "checkpoint-16"))
    # a checkpoint's selection is checked against the data it would now train on
    shorter = torch.utils.data.Subset(data, range(N - 1))
    adopt = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=shorter, selection=None)
    with pytest.raises(ValueError, match="40 examples, but the dataset has 39"):
        adopt.train(resume_from_checkpoint=True)


def test_equal_length_epochs_keep_sgds_step_count(tmp_path):
    """epoch_size=N reaches the sampler: N items (8 steps of 5) per epoch instead of 50."""
    data = Items()
    selection = fixed_selection(data)
    trainer = USEFULTrainer(
        TinyModel(TinyConfig()),
        arguments(tmp_path),
        train_dataset=data,
        selection=selection,
        epoch_size=N,
    )
    trainer.train()
    assert trainer.useful_sampler is not None and trainer.useful_sampler.epoch_size == N
    assert trainer.state.global_step == 2 * N // 5
    with pytest.raises(ValueError, match="epoch_size"):
        USEFULTrainer(
            TinyModel(TinyConfig()),
            arguments(tmp_path),
            train_dataset=data,
            selection=selection,
            epoch_size=0,
        )


def test_a_datasets_dataset_trains_and_is_checked(tmp_path):
    """A ``datasets.Dataset`` (torch format): its ``labels`` column is checked against the
    selection, select_with_trainer predicts on it, USEFULTrainer trains on it."""
    datasets = pytest.importorskip("datasets")
    items = Items()
    table = datasets.Dataset.from_dict(
        {"x": items.x.tolist(), "labels": items.targets.tolist(), "index": list(range(N))}
    ).with_format("torch")
    selection = fixed_selection(items)
    flipped = Selection(mask=selection.mask, loss=selection.loss, targets=1 - selection.targets)
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        USEFULTrainer(TinyModel(TinyConfig()), arguments(tmp_path), train_dataset=table,
                      selection=flipped)  # fmt: skip
    trainer = USEFULTrainer(TinyModel(TinyConfig()), arguments(tmp_path), train_dataset=table,
                            selection=selection)  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 2 * 10
    found = select_with_trainer(trainer, table, backend="sklearn", progress=False)
    assert found.num_examples == N and np.array_equal(found.targets, items.targets.numpy())


def test_selection_that_does_not_fit_the_training_set(tmp_path):
    data = Items()
    selection = fixed_selection(data)
    args = arguments(tmp_path)
    shorter = torch.utils.data.Subset(data, range(N - 1))
    with pytest.raises(ValueError, match="40 examples, but the dataset has 39"):
        USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=shorter, selection=selection)
    flipped = Selection(mask=selection.mask, loss=selection.loss, targets=1 - selection.targets)
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=flipped)
    with pytest.raises(TypeError, match="should be a Selection"):
        USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=selection.mask)
    grouped = arguments(tmp_path, train_sampling_strategy="group_by_length")
    with pytest.raises(ValueError, match="train_sampling_strategy='group_by_length'"):
        USEFULTrainer(TinyModel(TinyConfig()), grouped, train_dataset=data, selection=selection)
    with pytest.raises(ValueError, match="has no selection"):
        USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=None).train()


def test_iterable_datasets_are_refused(tmp_path):
    args = arguments(tmp_path)
    selection = fixed_selection(Items())
    with pytest.raises(TypeError, match=r"map-style.*Stream"):
        USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=Stream(), selection=selection)
    trainer = Trainer(TinyModel(TinyConfig()), args, train_dataset=Items())
    with pytest.raises(TypeError, match=r"eval_dataset should be a map-style.*Stream"):
        select_with_trainer(trainer, Stream())


def test_separating_epoch_callback(tmp_path):
    with pytest.raises(ValueError, match="separating_epoch=0"):
        SeparatingEpochCallback(0)
    with pytest.raises(TypeError, match="separating_epoch='3'"):
        SeparatingEpochCallback("3")
    data = Items()
    late = Trainer(
        TinyModel(TinyConfig()),
        arguments(tmp_path, num_train_epochs=2),
        train_dataset=data,
        callbacks=[SeparatingEpochCallback(3)],
    )
    with pytest.raises(ValueError, match="separating_epoch=3 is past the schedule's"):
        late.train()
    assert late.state.global_step == 0
    too_long = Trainer(
        TinyModel(TinyConfig()),
        arguments(tmp_path, num_train_epochs=10),
        train_dataset=data,
        callbacks=[SeparatingEpochCallback(SeparatingEpoch(total_epochs=100))],
    )
    with pytest.raises(ValueError, match="as late as epoch 20, past the schedule's"):
        too_long.train()
    unlogged = Trainer(
        TinyModel(TinyConfig()),
        arguments(tmp_path, num_train_epochs=20),
        train_dataset=data,
        callbacks=[SeparatingEpochCallback(SeparatingEpoch(total_epochs=20))],
    )
    with pytest.raises(ValueError, match="logging_strategy='epoch'"):
        unlogged.train()


def test_separating_epoch_detector_stops_phase_one(tmp_path):
    """A SeparatingEpoch fed the per-epoch loss the Trainer logs: training stops where the
    detector, fed the same logged losses, says to, and not before."""
    callback = SeparatingEpochCallback(SeparatingEpoch(total_epochs=20))
    args = arguments(tmp_path, num_train_epochs=20, logging_strategy="epoch", learning_rate=0.05)
    trainer = Trainer(TinyModel(TinyConfig()), args, train_dataset=Items(), callbacks=[callback])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert callback.epoch is not None and 3 <= callback.epoch <= 4
    assert trainer.state.epoch == callback.epoch == len(losses)
    replay = SeparatingEpoch(total_epochs=20)
    assert [replay.update(loss) for loss in losses] == [False] * (len(losses) - 1) + [True]


def test_resumed_phase_one_separates_at_the_same_epoch(tmp_path):
    """Resuming phase 1 from a checkpoint with a fresh SeparatingEpoch: the callback replays
    the logged losses of the epochs done, and training stops where it did uninterrupted."""
    args = arguments(tmp_path, num_train_epochs=20, logging_strategy="epoch",
                     learning_rate=0.05, save_strategy="epoch")  # fmt: skip
    first = SeparatingEpochCallback(SeparatingEpoch(total_epochs=20))
    Trainer(TinyModel(TinyConfig()), args, train_dataset=Items(), callbacks=[first]).train()
    assert first.epoch is not None and first.epoch >= 3
    again = SeparatingEpochCallback(SeparatingEpoch(total_epochs=20))
    resumed = Trainer(TinyModel(TinyConfig()), args, train_dataset=Items(), callbacks=[again])
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-16"))  # epoch 2
    assert again.epoch == first.epoch == resumed.state.epoch
    assert again.detector.errors == pytest.approx(first.detector.errors)


def test_select_with_trainer_matches_find_slow_learnable(tmp_path):
    from useful_data import find_slow_learnable

    data = Items()
    trainer = Trainer(
        TinyModel(TinyConfig()),
        arguments(tmp_path, per_device_eval_batch_size=7),
        train_dataset=data,
    )
    trainer.train()
    found = select_with_trainer(trainer, data, backend="sklearn", progress=False)
    with torch.no_grad():
        logits = trainer.model.eval()(data.x)["logits"]
    direct = find_slow_learnable(logits=logits, targets=data.targets, backend="sklearn")
    assert np.array_equal(found.mask, direct.mask)
    assert np.allclose(found.loss, direct.loss, atol=1e-6)
    with pytest.raises(TypeError, match="no model="):
        select_with_trainer(trainer, data, model=trainer.model)


@pytest.mark.parametrize("missing", ["transformers", "accelerate"])
def test_missing_extra_is_one_clear_import_error(missing):
    """Without transformers or accelerate, importing the integration names the extra;
    ``import useful_data`` itself never imports either."""
    code = (
        "import sys\n"
        "import useful_data\n"
        "assert 'transformers' not in sys.modules and 'accelerate' not in sys.modules\n"
        f"sys.modules[{missing!r}] = None\n"
        "try:\n"
        "    import useful_data.huggingface\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "useful_data.huggingface needs transformers and accelerate: "
        "pip install 'useful-data[huggingface]'"
    )


def test_example_script_runs_and_resumes(tmp_path, capsys):
    """examples/train_huggingface.py --tiny: phase 1, the selection, phase 2; then --resume
    continues phase 2 from its last checkpoint (already at the end: no step more) with its
    selection."""
    example = load_example("train_huggingface")
    argv = ["--tiny", "--separating-epoch", "2", "--out", str(tmp_path / "run")]
    accuracy = example.main(argv)
    out = capsys.readouterr().out
    assert "phase 1 stopped after epoch 2 of 6" in out
    assert "precision 1.000 recall 1.000" in out  # phase 1 learned: the planted ones found
    assert "USEFUL selection: 55 of 400 examples" in out  # select_with_trainer's summary
    steps = int(out.split("phase 2: ")[1].split(" steps")[0])
    assert steps == 6 * 10  # ceil((400 + 55) / 50) steps per epoch
    checkpoint = tmp_path / "run" / "phase2" / f"checkpoint-{steps}"
    assert (checkpoint / SELECTION_FILE).is_file()
    assert example.main([*argv, "--resume"]) == pytest.approx(accuracy)
    assert f"phase 2: {steps} steps" in capsys.readouterr().out


def test_benchmark_quick_run_prints_ratio_tables():
    """benchmarks/bench_huggingface.py --quick: both tables print, with ratios that parse
    (never a time: these machines are shared)."""
    from test_benchmarks import _run, _tables

    tables = _tables(_run("bench_huggingface.py"))
    assert [len(rows) for _, rows in tables] == [2, 1]
    for header, rows in tables:
        assert header[-2:] == ["ratio", "ratio of best"]
        for row in rows:
            assert float(row[-2]) > 0 and float(row[-1]) > 0


# --- the 1.0 surface, fit rule, conflicts, bounds, incomplete checkpoints, visibility ---------
def test_public_names_and_the_old_ones():
    assert hf.__all__ == ["SeparatingEpochCallback", "USEFULTrainer", "select_with_trainer"]
    with pytest.warns(DeprecationWarning, match="private"):
        from useful_data.huggingface import SELECTION_FILE as old
    assert old == SELECTION_FILE
    with pytest.raises(
        ImportError, match=r"DynamicsTrainer was removed.*useful_data\.experimental"
    ):
        from useful_data.huggingface import DynamicsTrainer  # noqa: F401


def test_a_selection_computed_with_targets_fits_the_dataset_it_was_computed_on(tmp_path):
    """Coarse labels passed as ``targets=`` with the dataset: the selection records the
    dataset's own labels (``data_fingerprint``), and USEFULTrainer accepts that dataset, as
    USEFULDataset does, on construction and when adopting it from a checkpoint."""
    data = Items()
    coarse = np.zeros(N, dtype=np.int64)  # one coarse class, not the dataset's labels
    logits = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    selection = find_slow_learnable(
        logits=logits, targets=coarse, dataset=data, backend="sklearn", progress=False
    )
    assert selection.data_fingerprint is not None
    args = arguments(tmp_path, save_strategy="epoch")
    trainer = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=selection)
    trainer.train()
    adopt = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=None)
    adopt.train(resume_from_checkpoint=True)
    assert np.array_equal(adopt.selection.mask, selection.mask)


def test_resuming_with_an_equal_selection_is_fine_and_another_is_refused(tmp_path):
    data = Items()
    selection = fixed_selection(data)
    args = arguments(tmp_path, save_strategy="epoch")
    USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=selection).train()
    equal = Selection(mask=selection.mask.copy(), loss=selection.loss, targets=selection.targets)
    same = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=equal)
    same.train(resume_from_checkpoint=True)
    assert same.state.global_step == 20
    mask = selection.mask.copy()
    mask[1] = True
    other = Selection(mask=mask, loss=selection.loss, targets=selection.targets)
    refused = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=other)
    with pytest.raises(ValueError) as err:
        refused.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-10"))
    assert str(err.value).endswith(
        "the checkpoint holds a selection; pass selection=None to resume it, or start a new "
        "run to use another"
    )


@pytest.mark.parametrize("epoch_size", [10**12, 2 * N + 1])
def test_epoch_size_is_bounded_at_construction(tmp_path, epoch_size):
    data = Items()
    with pytest.raises(ValueError, match=rf"epoch_size should be at most upsample_factor x "
                       rf"num_examples = 2 x {N} = {2 * N}.*epoch_size={epoch_size}"):  # fmt: skip
        USEFULTrainer(TinyModel(TinyConfig()), arguments(tmp_path), train_dataset=data,
                      selection=fixed_selection(data), epoch_size=epoch_size)  # fmt: skip
    # the bound itself is accepted
    USEFULTrainer(TinyModel(TinyConfig()), arguments(tmp_path), train_dataset=data,
                  selection=fixed_selection(data), epoch_size=2 * N)  # fmt: skip


def test_a_checkpoint_whose_selection_was_not_saved_is_never_resumed(tmp_path, monkeypatch):
    """Saving the selection fails at the second checkpoint (disk full): checkpoint-20 exists
    without it. resume_from_checkpoint=True skips it, with a warning, for checkpoint-10;
    given by path it is refused as incomplete (the resumed run then rewrites it whole)."""
    data = Items()
    selection = fixed_selection(data)
    args = arguments(tmp_path, save_strategy="epoch")
    real_save, calls = Selection.save, []

    def failing_save(self, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, path)

    monkeypatch.setattr(Selection, "save", failing_save)
    trainer = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=selection)
    with pytest.raises(OSError, match="No space left"):
        trainer.train()
    monkeypatch.undo()
    incomplete = tmp_path / "run" / "checkpoint-20"
    assert incomplete.is_dir() and not (incomplete / SELECTION_FILE).exists()
    by_path = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=None)
    with pytest.raises(ValueError, match=r"holds no useful_selection\.npz, so it is incomplete"):
        by_path.train(resume_from_checkpoint=str(incomplete))
    resumed = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=None)
    with pytest.warns(UserWarning, match=r"skips checkpoint-20 .*incomplete.*from checkpoint-10"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 20 and resumed.selection is not None
    assert (incomplete / SELECTION_FILE).is_file()  # saved whole this time


def test_a_folder_of_incomplete_checkpoints_only_and_a_missing_path(tmp_path):
    data = Items()
    selection = fixed_selection(data)
    args = arguments(tmp_path, save_strategy="epoch")
    USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=selection).train()
    for step in (10, 20):  # a directory missing the file, as a kill in that window leaves it
        (tmp_path / "run" / f"checkpoint-{step}" / SELECTION_FILE).unlink()
    trainer = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=None)
    with pytest.raises(ValueError, match=r"holds only checkpoints without .*checkpoint-10, "):
        trainer.train(resume_from_checkpoint=True)
    missing = str(tmp_path / "run" / "checkpoint-39")
    with pytest.raises(ValueError, match=r"checkpoint-39' does not exist"):
        trainer.train(resume_from_checkpoint=missing)


def test_select_with_trainer_shows_its_summary_and_the_trainers_bar(tmp_path, capsys):
    """The main process prints the selection's summary; the prediction pass shows the
    Trainer's progress bar where the Trainer shows one, ``progress=`` overrides it, and the
    Trainer's callbacks are as they were afterwards."""
    from transformers.trainer_callback import ProgressCallback

    data = Items()
    quiet = Trainer(TinyModel(TinyConfig()), arguments(tmp_path, num_train_epochs=4),
                    train_dataset=data, callbacks=[SeparatingEpochCallback(1)])  # fmt: skip
    quiet.train()
    capsys.readouterr()
    found = select_with_trainer(quiet, data, backend="sklearn")
    out, err = capsys.readouterr()
    per_class = [f"{c.label}: {c.num_slow_learnable}/{c.num_examples}"
                 for c in found.class_summary()]  # fmt: skip
    assert f"USEFUL selection: {found.num_slow_learnable} of {N} examples" in out
    assert "selected per class: " + ", ".join(per_class) in out
    assert f"separation: loss AUC {found.separation.auc:.3f}" in out
    cost = found.relative_cost(separating_epoch=1, total_epochs=4)
    assert f"cost: {cost:.2f}x plain training (t/T = 1/4" in out
    assert "it/s" not in err  # disable_tqdm=True: no bar
    select_with_trainer(quiet, data, backend="sklearn", progress=True)
    assert "it/s" in capsys.readouterr().err
    shown = Trainer(TinyModel(TinyConfig()), arguments(tmp_path, disable_tqdm=False),
                    train_dataset=data)  # fmt: skip
    before = list(shown.callback_handler.callbacks)
    select_with_trainer(shown, data, backend="sklearn")
    assert "it/s" in capsys.readouterr().err
    select_with_trainer(shown, data, backend="sklearn", progress=False)
    assert "it/s" not in capsys.readouterr().err
    assert [type(c) for c in shown.callback_handler.callbacks] == [type(c) for c in before]
    assert any(isinstance(c, ProgressCallback) for c in shown.callback_handler.callbacks)
    with pytest.raises(TypeError, match="progress should be True, False or None"):
        select_with_trainer(shown, data, progress="yes")


def test_resuming_with_another_epoch_size_is_refused(tmp_path):
    """Issue #25 (conflicts): a checkpoint records the epoch_size it was trained with; a
    resume with another (or none) is refused and told which to pass."""
    data = Items()
    args = arguments(tmp_path, save_strategy="epoch", num_train_epochs=1)
    USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data,
                  selection=fixed_selection(data), epoch_size=N).train()  # fmt: skip
    args = arguments(tmp_path, save_strategy="epoch", num_train_epochs=2)
    for other in (None, N + 5):
        resumed = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data,
                                selection=None, epoch_size=other)  # fmt: skip
        with pytest.raises(ValueError, match=rf"epoch_size={N}, but this trainer has epoch_siz"):
            resumed.train(resume_from_checkpoint=True)
    resumed = USEFULTrainer(TinyModel(TinyConfig()), args, train_dataset=data, selection=None,
                            epoch_size=N)  # fmt: skip
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2 * (N // 5)

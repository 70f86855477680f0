"""A hand-written loop under Hugging Face Accelerate: exact upsampled epochs on 2 processes.

One ``torchrun --nproc_per_node 2`` run (tests/_accelerate_worker.py, CPU, gloo) carries the
checks; the guide's single-process code runs in tests/test_docs.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _two_processes import assert_upsampled_epoch, load_example, run_two_processes  # noqa: E402


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("accelerate") / "result.json"
    return run_two_processes(ROOT / "tests" / "_accelerate_worker.py", out)


@pytest.mark.parametrize(
    "case", ["dataset", "recipe", "sampler_before_accelerator", "sampler_after_accelerator"]
)
def test_every_epoch_trains_on_the_upsampled_multiset(two_ranks, case):
    """Counted on what both ranks trained on: USEFULDataset, the guide's recipe, and an
    UpsampleSampler with its defaults built before or after ``Accelerator()``, all passed
    through ``accelerator.prepare``."""
    assert two_ranks["world"] == 2
    epochs = two_ranks["counts"][case]
    assert len(epochs) == 2
    for items in epochs:
        assert_upsampled_epoch(items)
    assert epochs[0] != epochs[1]  # a new order every epoch


def test_selection_is_the_same_on_every_rank(two_ranks):
    masks = two_ranks["selection_masks"]
    assert masks[0] == masks[1] == two_ranks["selection_alone"]


def test_resumed_epoch_skips_exactly_the_batches_done(two_ranks):
    """A new sampler and loader, ``loader.set_epoch(1)``, then ``skip_first_batches(loader,
    2)``: every rank gets the rest of its epoch-1 items of the training run above."""
    for trained, resumed in two_ranks["resume"]:
        assert len(trained) == 25
        assert resumed == trained[2 * 5 :]


def test_example_schedule_spans_phase_two(two_ranks):
    """The example sizes its cosine schedule by ``len(loader)`` before ``prepare``; on 2
    processes that must count the whole epoch, or the schedule ends halfway through phase 2
    and climbs back to the initial learning rate (as with a sampler left to shard itself)."""
    assert two_ranks["example_last_lr"] == pytest.approx(0.0, abs=1e-9)


def test_example_script_runs(capsys):
    example = load_example("train_accelerate")
    accuracy = example.main(["--tiny"])
    out = capsys.readouterr().out
    assert 0.0 <= accuracy <= 1.0
    assert "precision" in out and "recall" in out
    assert "phase 2: 610 examples per epoch" in out  # 400 + 210 slow-learnable

"""A hand-written loop under Hugging Face Accelerate: exact upsampled epochs on 2 processes.

One ``torchrun --nproc_per_node 2`` run (tests/_accelerate_worker.py, CPU, gloo) carries the
checks; the guide's single-process code runs in tests/test_docs.py.
"""

from __future__ import annotations

import itertools
import os
import subprocess
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
    """Counted on what both ranks trained on: USEFULDataset, and the guide's recipe
    (``num_replicas=1, rank=0``) built before or after ``Accelerator()``, all passed through
    ``accelerator.prepare``."""
    assert two_ranks["world"] == 2
    epochs = two_ranks["counts"][case]
    assert len(epochs) == 2
    for items in epochs:
        assert_upsampled_epoch(items)
    assert epochs[0] != epochs[1]  # a new order every epoch


def test_a_sampler_built_without_the_switch_is_refused_on_every_rank(two_ranks):
    """Left to shard by the process group under Accelerate's batch sharding, each rank would
    train on a quarter of the epoch: it raises instead, on both ranks, saying what to pass."""
    for message in two_ranks["forgotten_switch"]:
        assert "num_replicas=2" in message and "num_replicas=1, rank=0" in message


def test_selection_is_the_same_on_every_rank(two_ranks):
    masks = two_ranks["selection_masks"]
    assert masks[0] == masks[1] == two_ranks["selection_alone"]


def test_resumed_epoch_skips_exactly_the_batches_done(two_ranks):
    """A new sampler and loader, ``loader.set_epoch(1)``, then ``skip_first_batches(loader,
    2)``: every rank gets the rest of its epoch-1 items of the training run above."""
    for trained, resumed in two_ranks["resume"]:
        assert len(trained) == 25
        assert resumed == trained[2 * 5 :]


def test_example_schedule_ends_at_zero_without_passing_it(two_ranks):
    """125 items in batches of 10 on 2 processes: 13 batches, padded to 7 steps per rank, and
    a prepared scheduler advances twice per step. Sized from the prepared loader, the cosine
    schedule falls at every step and reaches 0 at the last (sized as 2 x 13 before prepare,
    it passed through 0 a step before the end and rose again)."""
    lrs = two_ranks["example_lrs"]
    assert len(lrs) == 2 * 7
    assert all(later < earlier for earlier, later in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_example_script_runs(capsys):
    example = load_example("train_accelerate")
    accuracy = example.main(["--tiny"])
    out = capsys.readouterr().out
    assert 0.0 <= accuracy <= 1.0
    assert "precision" in out and "recall" in out
    assert "phase 2: 455 examples per epoch" in out  # 400 + the 55 planted slow-learnable
    assert "precision 1.000 recall 1.000" in out  # phase 1 learned: the planted ones found


@pytest.mark.parametrize(
    ("flag", "processes"),
    [("--multi_gpu", 2), ("--cpu", 1)],
)
def test_the_guides_launch_command_runs_two_cpu_processes(flag, processes):
    """``accelerate launch --multi_gpu --num_processes 2`` runs the example on 2 processes,
    on the CPU where there is no GPU; ``--cpu --num_processes 2`` silently runs one (the
    guide says so)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", flag, "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "examples" / "train_accelerate.py"), "--tiny",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"per epoch on {processes} process(es)" in result.stdout

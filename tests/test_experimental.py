"""useful_data.experimental: the training-dynamics recorder, index wrapper and selection.

The recorder's O(N) running statistics are checked against a brute-force reference that keeps
the whole ``(epochs, N)`` history; the multi-rank record against the single-process one in a
2-process gloo run.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from useful_data import Selection, UpsampleSampler
from useful_data.experimental import IndexedDataset, TrainingDynamics, select_from_dynamics
from useful_data.experimental.dynamics import _STRATEGIES, _two_means_1d

ROOT = Path(__file__).resolve().parents[1]


# --- brute-force reference ---------------------------------------------------------------------
def reference_record(history: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int) -> dict:
    """Statistics from the full history of ``(indices, logits, targets)`` per epoch, the
    slow way: an ``(E, N)`` table of every epoch's last observation of every example."""
    epochs = len(history)
    correct = np.full((epochs, n), np.nan)
    conf = np.full((epochs, n), np.nan)
    loss = np.full((epochs, n), np.nan)
    for e, (index, logits, targets) in enumerate(history):
        logits = logits.astype(np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for row, i in enumerate(index):  # later rows overwrite earlier ones: the last counts
            correct[e, i] = float(logits[row].argmax() == targets[row])
            conf[e, i] = probs[row, targets[row]]
            loss[e, i] = -np.log(probs[row, targets[row]])
    seen = (~np.isnan(correct)).sum(0)
    out = {
        "epochs_seen": seen,
        "cumulative_accuracy": np.nanmean(correct, 0),
        "mean_confidence": np.nanmean(conf, 0),
        "confidence_variability": np.nanstd(conf, 0),
        "mean_loss": np.nanmean(loss, 0),
    }
    forgetting = np.zeros(n, dtype=int)
    first = np.full(n, -1)
    learned = np.full(n, -1)
    for i in range(n):
        observed = [(e, correct[e, i]) for e in range(epochs) if not np.isnan(correct[e, i])]
        for (_, a), (_, b) in itertools.pairwise(observed):
            forgetting[i] += a == 1 and b == 0
        hits = [e for e, c in observed if c == 1]
        first[i] = hits[0] if hits else -1
        if observed and observed[-1][1] == 1:  # the start of the final run of correct epochs
            k = len(observed) - 1
            while k > 0 and observed[k - 1][1] == 1:
                k -= 1
            learned[i] = observed[k][0]
    out.update(forgetting_events=forgetting, first_learned_epoch=first, learned_epoch=learned)
    return out


def random_history(n: int, epochs: int, num_classes: int, seed: int):
    """Shuffled batches with duplicates and skipped examples; logits drift towards the labels
    at per-example speeds, with noise, so examples are learned, forgotten and relearned."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, num_classes, n)
    speed = rng.uniform(0.0, 1.0, n)
    history = []
    for e in range(epochs):
        index = rng.permutation(n)
        index = np.concatenate([index[rng.random(n) > 0.1], rng.integers(0, n, 5)])  # skip, dup
        logits = rng.normal(0.0, 1.0, (len(index), num_classes)).astype(np.float32)
        logits[np.arange(len(index)), targets[index]] += 2.0 * speed[index] * e
        history.append((index, logits, targets[index]))
    return history


def record(history, n: int, batch_size: int = 7) -> TrainingDynamics:
    dynamics = TrainingDynamics(n)
    for index, logits, targets in history:
        for start in range(0, len(index), batch_size):
            part = slice(start, start + batch_size)
            dynamics.update(
                torch.from_numpy(logits[part]), torch.from_numpy(targets[part]), index[part]
            )
        dynamics.end_epoch()
    return dynamics


def assert_matches_reference(dynamics: TrainingDynamics, expected: dict) -> None:
    for name, value in expected.items():
        got = getattr(dynamics, name)
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got, value, err_msg=name)


# --- the recorder ------------------------------------------------------------------------------
def test_running_statistics_match_the_full_history():
    n, epochs = 60, 8
    history = random_history(n, epochs, num_classes=3, seed=0)
    dynamics = record(history, n)
    expected = reference_record(history, n)
    assert_matches_reference(dynamics, expected)
    assert dynamics.num_epochs == epochs and dynamics.num_classes == 3
    # the history exercises every statistic: forgotten, relearned, never learned, unseen epochs
    assert expected["forgetting_events"].max() >= 2
    assert (expected["learned_epoch"] == -1).any() and (expected["learned_epoch"] > 0).any()
    assert (expected["epochs_seen"] < epochs).any()
    # memory: O(N) arrays only, whatever the number of epochs
    state = dynamics.state_dict()
    assert all(v.shape == (n,) for v in state.values() if isinstance(v, torch.Tensor))


def test_batch_order_and_batch_size_do_not_matter():
    n = 40
    history = random_history(n, 5, num_classes=4, seed=1)
    reshuffled = []
    rng = np.random.default_rng(7)
    for index, logits, targets in history:
        # keep each example's last observation last: reorder the rest freely
        _, last = np.unique(index[::-1], return_index=True)
        keep = len(index) - 1 - last
        earlier = np.setdiff1d(np.arange(len(index)), keep)
        order = np.concatenate([rng.permutation(earlier), rng.permutation(keep)])
        reshuffled.append((index[order], logits[order], targets[order]))
    a, b = record(history, n, batch_size=3), record(reshuffled, n, batch_size=16)
    for name, value in a.state_dict().items():
        other = b.state_dict()[name]
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, other, rtol=1e-12, atol=1e-12)
        else:
            assert value == other


def test_state_dict_resumes_exactly(tmp_path):
    n = 30
    history = random_history(n, 6, num_classes=3, seed=2)
    whole = record(history, n)
    first = record(history[:3], n)
    torch.save(first.state_dict(), tmp_path / "dynamics.pt")
    resumed = TrainingDynamics(n)
    resumed.load_state_dict(torch.load(tmp_path / "dynamics.pt"))
    for index, logits, targets in history[3:]:
        resumed.update(torch.from_numpy(logits), torch.from_numpy(targets), index)
        resumed.end_epoch()
    assert resumed.num_epochs == 6
    for name, value in whole.state_dict().items():
        other = resumed.state_dict()[name]
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, other)
        else:
            assert value == other
    with pytest.raises(ValueError, match="num_examples=30"):
        TrainingDynamics(31).load_state_dict(first.state_dict())
    broken = first.state_dict()
    del broken["learned"]
    with pytest.raises(ValueError, match="'learned'"):
        TrainingDynamics(n).load_state_dict(broken)


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("num_epochs", -5, ValueError, r"'num_epochs'.*>= 0, but got -5"),
        ("num_epochs", 2.5, TypeError, r"'num_epochs'.*integer"),
        ("num_epochs", True, TypeError, r"'num_epochs'.*integer"),
        ("num_epochs", 1, ValueError, r"'seen'.*no recording gives"),  # seen 3 > 1 epoch
        ("num_classes", 1, ValueError, r"'num_classes'.*>= 2"),
        ("num_classes", 2, ValueError, r"'targets'.*no recording gives"),  # labels 0..2
        ("seen", -1, ValueError, r"'seen'.*no recording gives"),
        ("correct", 7, ValueError, r"'correct'.*no recording gives"),
        ("loss", float("nan"), ValueError, r"'loss'.*finite"),
        ("loss", -1.0, ValueError, r"'loss'.*no recording gives"),
        ("learned", 9, ValueError, r"'learned'.*no recording gives"),
        ("last_correct", 3, ValueError, r"'last_correct'.*no recording gives"),
        ("targets", 0.5, ValueError, r"'targets'.*integers"),
    ],
)
def test_load_state_dict_refuses_values_no_recording_gives(field, value, error, match):
    """A state that update/end_epoch could not have written is refused, naming the field,
    and the recorder keeps its record."""
    n = 12
    state = record(random_history(n, 3, num_classes=3, seed=1), n).state_dict()
    if isinstance(state[field], torch.Tensor):
        broken = state[field].double() if isinstance(value, float) else state[field].clone()
        broken[0] = value
        state[field] = broken
    else:
        state[field] = value
    target = TrainingDynamics(n)
    before = target.state_dict()
    with pytest.raises(error, match=match):
        target.load_state_dict(state)
    assert target.num_epochs == 0
    for name, kept in target.state_dict().items():
        if isinstance(kept, torch.Tensor):
            assert torch.equal(kept, before[name]), name
        else:
            assert kept == before[name], name


def test_old_import_path_warns_and_nothing_imports_the_wing():
    """useful_data.dynamics still imports for one release, warning where the names went; no
    module of the library outside the wing imports it."""
    import useful_data.dynamics as old

    with pytest.warns(DeprecationWarning, match="moved to useful_data.experimental.TrainingDyn"):
        assert old.TrainingDynamics is TrainingDynamics
    with pytest.warns(DeprecationWarning, match="private"):
        assert old.two_means_1d is _two_means_1d
    package = ROOT / "useful_data"
    importers = [
        path.name
        for path in package.glob("*.py")
        if path.name != "dynamics.py"
        and re.search(r"(from|import) useful_data\.experimental", path.read_text())
    ]
    assert importers == []


def test_recorder_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_examples=0"):
        TrainingDynamics(0)
    with pytest.raises(TypeError, match=r"num_examples=2\.5"):
        TrainingDynamics(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_examples=10000000000000 needs 53 bytes"):
        TrainingDynamics(10**13)  # refused before its arrays are allocated (issue #25)
    dynamics = TrainingDynamics(4)
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"indices should have shape \(2,\)"):
        dynamics.update(logits, torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="indices should hold integers"):
        dynamics.update(logits, torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        dynamics.update(torch.zeros(2), torch.tensor([0, 1]), torch.tensor([0, 1]))
    dynamics.update(logits, torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 columns"):
        dynamics.update(torch.zeros(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1]))
    dynamics.update(logits, torch.tensor([0, 1]), torch.tensor([2, 4]))
    with pytest.raises(ValueError, match="index 4"):
        dynamics.end_epoch()
    dynamics.update(logits, torch.tensor([0, 5]), torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="label 5"):
        dynamics.end_epoch()
    dynamics.update(torch.tensor([[0.0, float("nan"), 0.0]]), torch.tensor([1]), [2])
    with pytest.raises(ValueError, match="example 2"):
        dynamics.end_epoch()
    dynamics.update(logits, torch.tensor([0, 1]), torch.tensor([0, 1]))
    dynamics.end_epoch()
    dynamics.update(logits, torch.tensor([1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="example 0 was recorded with label 0 before and 1"):
        dynamics.end_epoch()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_outputs_with_cpu_indices_match_the_cpu_record():
    n = 50
    history = random_history(n, 4, num_classes=3, seed=3)
    on_gpu = TrainingDynamics(n)
    for index, logits, targets in history:
        on_gpu.update(torch.from_numpy(logits).cuda(), torch.from_numpy(targets).cuda(), index)
        on_gpu.end_epoch()
    assert_matches_reference(on_gpu, reference_record(history, n))


# --- the index wrapper -------------------------------------------------------------------------
class DictItems(Dataset):
    def __len__(self) -> int:
        return 9

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.full((2,), float(index)), "label": index % 3}


def test_indexed_dataset_with_workers_and_any_sampler():
    n = 23
    base = TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 4)
    data = IndexedDataset(base)
    np.testing.assert_array_equal(data.targets, np.arange(n) % 4)
    for sampler in (None, UpsampleSampler([1, 5, 7], num_examples=n, seed=3)):
        loader = DataLoader(
            data,
            batch_size=5,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=2,
            generator=torch.Generator().manual_seed(0),
        )
        seen = []
        for x, y, index in loader:
            assert index.dtype == torch.int64
            assert torch.equal(x[:, 0].long(), index) and torch.equal(y, index % 4)
            seen += index.tolist()
        expected = sorted([*range(n), *([1, 5, 7] if sampler is not None else [])])
        assert sorted(seen) == expected
    batch = next(iter(DataLoader(IndexedDataset(DictItems()), batch_size=4, shuffle=True)))
    assert torch.equal(batch["image"][:, 0].long(), batch["index"])
    assert IndexedDataset(DictItems(), key="i")[2]["i"] == 2
    with pytest.raises(ValueError, match="key 'label'"):
        IndexedDataset(DictItems(), key="label")[0]
    assert IndexedDataset([10, 11, 12])[-1] == (12, 2)  # plain items; negative index
    with pytest.raises(IndexError, match="index 3"):
        IndexedDataset([10, 11, 12])[3]


# --- selecting from the record -----------------------------------------------------------------
def test_two_means_1d_is_the_optimal_threshold():
    rng = np.random.default_rng(0)
    for trial in range(30):
        values = np.round(rng.normal(0, 1, rng.integers(2, 25)), 1 if trial % 2 else 3)
        if values.min() == values.max():
            continue
        best, best_cut = np.inf, None
        for cut in np.unique(values)[:-1]:  # brute force over every threshold
            high = values > cut
            sse = ((values[high] - values[high].mean()) ** 2).sum()
            sse += ((values[~high] - values[~high].mean()) ** 2).sum()
            if sse < best - 1e-12:
                best, best_cut = sse, cut
        np.testing.assert_array_equal(_two_means_1d(values), values > best_cut)
    with pytest.raises(ValueError, match="1 distinct"):
        _two_means_1d(np.ones(4))


def planted_dynamics(seed: int = 0) -> tuple[TrainingDynamics, np.ndarray]:
    """Three classes of 30; in each, a third is learned at epoch 5 of 8, the rest at epoch 1."""
    rng = np.random.default_rng(seed)
    n, num_classes, epochs = 90, 3, 8
    targets = np.repeat(np.arange(num_classes), n // num_classes)
    slow = np.zeros(n, dtype=bool)
    for c in range(num_classes):
        slow[rng.choice(np.flatnonzero(targets == c), 10, replace=False)] = True
    dynamics = TrainingDynamics(n)
    for e in range(epochs):
        learned = np.where(slow, e >= 5, e >= 1)
        logits = rng.normal(0, 0.1, (n, num_classes)).astype(np.float32)
        logits[np.arange(n), targets] += np.where(learned, 3.0, -3.0)
        order = rng.permutation(n)
        dynamics.update(torch.from_numpy(logits[order]), torch.from_numpy(targets[order]), order)
        dynamics.end_epoch()
    return dynamics, slow


@pytest.mark.parametrize("strategy", _STRATEGIES)
def test_every_strategy_finds_the_late_learned_examples(strategy, tmp_path):
    dynamics, slow = planted_dynamics()
    if strategy == "forgetting":  # nothing is ever forgotten here: every score is 0
        with pytest.warns(RuntimeWarning, match="same forgetting score"):
            sel = select_from_dynamics(dynamics, strategy=strategy)
        assert sel.num_slow_learnable == 0
        assert sel.unsplit == dict.fromkeys(range(3), "all examples have the same score")
    else:
        sel = select_from_dynamics(dynamics, strategy=strategy)
        np.testing.assert_array_equal(sel.mask, slow)
        assert sel.separation.auc == 1.0  # the late ones have the higher mean loss
    assert sel.params["strategy"] == strategy and sel.params["source"] == "dynamics"
    assert sel.params["num_epochs"] == 8 and sel.params["num_classes"] == 3
    np.testing.assert_allclose(sel.loss, dynamics.mean_loss, rtol=1e-6)
    loaded = Selection.load(sel.save(tmp_path / "sel.npz"))
    np.testing.assert_array_equal(loaded.mask, sel.mask)
    assert loaded.params == sel.params
    assert repr(loaded.class_summary()) == repr(sel.class_summary())  # NaN != NaN


def test_forgetting_counts_and_never_learned():
    dynamics = TrainingDynamics(6)
    targets = torch.zeros(6, dtype=torch.long)
    pattern = [  # per epoch, which examples are correct
        [1, 1, 0, 1, 1, 0],
        [1, 0, 0, 1, 0, 0],
        [1, 1, 0, 1, 1, 0],
        [1, 0, 0, 1, 1, 0],
    ]
    for row in pattern:
        correct = torch.tensor(row, dtype=torch.bool)
        logits = torch.stack([torch.where(correct, 1.0, -1.0), torch.zeros(6)], 1)
        dynamics.update(logits, targets, torch.arange(6))
        dynamics.end_epoch()
    assert dynamics.forgetting_events.tolist() == [0, 2, 0, 0, 1, 0]
    assert dynamics.scores("forgetting").tolist() == [0, 2, 4, 0, 1, 4]
    assert dynamics.scores("learned_epoch").tolist() == [0, 4, 4, 0, 2, 4]
    # 2-means of {0, 0, 1, 2 | 4, 4} beats {0, 0, 1 | 2, 4, 4}: between-SS 14.1 vs 13.5
    assert select_from_dynamics(dynamics, strategy="forgetting").indices.tolist() == [2, 5]


def test_like_matches_the_per_class_counts_of_a_reference():
    dynamics, slow = planted_dynamics(seed=1)
    targets = dynamics.targets
    reference = np.zeros_like(slow)
    for c, count in enumerate((4, 15, 0)):
        reference[np.flatnonzero(targets == c)[:count]] = True
    sel = select_from_dynamics(dynamics, strategy="confidence", like=reference)
    for c, count in enumerate((4, 15, 0)):
        assert int(sel.mask[targets == c].sum()) == count
    assert (sel.mask & ~slow).sum() == 15 - 10  # the slowest first: all 10 slow ones in class 1
    assert sel.params["count"] == "like"
    with pytest.raises(ValueError, match="like"):
        select_from_dynamics(dynamics, like=np.zeros(5, dtype=bool))


def test_selection_errors_and_unsplit_classes():
    with pytest.raises(TypeError, match="TrainingDynamics"):
        select_from_dynamics(np.zeros(3))  # type: ignore[arg-type]
    dynamics = TrainingDynamics(4)
    with pytest.raises(ValueError, match="end_epoch"):
        select_from_dynamics(dynamics)
    dynamics.update(torch.tensor([[2.0, 0.0]] * 3), torch.tensor([0, 0, 1]), [0, 1, 2])
    dynamics.end_epoch()
    with pytest.raises(ValueError, match="index 3"):
        select_from_dynamics(dynamics)
    with pytest.raises(ValueError, match="strategy='loss'"):
        select_from_dynamics(dynamics, strategy="loss")  # type: ignore[arg-type]
    dynamics.update(torch.tensor([[0.0, 2.0]]), torch.tensor([1]), [3])
    dynamics.end_epoch()
    with pytest.warns(RuntimeWarning, match="same learned_epoch score"):
        sel = select_from_dynamics(dynamics)
    assert sel.indices.tolist() == [2]  # class 1: wrong at epoch 0 versus learned at epoch 1
    assert sel.unsplit == {0: "all examples have the same score"}
    dynamics = TrainingDynamics(2)
    dynamics.update(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]), [0, 1])
    dynamics.end_epoch()
    assert select_from_dynamics(dynamics).unsplit == {0: "single example", 1: "single example"}


# --- a 2-process gloo run ----------------------------------------------------------------------
N_DDP, EPOCHS_DDP = 21, 3  # odd N: DistributedSampler pads with a duplicate


def _ddp_model(x: torch.Tensor, epoch: int) -> torch.Tensor:
    """A deterministic stand-in for a model that learns: the margin grows with the epoch."""
    weight = torch.linspace(-1.0, 1.0, 12).reshape(4, 3) * (epoch + 1)
    return torch.sin(x @ weight[: x.shape[1]])


def _ddp_data() -> IndexedDataset:
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(N_DDP, 4, generator=g)
    return IndexedDataset(TensorDataset(inputs, torch.arange(N_DDP) % 3))


def _ddp_worker(rank: int, port: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        data = _ddp_data()
        sampler = DistributedSampler(data, shuffle=True, seed=0)
        loader = DataLoader(
            data, batch_size=4, sampler=sampler, num_workers=1, persistent_workers=True
        )
        dynamics = TrainingDynamics(len(data))
        seen = []
        for epoch in range(EPOCHS_DDP):
            sampler.set_epoch(epoch)
            for x, y, index in loader:
                dynamics.update(_ddp_model(x, epoch), y, index)
                seen += index.tolist()
            dynamics.end_epoch()
        assert len(seen) < EPOCHS_DDP * N_DDP  # this rank saw only its shard
        local = TrainingDynamics(len(data), distributed=False)  # no gathering: its shard only
        local.update(_ddp_model(data.dataset.tensors[0][:2], 0), torch.tensor([0, 1]), [0, 1])
        local.end_epoch()
        torch.save(dynamics.state_dict(), Path(folder) / f"rank{rank}.pt")
        sel = select_from_dynamics(dynamics, strategy="cumulative_accuracy")
        sel.save(Path(folder) / f"sel{rank}.npz")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_on_gloo_gather_the_single_process_record(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, 2, str(tmp_path)), nprocs=2, start_method="spawn")
    data = _ddp_data()
    alone = TrainingDynamics(len(data))
    x, y, index = next(iter(DataLoader(data, batch_size=len(data))))
    for epoch in range(EPOCHS_DDP):
        alone.update(_ddp_model(x, epoch), y, index)
        alone.end_epoch()
    expected = alone.state_dict()
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt")
        for name, value in expected.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(state[name], value, msg=f"rank {rank}: {name}")
            else:
                assert state[name] == value
    sels = [Selection.load(tmp_path / f"sel{r}.npz") for r in range(2)]
    np.testing.assert_array_equal(sels[0].mask, sels[1].mask)
    np.testing.assert_array_equal(
        sels[0].mask, select_from_dynamics(alone, strategy="cumulative_accuracy").mask
    )


# --- the benchmark ------------------------------------------------------------------------------
def test_bench_dynamics_quick_runs_and_prints_its_tables():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_dynamics.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for strategy in ("kmeans", *_STRATEGIES):
        assert f"| {strategy} " in out
    assert "Digits with a planted shortcut" in out
    assert "| random(learned_epoch)@2 |" in out and "| oracle |" in out

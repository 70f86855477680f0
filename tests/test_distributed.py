"""USEFUL under torch.distributed: 2 CPU processes on gloo, checked against one process.

Spawning costs seconds, so one spawned run carries every multi-rank check; the example script
is smoke-tested once under torchrun.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler, TensorDataset

from useful_data import Selection, UpsampleSampler, USEFULDataset, find_slow_learnable
from useful_data._comm import resolve_distributed, shard_indices
from useful_data._sharded import assign_classes, collect_outputs_sharded, select_across_ranks
from useful_data.collect import collect_outputs
from useful_data.distributed import gather_outputs, save_on_rank0
from useful_data.slow_learnable import _select_from_logits as select_from_logits
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- single-process pieces ---------------------------------------------------------------------
def test_shards_partition_the_dataset():
    for n in (0, 1, 7, 10, 33):
        for world, block in ((3, 1), (2, 4), (3, 5)):
            shards = [shard_indices(n, r, world, block=block).tolist() for r in range(world)]
            assert sorted(i for shard in shards for i in shard) == list(range(n))
            for shard in shards:  # whole blocks: every block is on one rank
                assert len({i // block % world for i in shard}) <= 1
    with pytest.raises(ValueError, match="rank=2"):
        shard_indices(5, 2, 2)
    with pytest.raises(ValueError, match="block=0"):
        shard_indices(5, 0, 2, block=0)


def test_assign_classes_balances_and_covers():
    targets = np.repeat(np.arange(5), [50, 40, 30, 20, 10])
    owner = assign_classes(targets, 2)
    assert owner.shape == targets.shape
    for label in range(5):  # a class is never split between ranks
        assert len(set(owner[targets == label].tolist())) == 1
    assert sorted(np.bincount(owner).tolist()) == [70, 80]
    assert set(assign_classes(targets, 8).tolist()) == set(range(5))  # idle ranks are fine


def test_outside_a_process_group():
    assert resolve_distributed(None) is False
    assert resolve_distributed(False) is False
    with pytest.raises(RuntimeError, match="init_process_group"):
        resolve_distributed(True)
    with pytest.raises(TypeError, match="distributed='yes'"):
        resolve_distributed("yes")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="init_process_group"):
        find_slow_learnable(
            torch.nn.Linear(2, 2), TensorDataset(torch.zeros(2, 2)), distributed=True
        )


@pytest.mark.parametrize(
    ("module", "name", "where"),
    [
        (
            "useful_data.distributed",
            "collect_outputs_sharded",
            "useful_data._sharded:collect_outputs_sharded",
        ),
        (
            "useful_data.distributed",
            "select_across_ranks",
            "useful_data._sharded:select_across_ranks",
        ),
        ("useful_data.distributed", "assign_classes", "useful_data._sharded:assign_classes"),
        ("useful_data.distributed", "shard_indices", "useful_data._comm:shard_indices"),
        ("useful_data.distributed", "get_rank", "useful_data._comm:get_rank"),
        ("useful_data.distributed", "get_world_size", "useful_data._comm:get_world_size"),
        ("useful_data.distributed", "is_distributed", "useful_data._comm:is_distributed"),
        ("useful_data.collect", "default_batch_size", "useful_data._batches:default_batch_size"),
        ("useful_data.collect", "model_device", "useful_data._batches:model_device"),
        (
            "useful_data.streaming",
            "collect_stream_outputs",
            "useful_data._streaming:collect_stream_outputs",
        ),
        ("useful_data.streaming", "stream_outputs", "useful_data._streaming:stream_outputs"),
        ("useful_data.streaming", "with_keys", "useful_data._streaming:with_keys"),
        (
            "useful_data.slow_learnable",
            "select_from_logits",
            "useful_data.slow_learnable:_select_from_logits",
        ),
    ],
)
def test_names_made_private_in_1_0_still_import_with_a_warning(module, name, where):
    import importlib

    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} is private since"):
        found = getattr(importlib.import_module(module), name)
    where_module, _, where_name = where.partition(":")
    assert found is getattr(importlib.import_module(where_module), where_name)


def test_public_names_of_the_data_path():
    import useful_data.collect
    import useful_data.distributed
    import useful_data.slow_learnable
    import useful_data.streaming

    assert useful_data.collect.__all__ == ["collect_outputs"]
    assert useful_data.distributed.__all__ == ["gather_outputs", "save_on_rank0"]
    assert useful_data.slow_learnable.__all__ == ["find_slow_learnable"]
    assert useful_data.streaming.__all__ == []


# --- the spawned 2-rank run --------------------------------------------------------------------
def _mixed_data(num_examples: int) -> tuple[torch.nn.Module, TensorDataset]:
    """A seeded linear model on 4 classes; class 3 has one example (left unsplit)."""
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(num_examples, 6, generator=g)
    targets = torch.randint(0, 3, (num_examples,), generator=g)
    targets[17] = 3
    model = torch.nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 6, generator=g))
        model.bias.zero_()
    return model, TensorDataset(inputs, targets)


def _same_selection(a: Selection, b: Selection) -> None:
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.loss, b.loss)
    assert np.array_equal(a.targets, b.targets)
    assert a.unsplit == b.unsplit
    assert a.params == b.params and a.upsample_factor == b.upsample_factor


def _gathered(value):
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _check_gather(rank: int) -> None:
    # n=1: rank 1 holds nothing; 301 is odd; block 32 leaves a short last block.
    for n, block in ((1, 1), (2, 1), (301, 1), (301, 32), (64, 32), (5, 32)):
        shard = shard_indices(n, rank, WORLD, block=block)
        local = torch.from_numpy(shard).float()
        gathered = gather_outputs(local, n, block=block)
        assert torch.equal(gathered, torch.arange(n, dtype=torch.float32))
        both = torch.stack([local, -local], dim=1)
        half = gather_outputs(both, n, block=block, dtype=torch.float16)
        assert half.dtype == torch.float16 and half.shape == (n, 2)
    with pytest.raises(ValueError, match="should pass the outputs of its"):
        gather_outputs(torch.zeros(5), 301)


def _check_selection(rank: int) -> Selection:
    # A dataset without .targets: labels come from the items and are gathered too.
    model, data = _mixed_data(301)
    single_outputs, single_targets = collect_outputs(model, data, batch_size=32, progress=False)
    outputs, targets = collect_outputs_sharded(model, data, batch_size=32, progress=False)
    assert torch.equal(outputs, single_outputs) and torch.equal(targets, single_targets)
    # A CNN on images: each rank decides channels_last on its own first batch (on a CPU, the
    # default), and the gathered outputs are still bit for bit the single-process ones.
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3)
    )
    images = TensorDataset(torch.randn(75, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    single_cnn, _ = collect_outputs(cnn, images, batch_size=16, progress=False)
    sharded_cnn, _ = collect_outputs_sharded(cnn, images, batch_size=16, progress=False)
    assert torch.equal(sharded_cnn, single_cnn)
    # The default batch (128 on a CPU) is the shards' block size too: 301 = 128 + 128 + 45.
    default_single, _ = collect_outputs(model, data, progress=False)
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    default_sharded, _ = collect_outputs_sharded(model, data, progress=False)
    hook.remove()
    assert torch.equal(default_sharded, default_single)
    assert seen == ([128, 45] if rank == 0 else [128])  # batches 0 and 2, or batch 1
    kwargs = {"backend": "sklearn", "n_init": 3, "batch_size": 32, "progress": False}
    single = find_slow_learnable(model, data, distributed=False, **kwargs)
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # unwrapped inside
    sharded = find_slow_learnable(ddp, data, **kwargs)
    _same_selection(sharded, single)
    assert sharded.unsplit == {3: "single example"}
    # The paper's synthetic data (has .targets): a trained ToyCNN, N not divisible by 2.
    train = make_simplicity_bias_data(301, seed=1)
    net = ToyCNN(seed=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(40):  # a partly trained model; any split is fine
        loss = torch.nn.functional.cross_entropy(net(train.inputs), train.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    kwargs["backend"] = "sklearn"
    single = find_slow_learnable(net, train, distributed=False, **kwargs)
    sharded = find_slow_learnable(net, train, **kwargs)
    _same_selection(sharded, single)
    assert 0 < sharded.num_slow_learnable < 301
    digests = _gathered((sharded.mask.tobytes(), sharded.loss.tobytes()))
    assert digests[0] == digests[1]  # every rank returned the same Selection
    # Precomputed logits= are clustered across ranks as well.
    logits = single_outputs.numpy()
    from_logits = find_slow_learnable(logits=logits, targets=single_targets, backend="sklearn")
    _same_selection(from_logits, select_from_logits(logits, single_targets, backend="sklearn"))
    with pytest.raises(ValueError, match="same on every rank"):  # ranks with other labels
        select_across_ranks(select_from_logits, logits, (single_targets + rank) % 3)
    # Bad outputs fail on every rank alike, counted over all N rows (not one rank's classes).
    bad = logits.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 of 301 rows contain NaN or inf \(first at index 5\)"):
        find_slow_learnable(logits=bad, targets=single_targets, backend="sklearn")
    return sharded


def _padding(size: int) -> int:
    return math.ceil(size / WORLD) * WORLD - size


def _check_union(shards: list[list[int]], multiset: Counter, padding: int) -> None:
    union = Counter(shards[0]) + Counter(shards[1])
    assert not multiset - union  # every upsampled index is served...
    assert sum((union - multiset).values()) == padding  # ...plus only the padding


def _check_samplers(rank: int, selection: Selection) -> None:
    n, k = selection.num_examples, selection.upsample_factor
    # The selection, and a variant one example larger or smaller so that N + |S| is odd.
    indices = selection.indices.tolist()
    odd = indices[:-1] if selection.upsampled_size % 2 == 0 else indices
    for chosen in (indices, odd):
        multiset = Counter(range(n)) + Counter(chosen * (k - 1))
        size = sum(multiset.values())
        sampler = UpsampleSampler(chosen, n, seed=3)  # num_replicas / rank from the group
        assert (sampler.num_replicas, sampler.rank) == (WORLD, rank)
        assert len(sampler) == math.ceil(size / WORLD)
        orders = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            shards = _gathered(list(sampler))
            _check_union(shards, multiset, _padding(size))  # the ranks used the same shuffle
            orders.append(shards)
        assert orders[0] != orders[1]  # reshuffled each epoch
        shards = _gathered(list(UpsampleSampler(chosen, n, seed=3, drop_last=True)))
        assert not (Counter(shards[0]) + Counter(shards[1])) - multiset  # dropped, not padded
    assert _padding(size) == 1  # the last case was the odd one

    # USEFULDataset + torch's own DistributedSampler.
    multiset = Counter(range(n)) + Counter(indices * (k - 1))
    wrapped = USEFULDataset(make_simplicity_bias_data(301, seed=1), selection)
    dsampler = DistributedSampler(wrapped, shuffle=True, seed=5)
    dsampler.set_epoch(1)
    shards = _gathered([int(wrapped.index_map[i]) for i in dsampler])
    _check_union(shards, multiset, _padding(len(wrapped)))


def _check_timm(rank: int) -> None:
    from timm.data import create_loader
    from torchvision.datasets import FakeData

    base = FakeData(size=21, image_size=(3, 16, 16), num_classes=3, random_offset=0)
    wrapped = USEFULDataset(base, [0, 4, 9, 13, 20])  # 26 positions, 13 per rank
    loader = create_loader(
        wrapped,
        input_size=(3, 16, 16),
        batch_size=4,
        is_training=True,
        distributed=True,
        num_workers=0,
        use_prefetcher=False,
        device=torch.device("cpu"),
    )
    assert isinstance(loader.sampler, DistributedSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (WORLD, rank)
    assert len(loader.sampler) == 13 and len(loader) == 3  # drop_last in training
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4,)
    shards = _gathered(list(loader.sampler))
    assert sorted(shards[0] + shards[1]) == list(range(26))


def _check_save(rank: int, selection: Selection, folder: str) -> None:
    path = Path(folder) / "selection.npz"
    calls = []
    original = Selection.save

    def counting_save(self, p):
        calls.append(p)
        return original(self, p)

    Selection.save = counting_save  # type: ignore[method-assign]
    try:
        written = save_on_rank0(selection, path)
        with pytest.raises(RuntimeError, match="failed on rank 0"):
            save_on_rank0(selection, Path(folder) / "missing" / "x.npz")
    finally:
        Selection.save = original  # type: ignore[method-assign]
    assert _gathered(len(calls)) == [2, 0]  # one good and one failed write, on rank 0 only
    assert written == path
    loaded = Selection.load(written)  # right after: rank 0 finished before any rank returned
    _same_selection(loaded, selection)
    assert len(UpsampleSampler(written)) == len(UpsampleSampler(selection))
    assert [p.name for p in Path(folder).iterdir()] == ["selection.npz"]  # no temp files left


class BadItem(Exception):
    """A user's own exception type, raised by a dataset item."""


class CodedError(Exception):
    """An exception type that cannot be rebuilt from a message alone."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")


class _FailsAt5(torch.utils.data.Dataset):
    """16 examples; reading example 5 (in rank 1's second batch of 4) raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        if i == 5:
            raise self.error
        return torch.full((3,), float(i)), i % 2


def _check_failures(rank: int) -> None:
    """Rank 1 raises in its shard and stays alive: both ranks raise at once, with the cause."""
    model = torch.nn.Linear(3, 2)
    errors = [
        ValueError("item 5 is bad"),
        TypeError("item 5 is bad"),
        RuntimeError("item 5 is bad"),
        BadItem("item 5 is bad"),
        CodedError(7, "item 5 is bad"),
    ]
    for error in errors:
        expected = RuntimeError if rank == 0 and isinstance(error, CodedError) else type(error)
        start = time.monotonic()
        with pytest.raises(expected, match="item 5 is bad") as raised:
            find_slow_learnable(model, _FailsAt5(error), batch_size=4, progress=False)
        assert time.monotonic() - start < 30  # not the process group's timeout
        if rank == 0:
            assert f"the eval pass failed on rank 1 with {type(error).__name__}" in str(
                raised.value
            )
        else:
            assert raised.value is error  # the failed rank raises its own exception
    # a failure in the per-class selection on one rank reaches every rank too
    logits, targets = torch.randn(20, 2), torch.arange(20) % 2

    def select(part_logits, part_targets):
        if rank == 1:
            raise BadItem("clustering failed")
        return select_from_logits(part_logits, part_targets, backend="sklearn")

    with pytest.raises(BadItem, match="clustering failed"):
        select_across_ranks(select, logits, targets)


def _check_diagnostics_are_global() -> None:
    """Class 0 (rank 0's) splits cleanly, class 1 (rank 1's) is noise: alone, rank 1's part
    is weakly separated (AUC ~0.55), the whole selection is not (~0.82). Every rank warns as
    one process does, from the whole selection."""
    g = np.random.default_rng(0)
    clear = np.concatenate([g.normal([4, 0], 0.3, (30, 2)), g.normal([0, 0], 0.3, (30, 2))])
    logits = np.concatenate([clear, g.normal(0, 1, (40, 2))]).astype(np.float32)
    targets = np.array([0] * 60 + [1] * 40)
    said = []
    for distributed in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            selection = find_slow_learnable(
                logits=logits, targets=targets, backend="sklearn", distributed=distributed
            )
        said.append(sorted(str(w.message) for w in caught))
    assert said[0] == said[1]  # the same findings as one process (Selection.diagnose's)
    assert not any("weakly separated" in message for message in said[0]), said[0]
    assert selection.separation.auc > 0.8


def _worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),  # a hang fails the test, not stalls it
    )
    try:
        _check_failures(rank)
        _check_diagnostics_are_global()
        _check_gather(rank)
        selection = _check_selection(rank)
        _check_samplers(rank, selection)
        _check_timm(rank)
        _check_save(rank, selection, folder)
        dist.barrier()  # no rank tears the group down while another still talks
    finally:
        dist.destroy_process_group()


def test_two_ranks_on_gloo(tmp_path):
    mp.start_processes(
        _worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn"
    )


def test_example_under_torchrun(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(ROOT / "examples" / "train_distributed.py"), "--tiny", "--out", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "world_size=2 backend=gloo" in out
    assert out.count("selection identical on all ranks") == 1  # printed by rank 0 only
    assert "saved selection to" in out and (tmp_path / "selection.npz").is_file()
    assert "phase 2" in out

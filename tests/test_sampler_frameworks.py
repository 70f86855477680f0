"""`UpsampleSampler` where frameworks shard, and resuming it mid-epoch.

Each epoch must hold exactly the upsampled multiset across all processes: the sampler shards
itself where the framework keeps it as a ``DistributedSampler`` (Lightning, Fabric, Ray, plain
DDP); where the framework shards its batches (Accelerate's ``BatchSamplerShard``, hence the
Hugging Face ``Trainer``) it is built with ``num_replicas=1, rank=0``, the one documented
switch, and yields the whole multiset; once an ``Accelerator`` exists, a sampler that would
shard itself refuses. The frameworks' own end-to-end runs are in their test files; here the
sampler's side of each contract is pinned down.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

import useful_data.sampler as sampler_module
from useful_data import UpsampleSampler

N, SLOW = 40, list(range(0, 40, 4))  # 10 slow-learnable: an epoch holds 50 items
EXPECTED = Counter({**dict.fromkeys(range(N), 1), **dict.fromkeys(SLOW, 2)})


@pytest.fixture(autouse=True)
def no_accelerator():
    """Each test starts without an ``Accelerator`` (another test file of this pytest process
    may have made one), and leaves Accelerate's process-wide state as it found it."""
    state = sys.modules.get("accelerate.state")
    if state is None:
        yield
        return
    shared = (state.AcceleratorState._shared_state, state.PartialState._shared_state)
    saved = [dict(d) for d in shared]
    for d in shared:
        d.clear()
    yield
    for d, old in zip(shared, saved, strict=True):
        d.clear()
        d.update(old)


def fake_group(monkeypatch, world: int, rank: int) -> None:
    """Make the sampler see a process group of ``world`` ranks as ``rank``."""
    monkeypatch.setattr(sampler_module, "get_world_size", lambda: world)
    monkeypatch.setattr(sampler_module, "get_rank", lambda: rank)


# --- it is a DistributedSampler, so frameworks keep it ----------------------------------------
def test_is_a_distributed_sampler_so_lightning_and_ray_keep_it():
    sampler = UpsampleSampler(SLOW, num_examples=N)
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.shuffle, sampler.seed) == (1, 0, True, 0)
    assert (sampler.num_samples, sampler.total_size, sampler.drop_last) == (50, 50, False)


# --- rank and world size are read when an epoch starts ----------------------------------------
def test_unset_rank_and_world_size_are_read_per_epoch_not_at_construction(monkeypatch):
    samplers = [UpsampleSampler(SLOW, num_examples=N, seed=3) for _ in range(2)]  # no group yet
    shards = []
    for rank, sampler in enumerate(samplers):
        fake_group(monkeypatch, 2, rank)  # the group comes up afterwards
        assert (sampler.num_replicas, sampler.rank, len(sampler)) == (2, rank, 25)
        shards.append(list(sampler))
    assert Counter(shards[0] + shards[1]) == EXPECTED
    reference = DistributedSampler(range(50), num_replicas=2, rank=1, shuffle=False)
    whole = list(UpsampleSampler(SLOW, num_examples=N, seed=3, num_replicas=1, rank=0))
    assert shards[1] == [whole[i] for i in reference]


def test_explicit_rank_and_world_size_win_over_the_group(monkeypatch):
    fake_group(monkeypatch, 4, 3)
    sampler = UpsampleSampler(SLOW, num_examples=N, num_replicas=2, rank=0)
    assert (sampler.num_replicas, sampler.rank, len(sampler), len(list(sampler))) == (2, 0, 25, 25)


def test_an_explicit_rank_outside_the_group_fails_when_the_epoch_starts(monkeypatch):
    sampler = UpsampleSampler(SLOW, num_examples=N, rank=2)
    fake_group(monkeypatch, 2, 0)
    with pytest.raises(ValueError, match=r"Invalid rank 2, rank should be in the interval \[0, 1"):
        list(sampler)


def test_setting_num_replicas_and_rank_is_checked():
    sampler = UpsampleSampler(SLOW, num_examples=N)
    sampler.num_replicas, sampler.rank = 2, 1
    assert len(list(sampler)) == 25
    with pytest.raises(ValueError, match="num_replicas"):
        sampler.num_replicas = 0
    with pytest.raises(TypeError, match="rank"):
        sampler.rank = 1.0  # type: ignore[assignment]


# --- Accelerate shards the batches: the sampler must not ---------------------------------------
def accelerate_batches(monkeypatch, make_sampler, world=2, batch_size=5, **shard_kwargs):
    """What each of ``world`` processes gets from Accelerate's ``BatchSamplerShard``."""
    from accelerate.data_loader import BatchSamplerShard

    per_rank = []
    for rank in range(world):
        fake_group(monkeypatch, world, rank)
        sampler = make_sampler()
        shard = BatchSamplerShard(
            BatchSampler(sampler, batch_size, drop_last=False),
            num_processes=world,
            process_index=rank,
            **shard_kwargs,
        )
        batches = list(shard)
        assert len(shard) == len(batches)  # the length Accelerate/Trainer plan steps with
        per_rank.append([i for batch in batches for i in batch])
    return per_rank


@pytest.mark.parametrize("split_batches", [False, True])
def test_under_accelerate_batch_sharding_each_epoch_is_the_whole_multiset(
    monkeypatch, split_batches
):
    pytest.importorskip("accelerate")
    per_rank = accelerate_batches(
        monkeypatch,
        lambda: UpsampleSampler(SLOW, num_examples=N, seed=1, num_replicas=1, rank=0),
        batch_size=10 if split_batches else 5,
        split_batches=split_batches,
    )
    assert [len(items) for items in per_rank] == [25, 25]
    assert Counter(per_rank[0] + per_rank[1]) == EXPECTED


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps its state per process (a Borg): forget the test's Accelerator after it,
    or every later test in this process would run 'under Accelerate'."""
    state = pytest.importorskip("accelerate.state")
    yield state
    state.AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("kwargs", [{}, {"num_replicas": 2, "rank": 0}])
def test_once_an_accelerator_exists_a_sampler_that_would_shard_refuses(
    monkeypatch, kwargs, fresh_accelerate_state
):
    """Forgetting ``num_replicas=1, rank=0`` under Accelerate would shard twice (each rank a
    quarter of the epoch on 2 processes): with an ``Accelerator`` of several processes in the
    process, iterating or sizing such a sampler raises, saying what to pass; before it exists,
    it shards. (The real 2-process case: tests/_accelerate_worker.py and _hf_worker.py.)"""
    accelerate = pytest.importorskip("accelerate")
    fake_group(monkeypatch, 2, 0)
    forgot = UpsampleSampler(SLOW, num_examples=N, **kwargs)
    recipe = UpsampleSampler(SLOW, num_examples=N, num_replicas=1, rank=0)
    assert len(forgot) == 25  # no Accelerator yet: its own shard
    accelerate.Accelerator(cpu=True)
    assert len(forgot) == 25  # an Accelerator of one process shards nothing: nothing lost
    # as `accelerate launch` / torchrun with 2 processes would make it
    monkeypatch.setitem(fresh_accelerate_state.PartialState._shared_state, "num_processes", 2)
    for use in (list, len):
        with pytest.raises(RuntimeError, match=r"num_replicas=2 .*UpsampleSampler\(\.\.\., "
                           r"num_replicas=1, rank=0\)"):  # fmt: skip
            use(forgot)
    assert len(recipe) == len(list(recipe)) == 50
    fake_group(monkeypatch, 1, 0)  # one process: nothing to shard, nothing refused
    assert len(UpsampleSampler(SLOW, num_examples=N)) == 50


def test_under_accelerate_num_replicas_1_is_accepted(monkeypatch):
    pytest.importorskip("accelerate")
    per_rank = accelerate_batches(
        monkeypatch, lambda: UpsampleSampler(SLOW, num_examples=N, num_replicas=1, rank=0)
    )
    assert Counter(per_rank[0] + per_rank[1]) == EXPECTED


def test_sharding_depends_on_the_arguments_not_on_who_iterates(monkeypatch):
    """No stack inspection: the same sampler yields the same indices inside Accelerate's
    ``BatchSamplerShard`` and outside it (its own shard, with the group's defaults)."""
    pytest.importorskip("accelerate")
    fake_group(monkeypatch, 2, 0)
    sampler = UpsampleSampler(SLOW, num_examples=N, seed=2)
    alone = list(sampler)
    assert len(alone) == 25
    (inside, _) = accelerate_batches(monkeypatch, lambda: sampler, world=2, batch_size=25)
    fake_group(monkeypatch, 2, 0)
    assert len(list(BatchSampler(sampler, 25, drop_last=False))) == 1  # 25 items: its shard
    assert inside == alone  # rank 0 of BatchSamplerShard got batch 0: the sampler's 25 items


# --- resumption ---------------------------------------------------------------------------------
def test_state_dict_resumes_mid_epoch_on_every_rank():
    for rank in range(2):

        def make(rank=rank):
            return UpsampleSampler(SLOW, num_examples=N, seed=5, num_replicas=2, rank=rank)

        full = make()
        full.set_epoch(3)
        expected = list(full)
        first = make()
        first.set_epoch(3)
        it = iter(first)
        seen = [next(it) for _ in range(7)]
        state = first.state_dict()
        assert state == {"epoch": 3, "yielded": 7, "seed": 5, "multiset_size": 50}
        resumed = make()
        resumed.load_state_dict(state)
        assert resumed.epoch == 3
        assert resumed.state_dict()["yielded"] == 7  # before iterating, the position it will take
        rest = list(resumed)
        assert seen + rest == expected
        resumed.set_epoch(4)  # the following epochs run in full
        assert len(list(resumed)) == 25


def test_a_restored_position_is_dropped_when_another_epoch_is_set():
    sampler = UpsampleSampler(SLOW, num_examples=N)
    sampler.load_state_dict({"epoch": 2, "yielded": 30, "seed": 0, "multiset_size": 50})
    sampler.set_epoch(2)
    assert len(list(sampler)) == 20
    sampler.load_state_dict({"epoch": 2, "yielded": 30, "seed": 0, "multiset_size": 50})
    sampler.set_epoch(3)
    assert len(list(sampler)) == 50


def test_position_at_the_end_of_an_epoch_resumes_to_an_empty_rest():
    sampler = UpsampleSampler(SLOW, num_examples=N)
    list(sampler)
    state = sampler.state_dict()
    assert state["yielded"] == 50
    sampler.load_state_dict(state)
    assert list(sampler) == []


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        ([1, 2], TypeError, "mapping"),
        ({"epoch": 0, "yielded": 0, "seed": 0}, ValueError, "missing"),
        ({"epoch": 0, "yielded": -1, "seed": 0, "multiset_size": 50}, ValueError, ">= 0"),
        ({"epoch": 0, "yielded": 1.5, "seed": 0, "multiset_size": 50}, TypeError, "yielded"),
        ({"epoch": 0, "yielded": 1, "seed": 9, "multiset_size": 50}, ValueError, "seed is 9"),
        ({"epoch": 0, "yielded": 1, "seed": 0, "multiset_size": 49}, ValueError, "another sampler"),
    ],
)
def test_bad_state_dicts_are_refused(state, error, match):
    with pytest.raises(error, match=match):
        UpsampleSampler(SLOW, num_examples=N).load_state_dict(state)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader_resumes_with_exactly_the_unseen_indices(num_workers):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    data = TensorDataset(torch.arange(N))

    def loader():
        sampler = UpsampleSampler(SLOW, num_examples=N, seed=7)
        sampler.set_epoch(1)
        return stateful.StatefulDataLoader(
            data, batch_size=4, sampler=sampler, num_workers=num_workers
        )

    first = loader()
    seen, it = [], iter(first)
    for _ in range(5):
        seen += next(it)[0].tolist()
    state = first.state_dict()
    del it
    second = loader()
    second.load_state_dict(state)
    rest = [i for (batch,) in second for i in batch.tolist()]
    assert len(seen) == 20
    assert Counter(seen + rest) == EXPECTED
    assert seen + rest == [i for (batch,) in loader() for i in batch.tolist()]


# --- a real process group, the sampler built before it exists ------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _built_before_the_group(rank: int, port: int, out: dict) -> None:
    sampler = UpsampleSampler(SLOW, num_examples=N, seed=11)  # no process group yet
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        loader = DataLoader(TensorDataset(torch.arange(N)), batch_size=5, sampler=sampler)
        epochs = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            epochs.append([i for (batch,) in loader for i in batch.tolist()])
        out[rank] = epochs
    finally:
        dist.destroy_process_group()


def test_built_before_init_process_group_it_shards_once_the_group_exists():
    out = mp.Manager().dict()
    mp.spawn(_built_before_the_group, args=(_free_port(), out), nprocs=2, join=True)
    for epoch in range(2):
        assert len(out[0][epoch]) == len(out[1][epoch]) == 25
        assert Counter(out[0][epoch] + out[1][epoch]) == EXPECTED
    assert out[0][0] != out[0][1]  # set_epoch reshuffles
    assert np.array_equal(sorted(out[0][0] + out[1][0]), sorted(out[0][1] + out[1][1]))


def test_under_accelerate_equal_length_epochs_are_dealt_out_whole(monkeypatch):
    pytest.importorskip("accelerate")
    per_rank = accelerate_batches(
        monkeypatch,
        lambda: UpsampleSampler(SLOW, num_examples=N, seed=1, epoch_size=N, num_replicas=1, rank=0),
    )
    assert [len(items) for items in per_rank] == [20, 20]  # SGD's 40 per epoch, not 50
    monkeypatch.undo()
    epoch = list(UpsampleSampler(SLOW, num_examples=N, seed=1, epoch_size=N))
    assert Counter(per_rank[0] + per_rank[1]) == Counter(epoch)

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from useful_data import UpsampleSampler, USEFULDataset


def _multiset(n, slow, k):
    return Counter(list(range(n)) + [i for i in slow for _ in range(k - 1)])


@pytest.mark.parametrize("n", [1, 7, 50])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_single_process_yields_the_upsampled_multiset(n, k, shuffle):
    slow = list(range(0, n, 3))
    sampler = UpsampleSampler(slow, num_examples=n, upsample_factor=k, shuffle=shuffle, seed=1)
    out = list(sampler)
    assert Counter(out) == _multiset(n, slow, k)
    assert len(out) == len(sampler) == n + (k - 1) * len(slow) == sampler.multiset_size


def test_same_multiset_as_useful_dataset():
    mask = np.zeros(20, dtype=bool)
    mask[[3, 5, 19]] = True
    ds = USEFULDataset(torch.utils.data.TensorDataset(torch.arange(20)), mask)
    assert Counter(UpsampleSampler(mask)) == Counter(ds.index_map.tolist())
    assert list(UpsampleSampler(mask, shuffle=False)) == ds.index_map.tolist()


@pytest.mark.parametrize(
    ("n", "num_slow", "k", "replicas", "drop_last"),
    list(itertools.product([5, 13, 64], [0, 1, 4], [2, 3], [1, 2, 3, 4], [False, True])),
)
def test_shards_match_torch_distributed_sampler_arithmetic(n, num_slow, k, replicas, drop_last):
    slow = list(range(num_slow))
    total = n + (k - 1) * num_slow
    shards = [
        list(
            UpsampleSampler(
                slow,
                num_examples=n,
                upsample_factor=k,
                num_replicas=replicas,
                rank=r,
                drop_last=drop_last,
                seed=7,
            )
        )
        for r in range(replicas)
    ]
    lengths = {len(s) for s in shards}
    assert len(lengths) == 1  # every rank gets the same number of samples
    per_rank = lengths.pop()
    expected = (
        math.ceil((total - replicas) / replicas)
        if drop_last and total % replicas
        else math.ceil(total / replicas)
    )
    assert per_rank == expected
    # compare positions with torch's DistributedSampler over the same shuffled multiset
    full = list(UpsampleSampler(slow, num_examples=n, upsample_factor=k, seed=7))
    ref = [
        [
            full[i]
            for i in DistributedSampler(
                range(total), num_replicas=replicas, rank=r, shuffle=False, drop_last=drop_last
            )
        ]
        for r in range(replicas)
    ]
    assert shards == ref
    union = Counter(itertools.chain.from_iterable(shards))
    if drop_last:
        assert union == Counter(full[: per_rank * replicas])  # shards disjoint slices
    else:
        multiset = _multiset(n, slow, k)
        padded = union - multiset
        assert not (multiset - union)  # union covers the full multiset
        assert sum(padded.values()) == per_rank * replicas - total  # only padding is extra


def test_shards_are_disjoint_positions_without_padding():
    sampler_args = {"num_examples": 12, "upsample_factor": 2, "seed": 3}
    shards = [
        list(UpsampleSampler([0, 1, 2, 3], num_replicas=4, rank=r, **sampler_args))
        for r in range(4)
    ]
    assert Counter(itertools.chain.from_iterable(shards)) == _multiset(12, [0, 1, 2, 3], 2)


def test_deterministic_per_seed_and_epoch_and_changes_across_epochs():
    a = UpsampleSampler([1, 2, 3], num_examples=40, seed=11)
    b = UpsampleSampler([1, 2, 3], num_examples=40, seed=11)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    assert Counter(list(a)) == Counter(first)
    c = UpsampleSampler([1, 2, 3], num_examples=40, seed=12)
    assert list(c) != first


def test_epoch_order_is_consistent_across_ranks():
    def shard(rank, epoch):
        s = UpsampleSampler([0, 5], num_examples=30, num_replicas=2, rank=rank, seed=0)
        s.set_epoch(epoch)
        return list(s)

    for epoch in range(3):
        union = Counter(shard(0, epoch) + shard(1, epoch))
        assert union == _multiset(30, [0, 5], 2)


def test_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    list(UpsampleSampler([1], num_examples=10))
    assert torch.equal(torch.rand(1), expected)


def test_works_in_a_dataloader():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = DataLoader(data, batch_size=4, sampler=UpsampleSampler([9], num_examples=10))
    seen = torch.cat([b[0] for b in loader]).tolist()
    assert Counter(seen) == _multiset(10, [9], 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_replicas": 0}, ValueError, "num_replicas"),
        ({"num_replicas": 2, "rank": 2}, ValueError, r"Invalid rank 2"),
        ({"rank": -1}, ValueError, "rank"),
        ({"upsample_factor": 0}, ValueError, "upsample_factor"),
        ({"num_examples": 2}, ValueError, "index 3"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs.setdefault("num_examples", 10)
    with pytest.raises(error, match=match):
        UpsampleSampler([3], **kwargs)


def test_indices_need_num_examples():
    with pytest.raises(ValueError, match="num_examples"):
        UpsampleSampler([3])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": 1.5}, TypeError, "seed should be an integer"),
        ({"seed": "3"}, TypeError, "seed should be an integer"),
        ({"seed": True}, TypeError, "seed should be an integer"),
        ({"shuffle": "False"}, TypeError, "shuffle should be True or False"),
        ({"drop_last": 2}, TypeError, "drop_last should be True or False"),
    ],
)
def test_bad_seed_and_flags_are_rejected_up_front(kwargs, error, match):
    with pytest.raises(error, match=match):
        UpsampleSampler([1, 3], num_examples=5, **kwargs)


def test_set_epoch_takes_an_integer():
    sampler = UpsampleSampler([1, 3], num_examples=5)
    for bad in (1.7, "2", None):
        with pytest.raises(TypeError, match="epoch should be an integer"):
            sampler.set_epoch(bad)
    for good in (np.int64(3), torch.tensor(3), 3):
        sampler.set_epoch(good)
        assert sampler.epoch == 3 and type(sampler.epoch) is int


def test_any_integer_seed_works_like_torch_does():
    """Negative or 64-bit seeds (torch.initial_seed() can be >= 2**63) and 0/1 flags, as
    DistributedSampler takes them; seed + epoch wraps modulo 2**64 like a uint64 seed."""
    for seed in (-1, 2**63 + 5, 2**70):
        order = list(UpsampleSampler([1, 3], num_examples=5, seed=seed, shuffle=1))
        assert sorted(order) == [0, 1, 1, 2, 3, 3, 4]
    a = UpsampleSampler([1, 3], num_examples=5, seed=-1)
    b = UpsampleSampler([1, 3], num_examples=5, seed=2**64 - 1)
    assert list(a) == list(b)


def test_an_integer_zero_one_mask_is_named_as_such():
    with pytest.raises(ValueError, match=r"holds only 0s and 1s.*pass booleans"):
        UpsampleSampler(np.array([1, 0, 1, 0, 0]), num_examples=5)
    assert list(UpsampleSampler([0, 1], num_examples=3, shuffle=False)) == [0, 1, 2, 0, 1]


def test_epoch_order_is_the_multiset_permuted_by_a_generator_seeded_seed_plus_epoch():
    """Pin the documented formula: another seed offset would change every run's order."""
    sampler = UpsampleSampler([1, 3], num_examples=6, seed=11)
    multiset = torch.tensor([0, 1, 2, 3, 4, 5, 1, 3])
    for epoch in (0, 4):
        sampler.set_epoch(epoch)
        order = torch.randperm(8, generator=torch.Generator().manual_seed(11 + epoch))
        assert list(sampler) == multiset[order].tolist()


def test_len_is_one_rank_s_length_as_distributed_sampler_s():
    for drop_last in (False, True):
        for rank in range(3):  # 6 examples, 2 upsampled: 8 indices over 3 ranks
            sampler = UpsampleSampler(
                [1, 3], num_examples=6, num_replicas=3, rank=rank, drop_last=drop_last
            )
            ref = DistributedSampler(range(8), num_replicas=3, rank=rank, drop_last=drop_last)
            assert len(sampler) == len(list(sampler)) == len(ref)


def test_more_replicas_than_indices_pads_by_repeating_as_distributed_sampler_does():
    for rank in range(5):
        sampler = UpsampleSampler(np.zeros(2, dtype=bool), num_replicas=5, rank=rank, shuffle=False)
        ref = DistributedSampler(range(2), num_replicas=5, rank=rank, shuffle=False)
        assert list(sampler) == list(ref)
        assert len(list(sampler)) == len(sampler) == 1


# --- epoch_size: equal-length epochs -------------------------------------------------------------
def _epochs(sampler, epochs):
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("epoch_size", [1, 4, 10, 13, 20])  # 20 = k N, the bound: 3 passes
def test_epoch_size_epochs_tile_successive_passes_over_the_multiset(shuffle, epoch_size):
    n, slow, k = 10, [1, 4], 2  # 12 indices per pass
    sampler = UpsampleSampler(
        slow, num_examples=n, upsample_factor=k, shuffle=shuffle, seed=3, epoch_size=epoch_size
    )
    assert len(sampler) == sampler.epoch_size == epoch_size
    epochs = _epochs(sampler, range(12))  # 12 epochs of M cover exactly M full passes
    assert all(len(e) == epoch_size for e in epochs)
    stream = [i for e in epochs for i in e]
    passes = [stream[p : p + 12] for p in range(0, len(stream), 12)]
    assert len(passes) == epoch_size
    for pass_ in passes:
        assert Counter(pass_) == _multiset(n, slow, k)  # without replacement within a pass
    # each pass is the order the default sampler gives for that epoch number
    default = UpsampleSampler(slow, num_examples=n, upsample_factor=k, shuffle=shuffle, seed=3)
    assert passes == _epochs(default, range(epoch_size))


def test_epoch_size_of_the_multiset_is_the_default_and_depends_only_on_the_epoch():
    default = UpsampleSampler([1, 4], num_examples=10, seed=9)
    same = UpsampleSampler([1, 4], num_examples=10, seed=9, epoch_size=12)
    assert _epochs(same, range(4)) == _epochs(default, range(4))
    sampler = UpsampleSampler([1, 4], num_examples=10, seed=9, epoch_size=10)
    forward = _epochs(sampler, range(6))
    assert _epochs(sampler, [5, 2, 0]) == [forward[5], forward[2], forward[0]]  # no hidden state
    other_seed = UpsampleSampler([1, 4], num_examples=10, seed=10, epoch_size=10)
    assert _epochs(other_seed, range(6)) != forward


@pytest.mark.parametrize(("replicas", "drop_last"), [(2, False), (3, False), (3, True), (4, True)])
def test_epoch_size_shards_each_epoch_like_distributed_sampler(replicas, drop_last):
    kwargs = {"num_examples": 10, "seed": 4, "epoch_size": 10, "drop_last": drop_last}
    whole = _epochs(UpsampleSampler([1, 4], **kwargs), range(3))
    for epoch in range(3):
        shards = [
            _epochs(UpsampleSampler([1, 4], num_replicas=replicas, rank=r, **kwargs), [epoch])[0]
            for r in range(replicas)
        ]
        assert len({len(s) for s in shards}) == 1
        num_samples = len(shards[0])
        if drop_last:
            assert num_samples == 10 // replicas
            expected = whole[epoch][: num_samples * replicas]
        else:
            assert num_samples == math.ceil(10 / replicas)
            expected = (whole[epoch] * 2)[: num_samples * replicas]  # padded from its start
        interleaved = [shards[r][i] for i in range(num_samples) for r in range(replicas)]
        assert interleaved == expected


def test_epoch_size_state_dict_resumes_mid_epoch_and_refuses_another_epoch_size():
    def make(epoch_size=10):
        return UpsampleSampler([1, 4], num_examples=10, seed=2, epoch_size=epoch_size)

    full = make()
    full.set_epoch(7)
    expected = list(full)
    first = make()
    first.set_epoch(7)
    it = iter(first)
    seen = [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state == {"epoch": 7, "yielded": 4, "seed": 2, "multiset_size": 12, "epoch_size": 10}
    resumed = make()
    resumed.load_state_dict(state)
    assert seen + list(resumed) == expected
    with pytest.raises(ValueError, match="epoch_size is 10, this sampler's is 11"):
        make(11).load_state_dict(state)
    with pytest.raises(ValueError, match="epoch_size is 12, this sampler's is 10"):
        make().load_state_dict({k: v for k, v in state.items() if k != "epoch_size"})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epoch_size": 0}, ValueError, "epoch_size should be an integer >= 1"),
        ({"epoch_size": 2.5}, TypeError, "epoch_size"),
        ({"epoch_size": 3, "num_examples": 0, "selection": []}, ValueError, "empty"),
        (
            {"epoch_size": 11},
            ValueError,
            r"epoch_size should be at most upsample_factor x num_examples = 2 x 5 = 10 .*"
            r"but got epoch_size=11",
        ),
        ({"epoch_size": 10**13}, ValueError, "at most upsample_factor x num_examples"),
        (
            {"epoch_size": 4 * 10**12, "upsample_factor": 10**12, "selection": []},
            ValueError,
            r"epoch_size=4000000000000 makes epochs whose indices .* exceed this machine",
        ),
    ],
)
def test_epoch_size_is_checked(kwargs, error, match):
    kwargs = {"selection": [1], "num_examples": 5, **kwargs}
    with pytest.raises(error, match=match):
        UpsampleSampler(**kwargs)


def test_sizes_that_would_not_fit_in_memory_are_refused_before_allocating():
    """Issue #25 (sizes): num_examples for indices, and num_replicas whose padded epoch would
    be allocated, are refused with a ValueError naming them, not a MemoryError."""
    with pytest.raises(ValueError, match=r"num_examples=10000000000000 makes a mask"):
        UpsampleSampler([1], 10**13, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match=r"num_replicas=10000000000000 pads an epoch"):
        UpsampleSampler([1], 5, num_replicas=10**13, rank=0)
    assert len(list(UpsampleSampler([1], 5, num_replicas=8, rank=7))) == 1  # padding is fine


def test_a_state_that_yielded_more_than_an_epoch_is_refused():
    """A saved position past the epoch's end would silently skip the whole epoch."""
    sampler = UpsampleSampler([1], 5, num_replicas=2, rank=0)
    state = sampler.state_dict()
    sampler.load_state_dict({**state, "yielded": 3})  # the whole shard: a finished epoch
    assert list(sampler) == []
    with pytest.raises(ValueError, match=r"state_dict\['yielded'\] should be at most the 3"):
        sampler.load_state_dict({**state, "yielded": 4})

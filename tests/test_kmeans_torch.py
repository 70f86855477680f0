"""The "torch" backend must be scikit-learn's KMeans(n_clusters=2), label for label."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import two_blob_logits
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from useful_data import _cluster, find_slow_learnable
from useful_data._kmeans_torch import _sklearn_draws, kmeans2, kmeans2_many


def _inertia(x: np.ndarray, labels: np.ndarray) -> float:
    x = x.astype(np.float64)
    parts = [x[labels == k] for k in (0, 1) if np.any(labels == k)]
    return float(sum(((part - part.mean(0)) ** 2).sum() for part in parts))


def _sklearn(x: np.ndarray, seed: int, n_init: int = 10, **kwargs) -> KMeans:
    with threadpool_limits(1):  # sklearn's OpenMP spins badly on a shared 2-core box
        return KMeans(2, n_init=n_init, random_state=seed, algorithm="lloyd", **kwargs).fit(x)


def _stacked(blocks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The blocks stacked into one ``(N, D)`` array, and each block's rows in it."""
    bounds = np.cumsum([0] + [len(b) for b in blocks])
    return np.concatenate(blocks), [np.arange(a, b) for a, b in itertools.pairwise(bounds)]


def _random_problems(count: int, seed: int = 0):
    """Unstructured data (many local optima): where a wrong seed or stop would show."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n, d = int(rng.integers(5, 300)), int(rng.integers(1, 40))
        x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0) + rng.normal(size=d) * 20.0
        yield i, x.astype(np.float32)


def test_draws_are_sklearns():
    """The first center of every restart is the one scikit-learn's first k-means++ step takes."""
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    first, _ = _sklearn_draws(50, 4, 7)
    rng = np.random.RandomState(7)
    for r in range(4):
        ref = rng.choice(50, p=np.full(50, 1 / 50, dtype=np.float32))
        rng.uniform(size=2)
        assert first[r] == ref
    assert _sklearn(x, 7, n_init=1).labels_.shape == (50,)


def test_labels_equal_sklearns_on_random_data():
    """Same labels (not just the same partition) on 40 problems with many local optima, where
    restarts end in different partitions, so a different seed, stop or restart choice shows."""
    for i, x in _random_problems(40, seed=2):
        ref = _sklearn(x, seed=i)
        labels, inertia = kmeans2(torch.from_numpy(x), n_init=10, seed=i)
        np.testing.assert_array_equal(labels.numpy(), ref.labels_, err_msg=f"problem {i}")
        assert inertia == pytest.approx(_inertia(x, ref.labels_), rel=1e-5)


def test_single_restart_and_tol_stop_equal_sklearns():
    """n_init=1 isolates seeding + Lloyd; tol=1e-2 makes scikit-learn stop early by center
    shift and reassign once, which must be copied too."""
    for i, x in _random_problems(25, seed=3):
        for tol in (1e-4, 1e-2):
            ref = _sklearn(x, seed=i, n_init=1, tol=tol)
            labels, _ = kmeans2(torch.from_numpy(x), n_init=1, seed=i, tol=tol)
            np.testing.assert_array_equal(labels.numpy(), ref.labels_, err_msg=f"{i}, {tol}")


def test_larger_weakly_separated_classes_match_up_to_rounding():
    """Thousands of points, overlapping clusters: scikit-learn sums and compares inertias in
    float32, so where two restarts' partitions tie to ~1e-6 either may be taken. Ours must be
    scikit-learn's, or a partition at least as good up to that rounding."""
    rng = np.random.default_rng(3)
    equal = 0
    for i in range(8):
        n, d = int(rng.integers(2000, 6000)), int(rng.choice([10, 100]))
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[: n // 3] += rng.uniform(0.2, 2)
        ref = _sklearn(x, seed=i).labels_
        labels = kmeans2(torch.from_numpy(x), n_init=10, seed=i)[0].numpy()
        equal += np.array_equal(labels, ref)
        assert _inertia(x, labels) <= _inertia(x, ref) * (1 + 1e-6), f"problem {i}"
    assert equal >= 5


def test_many_blocks_equal_one_at_a_time():
    """Batching classes of different sizes (padding, chunking) changes nothing."""
    rng = np.random.default_rng(5)
    blocks = [rng.normal(size=(int(rng.integers(2, 200)), 6)).astype(np.float32) for _ in range(12)]
    alone = [kmeans2(torch.from_numpy(b), n_init=5, seed=3)[0].numpy() for b in blocks]
    x, groups = _stacked(blocks)
    for chunk in (1, 5000, 1 << 20):  # one class per chunk, a few, all at once
        batched = kmeans2_many(x, groups, n_init=5, seed=3, chunk_elements=chunk)
        for a, b in zip(alone, batched, strict=True):
            np.testing.assert_array_equal(a, b)
    assert kmeans2_many(x, []) == []
    shuffled = np.random.default_rng(0).permutation(len(x))  # rows in any order
    inverse = np.argsort(shuffled)
    batched = kmeans2_many(x[shuffled], [inverse[g] for g in groups], n_init=5, seed=3)
    for a, b in zip(alone, batched, strict=True):
        np.testing.assert_array_equal(a, b)


def test_deterministic_given_seed_and_seed_matters():
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(300, 5)).astype(np.float32))
    a, _ = kmeans2(x, n_init=3, seed=7)
    b, _ = kmeans2(x, n_init=3, seed=7)
    assert torch.equal(a, b)
    results = {tuple(kmeans2(x, n_init=1, seed=s)[0].tolist()) for s in range(10)}
    assert len(results) > 1  # different seeds do start from different centers


def test_tf32_setting_is_restored():
    previous = torch.backends.cuda.matmul.allow_tf32
    kmeans2(torch.randn(20, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.backends.cuda.matmul.allow_tf32 == previous


def test_edge_cases_and_errors():
    labels, inertia = kmeans2(torch.tensor([[0.0], [1.0]]), n_init=4)
    assert sorted(labels.tolist()) == [0, 1] and inertia == 0.0
    same = torch.ones(5, 3)  # identical points: one cluster, no crash
    labels, inertia = kmeans2(same, n_init=2)
    assert labels.tolist() == [0] * 5 and inertia == 0.0
    with pytest.raises(ValueError, match=r"shape \(n, D\) with n >= 2, but got shape \(1, 3\)"):
        kmeans2(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="n_init=0"):
        kmeans2(torch.zeros(4, 3), n_init=0)
    with pytest.raises(ValueError, match="tol=-1"):
        kmeans2(torch.zeros(4, 3), tol=-1)


def test_torch_backend_in_find_slow_learnable():
    logits, targets, truth = two_blob_logits(n_per_class=200, num_classes=5)
    sel = find_slow_learnable(logits=logits, targets=targets, backend="torch")
    ref = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    assert sel.params["backend"] == "torch"
    np.testing.assert_array_equal(sel.mask, truth)
    np.testing.assert_array_equal(sel.mask, ref.mask)


def test_selection_equals_sklearns_on_ambiguous_classes():
    """Whole selections, on outputs with no clear split, are scikit-learn's."""
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(1500, 6)).astype(np.float32)
    targets = rng.integers(0, 6, 1500)
    ours = find_slow_learnable(logits=logits, targets=targets, backend="torch", seed=3)
    ref = find_slow_learnable(logits=logits, targets=targets, backend="sklearn", seed=3)
    np.testing.assert_array_equal(ours.mask, ref.mask)


def test_auto_means_cuml_else_torch(monkeypatch):
    monkeypatch.setattr(_cluster, "_cuml_installed", lambda: False)
    _cluster._cuml_probe.cache_clear()
    try:
        assert _cluster.resolve_backend("auto") == "torch"
        assert _cluster.resolve_backend("sklearn") == "sklearn"
    finally:
        _cluster._cuml_probe.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_labels():
    rng = np.random.default_rng(5)
    sizes = rng.integers(50, 3000, 20)
    blocks = [rng.normal(size=(int(n), 10)).astype(np.float32) for n in sizes]
    for block in blocks[:10]:
        block[: len(block) // 3] += 3.0
    torch.backends.cuda.matmul.allow_tf32 = True  # as timm's train.py sets it: must not matter
    try:
        gpu = kmeans2_many(*_stacked(blocks), n_init=10, seed=0, device="cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    cpu = kmeans2_many(*_stacked(blocks), n_init=10, seed=0)
    same = sum(np.array_equal(a, b) for a, b in zip(cpu, gpu, strict=True))
    assert same >= 18  # the rest may differ by float32 summation order only:
    for block, a, b in zip(blocks, cpu, gpu, strict=True):
        assert _inertia(block, b) == pytest.approx(_inertia(block, a), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_find_slow_learnable_clusters_on_the_models_gpu():
    logits, targets, truth = two_blob_logits(n_per_class=200, num_classes=5)
    sel = find_slow_learnable(logits=torch.as_tensor(logits).cuda(), targets=targets)
    np.testing.assert_array_equal(sel.mask, truth)


def test_torch_backend_clusters_on_cuda_or_the_cpu():
    from useful_data.slow_learnable import _cluster_device

    logits = np.zeros((4, 2), dtype=np.float32)
    assert _cluster_device(None, logits) == torch.device("cpu")
    assert _cluster_device("cuda:1", logits) == torch.device("cuda", 1)
    assert _cluster_device(torch.device("mps"), logits) == torch.device("cpu")  # no float64
    assert _cluster_device(None, torch.zeros(4, 2)) == torch.device("cpu")


@pytest.mark.parametrize("max_iter", [300, 3, 9])
def test_dense_loop_equals_sklearn_and_the_compacting_loop(max_iter):
    """The dense Lloyd loop (CUDA's, in blocks of steps that may overrun max_iter) and the
    compacting one (the CPU's) are scikit-learn's algorithm step for step, max_iter included."""
    from useful_data._kmeans_torch import _kmeans2_padded

    for i, x in _random_problems(15, seed=7):
        ref = _sklearn(x, seed=i, max_iter=max_iter).labels_
        for dense in (True, False):
            labels, _ = _kmeans2_padded(
                torch.from_numpy(x)[None], [len(x)], n_init=10, seed=i, max_iter=max_iter,
                tol=1e-4, dense=dense,
            )  # fmt: skip
            np.testing.assert_array_equal(labels[0].long().numpy(), ref, err_msg=f"{i} {dense}")
    rngs = [np.random.default_rng(k) for k in range(5)]
    x, groups = _stacked(
        [r.normal(size=(30 + 7 * k, 6)).astype(np.float32) for k, r in enumerate(rngs)]
    )
    sizes = [len(g) for g in groups]
    padded = np.zeros((5, max(sizes), 6), dtype=np.float32)
    for row, g in enumerate(groups):
        padded[row, : len(g)] = x[g]
    kwargs = dict(n_init=4, seed=1, max_iter=max_iter, tol=1e-4)
    a, _ = _kmeans2_padded(torch.from_numpy(padded), sizes, dense=True, **kwargs)
    b, _ = _kmeans2_padded(torch.from_numpy(padded), sizes, dense=False, **kwargs)
    assert torch.equal(a, b)


def test_padded_classes_far_from_the_origin_equal_one_at_a_time():
    """Each class in a padded chunk is centered on its own mean (over its rows, not the
    padding): with data far from the origin a wrong mean inflates the tolerance and Lloyd
    stops early. (The other batching tests use data centered near 0.)"""
    rng = np.random.default_rng(2)
    sizes = [34, 14, 8, 15, 19, 300]  # padded to 300 in one chunk
    blocks = [  # uniform (no clear split: Lloyd needs several steps), far from the origin
        (rng.uniform(size=(n, 6)) + 100.0 * rng.normal(size=6)).astype(np.float32) for n in sizes
    ]
    alone = [kmeans2(torch.from_numpy(b), n_init=5, seed=3)[0].numpy() for b in blocks]
    bounds = np.cumsum([0, *sizes])
    groups = [np.arange(a, b) for a, b in itertools.pairwise(bounds)]
    batched = kmeans2_many(np.concatenate(blocks), groups, n_init=5, seed=3)
    for a, b in zip(alone, batched, strict=True):
        np.testing.assert_array_equal(a, b)

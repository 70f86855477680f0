from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import two_blob_logits
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from useful_data import _cluster, find_slow_learnable
from useful_data._kmeans_torch import _seed_centers, kmeans2


def _inertia(x: np.ndarray, labels: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(sum(((x[labels == k] - x[labels == k].mean(0)) ** 2).sum() for k in (0, 1)))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b) or np.array_equal(a, 1 - b))


def _random_problems(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        n, d = int(rng.integers(5, 300)), int(rng.integers(1, 40))
        x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0) + rng.normal(size=d) * 20.0
        yield i, x.astype(np.float32)


def test_lloyd_equals_sklearn_from_the_same_seeded_centers():
    """Same k-means++ centers in, same partition out: the Lloyd part is scikit-learn's."""
    for i, x in _random_problems(25):
        xt = torch.from_numpy(x)
        mean = xt.double().mean(0).float()
        centered = xt - mean
        c0, c1 = _seed_centers(centered, (centered**2).sum(1), 1, torch.Generator().manual_seed(i))
        init = (torch.cat([c0, c1]) + mean).numpy()
        with threadpool_limits(1):
            ref = KMeans(2, init=init, n_init=1, tol=0.0, algorithm="lloyd").fit(x).labels_
        labels, inertia = kmeans2(xt, n_init=1, seed=i)
        np.testing.assert_array_equal(labels.numpy(), ref, err_msg=f"problem {i}")
        assert inertia == pytest.approx(_inertia(x, ref), rel=1e-4)


def test_well_separated_data_gives_sklearns_partition():
    rng = np.random.default_rng(1)
    for i in range(10):
        n, d = int(rng.integers(10, 500)), int(rng.integers(2, 100))
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[: int(rng.integers(1, n))] += 8.0 * rng.normal(size=d).astype(np.float32)
        with threadpool_limits(1):
            ref = KMeans(2, n_init=10, random_state=i, algorithm="lloyd").fit_predict(x)
        labels, _ = kmeans2(torch.from_numpy(x), n_init=10, seed=i)
        assert _same_partition(labels.numpy(), ref), f"problem {i}"


def test_random_data_inertia_is_as_good_as_sklearns():
    """Unstructured data has many local optima and the two draw different restarts, so either
    can win a single problem (measured: each wins about a third, by up to ~1.5%). What must
    hold is that neither is systematically better and we never lose by much: the geometric
    mean of ours/sklearn's inertia is within 0.2% of 1, no problem is worse by more than 5%,
    and we lose no more problems than we win plus a small margin."""
    ratios = []
    for i, x in _random_problems(30, seed=2):
        with threadpool_limits(1):  # sklearn's OpenMP spins badly on a shared 2-core box
            ref = KMeans(2, n_init=10, random_state=i, algorithm="lloyd").fit_predict(x)
        labels, inertia = kmeans2(torch.from_numpy(x), n_init=10, seed=i)
        ours = _inertia(x, labels.numpy())
        assert inertia == pytest.approx(ours, rel=1e-4)  # the reported inertia is the real one
        ratios.append(ours / _inertia(x, ref))
    ratios = np.array(ratios)
    assert np.exp(np.log(ratios).mean()) <= 1.002
    assert ratios.max() <= 1.05
    assert (ratios > 1 + 1e-4).sum() <= (ratios < 1 - 1e-4).sum() + 5


def test_deterministic_given_seed_and_seed_matters():
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(300, 5)).astype(np.float32))
    a, _ = kmeans2(x, n_init=3, seed=7)
    b, _ = kmeans2(x, n_init=3, seed=7)
    assert torch.equal(a, b)
    results = {tuple(kmeans2(x, n_init=1, seed=s)[0].tolist()) for s in range(10)}
    assert len(results) > 1  # different seeds do start from different centers


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


def test_torch_backend_in_find_slow_learnable():
    logits, targets, truth = two_blob_logits(n_per_class=200, num_classes=5)
    sel = find_slow_learnable(logits=logits, targets=targets, backend="torch")
    ref = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    assert sel.params["backend"] == "torch"
    np.testing.assert_array_equal(sel.mask, truth)
    np.testing.assert_array_equal(sel.mask, ref.mask)


def test_auto_still_means_cuml_else_sklearn(monkeypatch):
    monkeypatch.setattr(_cluster, "_cuml_installed", lambda: False)
    _cluster._cuml_probe.cache_clear()
    try:
        assert _cluster.resolve_backend("auto") == "sklearn"
        assert _cluster.resolve_backend("torch") == "torch"
    finally:
        _cluster._cuml_probe.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_partition():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 10)).astype(np.float32)
    x[:600] += 6.0
    cpu, _ = kmeans2(torch.from_numpy(x), n_init=10, seed=0)
    gpu, _ = kmeans2(torch.from_numpy(x).cuda(), n_init=10, seed=0)
    assert gpu.device.type == "cuda"
    np.testing.assert_array_equal(cpu.numpy(), gpu.cpu().numpy())

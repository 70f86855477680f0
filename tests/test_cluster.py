from __future__ import annotations

import re
import sys
import tomllib
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import two_blob_logits

from useful_data import _cluster, find_slow_learnable


def _install_cuml(monkeypatch, kmeans_cls):
    """Make ``cuml.cluster.KMeans`` importable as ``kmeans_cls``, with a CUDA device."""
    cuml = types.ModuleType("cuml")
    cluster = types.ModuleType("cuml.cluster")
    cluster.KMeans = kmeans_cls
    cuml.cluster = cluster
    cuml.__spec__ = types.SimpleNamespace(name="cuml")  # find_spec looks at sys.modules first
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.cluster", cluster)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _cluster._cuml_probe.cache_clear()


@pytest.fixture
def fake_cuml(monkeypatch):
    """A cuML that imports fine and fails at fit, as on a machine without a usable GPU."""
    calls = {"fit": 0}

    class KMeans:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def fit(self, x):
            calls["fit"] += 1
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

        def fit_predict(self, x):
            self.fit(x)

    _install_cuml(monkeypatch, KMeans)
    yield calls
    _cluster._cuml_probe.cache_clear()


def test_auto_falls_back_to_sklearns_kmeans_with_one_warning(fake_cuml):
    logits, targets, truth = two_blob_logits()
    with pytest.warns(RuntimeWarning, match="cuML is installed but not usable") as record:
        sel = find_slow_learnable(logits=logits, targets=targets, backend="auto")
    assert len([w for w in record if "cuML" in str(w.message)]) == 1
    assert sel.params["backend"] == "torch"  # scikit-learn's algorithm, batched in torch
    np.testing.assert_array_equal(sel.mask, truth)
    ref = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    np.testing.assert_array_equal(sel.mask, ref.mask)  # the same answer as scikit-learn
    assert fake_cuml["fit"] == 1  # the probe only, not one failed fit per class


def test_probe_is_cached(fake_cuml):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            _cluster.resolve_backend("auto")
    assert fake_cuml["fit"] == 1


def test_explicit_cuml_that_cannot_run_is_an_error(fake_cuml):
    with pytest.raises(RuntimeError, match="backend='cuml' was requested but cuML cannot run"):
        find_slow_learnable(logits=np.zeros((4, 2)), targets=[0, 1, 0, 1], backend="cuml")


def test_fit_time_failure_falls_back_in_auto_mode(monkeypatch):
    """cuML passes the probe but fails later on real data: auto mode falls back, once."""
    logits, targets, _truth = two_blob_logits()
    km = _cluster.KMeans2("sklearn")
    km.backend, km.requested = "cuml", "auto"

    def broken(_features):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(km, "_fit_cuml", broken)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        labels = km.fit_predict(logits[targets == 0])
    assert km.backend == "torch" and set(labels.tolist()) == {0, 1}
    km.requested = "cuml"
    km.backend = "cuml"
    with pytest.raises(RuntimeError, match="out of memory"):
        km.fit_predict(logits[targets == 0])


def test_no_cuml_installed(monkeypatch):
    monkeypatch.setattr(_cluster, "_cuml_installed", lambda: False)
    _cluster._cuml_probe.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # silently CPU when cuML is simply absent
            assert _cluster.resolve_backend("auto") == "torch"
        with pytest.raises(ImportError, match=re.escape(_cluster.gpu_extra())):
            _cluster.resolve_backend("cuml")
    finally:
        _cluster._cuml_probe.cache_clear()


@pytest.mark.skipif(not _cluster.cuml_usable(), reason="needs RAPIDS cuML and a usable GPU")
def test_cuml_and_sklearn_give_the_same_partition():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 10)).astype(np.float32)
    targets = rng.integers(0, 10, 2000)
    logits[np.arange(2000), targets] += rng.choice([0.0, 5.0], size=2000)
    a = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    b = find_slow_learnable(logits=logits, targets=targets, backend="cuml")
    assert b.params["backend"] == "cuml"
    np.testing.assert_array_equal(a.mask, b.mask)  # slow = higher loss: label swap irrelevant


@pytest.fixture
def usable_cuml(monkeypatch):
    """A cuML whose k-means works (records its arguments)."""
    made = []

    class KMeans:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def fit(self, x):
            return self

        def fit_predict(self, x):
            return (np.asarray(x)[:, 0] > np.asarray(x)[:, 0].mean()).astype(np.int32)

    _install_cuml(monkeypatch, KMeans)
    yield made
    _cluster._cuml_probe.cache_clear()


def test_usable_cuml_is_picked_by_auto_only(usable_cuml):
    """auto -> cuml where usable; explicit torch/sklearn are kept; cuML gets n_init and seed."""
    assert _cluster.resolve_backend("auto") == "cuml"
    assert _cluster.resolve_backend("torch") == "torch"
    assert _cluster.resolve_backend("sklearn") == "sklearn"
    km = _cluster.KMeans2("auto", n_init=7, seed=3)
    labels = km.fit_predict(np.array([[0.0], [0.1], [5.0], [5.1]], dtype=np.float32))
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    assert usable_cuml[-1]["n_init"] == 7 and usable_cuml[-1]["random_state"] == 3


def test_cuml_without_a_cuda_device_is_not_used(usable_cuml, monkeypatch):
    """An importable cuML that could fit is still not used without a CUDA device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _cluster._cuml_probe.cache_clear()
    with pytest.warns(RuntimeWarning, match="no CUDA device"):
        assert _cluster.resolve_backend("auto") == "torch"


def test_kmeans2_keeps_its_device():
    """The torch backend computes where it is told."""
    assert _cluster.KMeans2("torch", device="cuda:1").device == torch.device("cuda:1")


@pytest.mark.parametrize(
    ("cuda", "extra"),
    [("13.0", "gpu-cu13"), ("13.2", "gpu-cu13"), ("12.8", "gpu-cu12"), ("12.6", "gpu-cu12")],
)
def test_the_cuml_extra_named_matches_torchs_cuda_major(cuda, extra):
    assert _cluster.gpu_extra(cuda) == f"pip install 'useful-data[{extra}]'"


def test_a_torch_build_without_a_matching_cuml_names_both_extras(monkeypatch):
    message = _cluster.gpu_extra("11.8")
    assert "gpu-cu12" in message and "gpu-cu13" in message and "'11.8'" in message
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only build of torch
    assert "torch.version.cuda is None" in _cluster.gpu_extra()
    monkeypatch.setattr(torch.version, "cuda", "12.9")
    assert _cluster.gpu_extra() == "pip install 'useful-data[gpu-cu12]'"


def test_gpu_extras_are_one_per_cuda_major_and_gpu_follows_the_pinned_torch():
    """RAPIDS names cuML's wheels per CUDA major; each extra must install the matching one,
    from the first release that is a real wheel on PyPI (older ones are download stubs)."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert extras["gpu-cu12"] == ["cuml-cu12>=25.10"]
    assert extras["gpu-cu13"] == ["cuml-cu13>=25.10"]
    torch_pin = next(d for d in extras["dev"] if d.startswith("torch=="))
    assert torch_pin == "torch==2.14.1"  # a CUDA 13 build on PyPI: gpu is gpu-cu13
    assert extras["gpu"] == extras["gpu-cu13"]


@pytest.mark.parametrize("n_init", [0, 1001, 10**9])
def test_n_init_is_bounded_at_construction(n_init):
    """A restart count in the millions would run for hours before failing or returning."""
    with pytest.raises(ValueError, match="n_init should be an integer"):
        _cluster.KMeans2("torch", n_init=n_init)
    assert _cluster.KMeans2("torch", n_init=_cluster.N_INIT_MAX).n_init == 1000

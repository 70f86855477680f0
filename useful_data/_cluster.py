"""2-means clustering backends: RAPIDS cuML on a usable GPU, scikit-learn or torch on the CPU.

``"torch"`` (`useful_data._kmeans_torch.kmeans2`) is the same algorithm as scikit-learn's
Lloyd k-means with greedy k-means++ seeding, specialised to two clusters with the restarts
run together; it is roughly an order of magnitude faster at ImageNet scale (see
docs/benchmarks.md). Its partitions equal scikit-learn's from the same seeded centers; with
its own seeds it differs from scikit-learn only in which restarts it draws.

``import cuml`` succeeding proves nothing: on a machine without a usable GPU it imports and
then fails at the first ``fit``. `cuml_usable` therefore checks for a CUDA device and
runs one tiny fit, once per process, and `KMeans2` falls back to scikit-learn (with one
warning) if cuML fails later.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import warnings
from typing import Literal, TypeAlias

import numpy as np

__all__ = ["BACKENDS", "Backend", "KMeans2", "cuml_usable", "resolve_backend"]

logger = logging.getLogger(__name__)

Backend: TypeAlias = Literal["auto", "cuml", "sklearn", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "cuml", "sklearn", "torch")
_GPU_EXTRA = "pip install 'useful-data[gpu]'"


def _cuml_installed() -> bool:
    return importlib.util.find_spec("cuml") is not None


@functools.cache
def _cuml_probe() -> str | None:
    """Return ``None`` if cuML can fit on this machine, else the reason it cannot."""
    if not _cuml_installed():
        return f"cuML is not installed ({_GPU_EXTRA})"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is available"
    try:
        kmeans_cls = importlib.import_module("cuml.cluster").KMeans
        points = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]], dtype=np.float32)
        kmeans_cls(n_clusters=2, n_init=1, random_state=0, output_type="numpy").fit(points)
    except Exception as err:  # cuML raises RuntimeError, CUDA errors, ImportError of libs...
        return f"{type(err).__name__}: {err}"
    return None


def cuml_usable() -> bool:
    """Whether cuML is installed *and* can run k-means on a CUDA device here (cached)."""
    return _cuml_probe() is None


def resolve_backend(backend: str) -> str:
    """Map ``"auto" | "cuml" | "sklearn" | "torch"`` to the backend that will actually run.

    ``"sklearn"`` and ``"torch"`` always run (on the CPU). ``"auto"`` picks cuML only where
    `cuml_usable` (probed once per process); if cuML is installed but unusable it warns once
    and uses scikit-learn. An explicit ``"cuml"`` that cannot run is an error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend should be one of {BACKENDS}, but got backend={backend!r}")
    if backend in ("sklearn", "torch"):
        return backend
    reason = _cuml_probe()
    if backend == "cuml":
        if not _cuml_installed():
            raise ImportError(f"backend='cuml' needs RAPIDS cuML: {_GPU_EXTRA}")
        if reason is not None:
            raise RuntimeError(f"backend='cuml' was requested but cuML cannot run here: {reason}")
        return "cuml"
    if reason is None:
        return "cuml"
    if _cuml_installed():
        _warn_fallback(reason)
    return "sklearn"


def _warn_fallback(reason: str) -> None:
    warnings.warn(
        f"cuML is installed but not usable ({reason}); clustering with scikit-learn on the CPU",
        RuntimeWarning,
        stacklevel=4,
    )


class KMeans2:
    """k-means with two clusters, seeded, on one backend, falling back to scikit-learn.

    Args:
        backend: ``"auto"``, ``"cuml"``, ``"sklearn"`` or ``"torch"``.
        n_init: Number of k-means++ restarts; the best inertia wins.
        seed: Seed of the restarts (the same for every call, so results are deterministic).
    """

    def __init__(self, backend: str = "auto", *, n_init: int = 10, seed: int = 0) -> None:
        self.requested = backend
        self.backend = resolve_backend(backend)
        self.n_init = n_init
        self.seed = seed

    def fit_predict(self, features: np.ndarray) -> np.ndarray:
        """Cluster ``(n, D)`` float32 ``features`` in two; returns ``(n,)`` labels in {0, 1}."""
        if self.backend == "cuml":
            try:
                return self._fit_cuml(features)
            except Exception as err:
                if self.requested == "cuml":
                    raise
                _warn_fallback(f"{type(err).__name__}: {err}")
                self.backend = "sklearn"
        if self.backend == "torch":
            return self._fit_torch(features)
        return self._fit_sklearn(features)

    def _fit_torch(self, features: np.ndarray) -> np.ndarray:
        import torch

        from useful_data._kmeans_torch import kmeans2

        labels, _inertia = kmeans2(torch.from_numpy(features), n_init=self.n_init, seed=self.seed)
        return labels.numpy()

    def _fit_sklearn(self, features: np.ndarray) -> np.ndarray:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=2, n_init=self.n_init, random_state=self.seed, algorithm="lloyd")
        return km.fit_predict(features).astype(np.int64)

    def _fit_cuml(self, features: np.ndarray) -> np.ndarray:
        kmeans_cls = importlib.import_module("cuml.cluster").KMeans  # a sys.modules lookup
        km = kmeans_cls(
            n_clusters=2, n_init=self.n_init, random_state=self.seed, output_type="numpy"
        )
        return np.asarray(km.fit_predict(features)).astype(np.int64)

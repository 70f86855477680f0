"""2-means clustering backends: RAPIDS cuML on a usable GPU, else scikit-learn's k-means.

``"torch"`` (`useful_data._kmeans_torch`) reproduces ``sklearn.cluster.KMeans(n_clusters=2,
n_init, random_state=seed, algorithm="lloyd")`` step for step (the same random draws, seeding,
stopping rule and choice of restart; tests compare labels with scikit-learn's), with every
restart of many classes batched into a few matrix products, on the CPU or a CUDA device. It
is what ``"auto"`` runs when cuML is not usable: scikit-learn's answer, 3-6x faster on a 2-core
CPU at ImageNet scale (docs/benchmarks.md). ``"sklearn"`` calls scikit-learn itself, one
``KMeans`` per class.

``import cuml`` succeeding proves nothing: on a machine without a usable GPU it imports and
then fails at the first ``fit``. `cuml_usable` therefore checks for a CUDA device and
runs one tiny fit, once per process, and `KMeans2` falls back to the CPU (with one
warning) if cuML fails later.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import warnings
from collections.abc import Sequence
from typing import Literal, TypeAlias

import numpy as np
import torch

from useful_data._checks import check_positive_int, check_seed

__all__ = [
    "BACKENDS",
    "N_INIT_MAX",
    "Backend",
    "KMeans2",
    "check_backend",
    "check_n_init",
    "cuml_usable",
    "gpu_extra",
    "resolve_backend",
]

logger = logging.getLogger(__name__)

#: The most k-means restarts accepted. The paper and scikit-learn use 10; a thousand is ample for
#: any study of restarts, and a larger count only runs for hours before anything is returned.
N_INIT_MAX = 1000


def check_n_init(n_init: object) -> int:
    """Return ``n_init`` as an ``int`` in ``[1, N_INIT_MAX]``, else raise (the argument named)."""
    value = check_positive_int("n_init", n_init)
    if value > N_INIT_MAX:
        raise ValueError(
            f"n_init should be an integer in [1, {N_INIT_MAX}] (the paper and scikit-learn use "
            f"10), but got n_init={value}"
        )
    return value

Backend: TypeAlias = Literal["auto", "cuml", "sklearn", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "cuml", "sklearn", "torch")


def gpu_extra(cuda_version: str | None = None) -> str:
    """The install command for the cuML extra that matches torch's CUDA build.

    RAPIDS names its wheels per CUDA major version (``cuml-cu12``, ``cuml-cu13``), and cuML
    must match the CUDA that torch was built for (``torch.version.cuda``), so the extras are
    ``gpu-cu12`` and ``gpu-cu13`` (``gpu`` is ``gpu-cu13``, the build of the torch we pin).

    Args:
        cuda_version: ``torch.version.cuda`` by default (``None`` on a CPU-only build).

    Example:
        >>> gpu_extra("13.0")
        "pip install 'useful-data[gpu-cu13]'"
        >>> gpu_extra("12.8")
        "pip install 'useful-data[gpu-cu12]'"
    """
    if cuda_version is None:
        cuda_version = torch.version.cuda
    major = (cuda_version or "").split(".", 1)[0]
    if major in ("12", "13"):
        return f"pip install 'useful-data[gpu-cu{major}]'"
    return (
        "pip install 'useful-data[gpu-cu12]' or 'useful-data[gpu-cu13]', the one matching "
        f"torch's CUDA build (torch.version.cuda is {cuda_version!r})"
    )


def _cuml_installed() -> bool:
    return importlib.util.find_spec("cuml") is not None


@functools.cache
def _cuml_probe() -> str | None:
    """Return ``None`` if cuML can fit on this machine, else the reason it cannot."""
    if not _cuml_installed():
        return f"cuML is not installed ({gpu_extra()})"
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

    ``"torch"`` always runs, ``"sklearn"`` where scikit-learn is installed (the ``sklearn``
    extra; else an ``ImportError`` naming it). ``"auto"`` picks cuML only where `cuml_usable`
    (probed once per process), else ``"torch"`` (scikit-learn's k-means, batched); if cuML is
    installed but unusable it warns once. An explicit ``"cuml"`` that cannot run is an error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend should be one of {BACKENDS}, but got backend={backend!r}")
    if backend == "sklearn" and importlib.util.find_spec("sklearn") is None:
        raise ImportError(
            "backend='sklearn' (the CPU reference k-means) needs scikit-learn: "
            "pip install 'useful-data[sklearn]'; backend='torch' gives the same clusters "
            "without it"
        )
    if backend in ("sklearn", "torch"):
        return backend
    reason = _cuml_probe()
    if backend == "cuml":
        if not _cuml_installed():
            raise ImportError(f"backend='cuml' needs RAPIDS cuML: {gpu_extra()}")
        if reason is not None:
            raise RuntimeError(f"backend='cuml' was requested but cuML cannot run here: {reason}")
        return "cuml"
    if reason is None:
        return "cuml"
    if _cuml_installed():
        _warn_fallback(reason)
    return "torch"


def check_backend(backend: str) -> None:
    """Raise now if ``backend`` is unknown, or is ``"cuml"`` or ``"sklearn"`` and cannot run
    here (as `resolve_backend` would later), so that a call fails before any expensive work."""
    if backend not in BACKENDS or backend in ("cuml", "sklearn"):
        resolve_backend(backend)


def _warn_fallback(reason: str) -> None:
    warnings.warn(
        f"cuML is installed but not usable ({reason}); clustering with scikit-learn's k-means "
        "algorithm in torch instead (backend='torch')",
        RuntimeWarning,
        stacklevel=4,
    )


class KMeans2:
    """k-means with two clusters, seeded, on one backend, falling back to scikit-learn.

    Args:
        backend: ``"auto"``, ``"cuml"``, ``"sklearn"`` or ``"torch"``.
        n_init: Number of k-means++ restarts; the best inertia wins.
        seed: Seed of the restarts (the same for every call, so results are deterministic).
        device: Where the ``"torch"`` backend computes (default: the CPU).
    """

    def __init__(
        self,
        backend: str = "auto",
        *,
        n_init: int = 10,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        self.requested = backend
        self.backend = resolve_backend(backend)
        self.n_init = check_n_init(n_init)
        self.seed = check_seed("seed", seed)
        self.device = torch.device("cpu" if device is None else device)

    def fit_predict_many(self, x: np.ndarray, groups: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`fit_predict` on the rows ``x[group]`` of every group (one per class); batched
        with the ``"torch"`` backend, which gathers the rows chunk by chunk (no full copy)."""
        if self.backend == "torch":
            return self._fit_torch_many(x, groups)
        return [self.fit_predict(x[group]) for group in groups]

    def _fit_torch_many(self, x: np.ndarray, groups: Sequence[np.ndarray]) -> list[np.ndarray]:
        from useful_data._kmeans_torch import kmeans2_many

        return kmeans2_many(x, groups, n_init=self.n_init, seed=self.seed, device=self.device)

    def fit_predict(self, features: np.ndarray) -> np.ndarray:
        """Cluster ``(n, D)`` float32 ``features`` in two; returns ``(n,)`` labels in {0, 1}."""
        if self.backend == "cuml":
            try:
                return self._fit_cuml(features)
            except Exception as err:
                if self.requested == "cuml":
                    raise
                _warn_fallback(f"{type(err).__name__}: {err}")
                self.backend = "torch"
        if self.backend == "torch":
            return self._fit_torch_many(features, [np.arange(len(features))])[0]
        return self._fit_sklearn(features)

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

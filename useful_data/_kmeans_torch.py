"""scikit-learn's k-means for two clusters, many classes at once, in torch (``"torch"`` backend).

Why it exists: clustering ImageNet-1k-shaped outputs (1000 classes of ~1280 x 1000) with
one scikit-learn ``KMeans(n_init=10)`` call per class spends its time in ten sequential
restarts of a general-k Lloyd loop per class, plus per-call set-up and OpenMP barriers
(150-350 s on 2 cores, 1,400-1,500 s on 16). Here every restart of every class in a chunk
runs at once: one Lloyd step of ``B`` classes x ``R`` restarts is two batched matrix
products, ``(B, R, D) @ (B, D, n)`` (assign) and ``(B, R, n) @ (B, n, D)`` (update), with
no per-class Python work. On a CPU, restarts and classes that stop leave the batch and only
moved points update the sums; on CUDA the shapes stay fixed and blocks of steps replay from
a CUDA graph. The points are converted to float64 once per chunk, for the seeding, the
tolerance and the inertias.

It reproduces ``sklearn.cluster.KMeans(n_clusters=2, n_init=R, random_state=seed,
algorithm="lloyd")`` step for step, so it returns scikit-learn's labels (tested):

* the same random draws: each class gets its own ``numpy.random.RandomState(seed)``, and
  restart ``r`` draws its first center with ``choice(n, p=1/n)`` and its two k-means++
  trials with ``uniform(size=2)``, in scikit-learn's order;
* the same greedy k-means++ (``2 + int(log 2) = 2`` local trials, float64 distances,
  ``searchsorted`` in the cumulative potential, the candidate with the lowest potential);
* the same Lloyd loop on the data centered in float32 (the seeding sees the same centered
  points): assign to the nearer center (ties to cluster 0), recompute the means, stop when
  the labels repeat (strict convergence) or the squared center shift is
  ``<= tol * mean(var(x))``, then (not strict) reassign once to the final centers;
* the same choice of restart: the lowest inertia, keeping the first restart that found that
  partition (scikit-learn replaces its best only by a *different* partition).

It differs only in float32 rounding (summation order), which can flip a point lying on the
bisector to within ~1e-7 or pick another restart where two partitions' inertias agree to
~1e-6, and in one degenerate case: a restart whose cluster empties (possible only when the
two centers coincide) stops there instead of relocating a center.

Conventions: ``B`` classes in a chunk, ``n`` rows (padded to the largest class), ``D``
output dimensions, ``R = n_init`` restarts.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["kmeans2", "kmeans2_many"]

_LOCAL_TRIALS = 2 + int(math.log(2))  # scikit-learn's greedy k-means++ default for k=2
TOL = 1e-4  # scikit-learn's default tol, relative to the mean per-dimension variance
CPU_CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 per chunk: stays in cache on a CPU
CUDA_CHUNK_ELEMENTS = 1 << 28  # 1 GiB per chunk on a GPU: few, large launches


@functools.lru_cache(maxsize=64)
def _sklearn_draws(n: int, n_init: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The random numbers ``KMeans(random_state=seed).fit`` draws for ``n`` points.

    Returns ``(first, uniforms)``: the first center's index per restart ``(R,)`` and the
    k-means++ trials' uniforms ``(R, 2)``, drawn in scikit-learn's order from one stream.
    """
    rng = np.random.RandomState(seed)
    weights = np.ones(n, dtype=np.float32)
    first = np.empty(n_init, dtype=np.int64)
    uniforms = np.empty((n_init, _LOCAL_TRIALS))
    for r in range(n_init):
        first[r] = rng.choice(n, p=weights / weights.sum())
        uniforms[r] = rng.uniform(size=_LOCAL_TRIALS)
    return first, uniforms


@contextlib.contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """Plain float32 matrix products on CUDA even if the caller enabled TF32 (timm does)."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = previous


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, j]]`` for ``x`` of shape ``(B, n, D)`` and ``index`` ``(B, J)``."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))


def _sum_update(
    s1: torch.Tensor, x: torch.Tensor, new: torch.Tensor, old: torch.Tensor
) -> torch.Tensor:
    """Cluster-1 sums ``(B, W, D)`` (float64) after labels ``old -> new`` ``(B, n, W)``: only
    the rows that moved are added or taken away when they are few and this is a CPU,
    else recomputed whole."""
    b, n, w = new.shape
    if x.device.type == "cpu":
        delta = new.to(torch.int8) - old.to(torch.int8)
        cls, row = delta.ne(0).any(2).nonzero(as_tuple=True)
        if cls.numel() * b <= n // 4:
            signs = torch.zeros(cls.numel(), b, w, dtype=torch.float64)
            signs[torch.arange(cls.numel()), cls] = delta[cls, row].double()
            moved = x.reshape(b * n, -1).index_select(0, cls * n + row).double()
            return s1 + (signs.reshape(-1, b * w).T @ moved).reshape(s1.shape)
    return _sums(new, x)


def _sums(labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cluster-1 sums ``(B, W, D)`` of bool ``labels`` ``(B, n, W)``, as float64."""
    return torch.bmm(labels.transpose(1, 2).to(x.dtype), x).double()


def _sq_distances(
    x: torch.Tensor, sq: torch.Tensor, centers: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Squared distances ``(B, J, n)`` of ``J`` centers to every row, as scikit-learn computes
    them for float32 data (float64, ``|x|^2 - 2 x.c + |c|^2``, clipped at 0); padding 0."""
    d = sq[:, None, :] - 2.0 * torch.bmm(centers, x.transpose(1, 2))
    d += (centers * centers).sum(2)[:, :, None]
    return d.clamp_min_(0.0).mul_(valid[:, None, :])


def _seed(
    x64: torch.Tensor,
    sq: torch.Tensor,
    valid: torch.Tensor,
    sizes: Sequence[int],
    n_init: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's greedy k-means++ for two centers, every restart of every class at once.

    ``x64`` are the centered points ``(B, n, D)`` in float64 and ``sq`` their squared norms
    ``(B, n)``. Returns the indices ``(first, second)`` of the two seed rows, each ``(B, R)``.
    """
    device = x64.device
    draws = [_sklearn_draws(n, n_init, seed) for n in sizes]
    first = torch.from_numpy(np.stack([d[0] for d in draws])).to(device)  # (B, R)
    uniforms = torch.from_numpy(np.stack([d[1] for d in draws])).to(device)  # (B, R, 2)
    closest = _sq_distances(x64, sq, _gather_rows(x64, first), valid)  # (B, R, n)
    potential = closest.sum(2)  # (B, R)
    cumulative = closest.cumsum(2)  # (B, R, n)
    trials = torch.searchsorted(cumulative, (uniforms * potential[:, :, None]).contiguous())
    last = torch.as_tensor(sizes, device=device)[:, None, None] - 1
    trials = torch.minimum(trials, last).reshape(len(sizes), -1)  # (B, R * 2)
    to_trials = _sq_distances(x64, sq, _gather_rows(x64, trials), valid)  # (B, R * 2, n)
    b, n = closest.shape[0], closest.shape[2]
    lowered = torch.minimum(to_trials.reshape(b, n_init, _LOCAL_TRIALS, n), closest[:, :, None])
    best = lowered.sum(3).argmin(2, keepdim=True)  # (B, R, 1): the first on ties
    second = trials.reshape(b, n_init, _LOCAL_TRIALS).gather(2, best).squeeze(2)
    return first, second


def _assign(
    x: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Labels ``(B, n, R)``: True where a row is strictly nearer ``c1`` than ``c0``.

    The product is formed as ``(B, R, D) @ (B, D, n)``: with few restarts BLAS runs it 1.3-2x
    faster than ``(B, n, D) @ (B, D, R)`` on a CPU; the labels are returned as a transposed
    view (restart-major in memory), which every later step reads as ``(B, n, R)``.
    """
    threshold = 0.5 * ((c1 * c1).sum(2) - (c0 * c0).sum(2))  # (B, R)
    above = torch.bmm(c1 - c0, x.transpose(1, 2)) > threshold[:, :, None]  # (B, R, n)
    return (above & valid[:, None, :]).transpose(1, 2)


class _Classes(NamedTuple):
    """One chunk of classes, centered, and what every Lloyd step reads of it.

    ``x`` ``(B, n, D)`` float32, centered per class, padding rows 0; ``valid`` ``(B, n)``;
    ``counts`` ``(B,)`` float64 class sizes; ``total`` ``(B, 1, D)`` float64 column sums of
    ``x`` (~0); ``tolerance`` ``(B,)`` scikit-learn's absolute tol per class.
    """

    x: torch.Tensor
    valid: torch.Tensor
    counts: torch.Tensor  # not `count`: that would shadow tuple.count
    total: torch.Tensor
    tolerance: torch.Tensor

    def take(self, keep: torch.Tensor) -> _Classes:
        """The classes at rows ``keep``."""
        return _Classes(*(field[keep] for field in self))


def _update(
    s1: torch.Tensor,
    new: torch.Tensor,
    old: torch.Tensor,
    c0: torch.Tensor,
    c1: torch.Tensor,
    classes: _Classes,
    started: bool | torch.Tensor,
    last: bool | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The update half of a Lloyd step, after the assignment ``old -> new`` ``(B, n, W)``.

    ``s1`` are the cluster-1 sums of ``new`` (float64); ``started`` is False on the first
    step (the labels before it are none), ``last`` True on step ``max_iter - 1``.

    Returns ``(c0, c1, ends, loose)``: the new centers (kept where a cluster emptied), which
    restarts end at this step (strict convergence, an empty cluster, or ``loose``), and
    which end loosely (squared center shift within the tolerance, or ``max_iter``
    reached): scikit-learn then reassigns them once to their final centers.
    """
    ones = new.sum(1, dtype=torch.float64)  # (B, W)
    zeros = classes.counts[:, None] - ones
    c1_new = (s1 / ones.clamp_min(1.0)[:, :, None]).float()
    c0_new = ((classes.total - s1) / zeros.clamp_min(1.0)[:, :, None]).float()
    shift = ((c1_new - c1) ** 2).sum(2) + ((c0_new - c0) ** 2).sum(2)
    repeated = (new == old).all(1) & started  # strict convergence
    empty = (ones == 0) | (zeros == 0)  # only when the two centers coincide
    c0 = torch.where(empty[:, :, None], c0, c0_new)
    c1 = torch.where(empty[:, :, None], c1, c1_new)
    loose = ~repeated & ~empty & ((shift <= classes.tolerance[:, None]) | last)
    return c0, c1, repeated | empty | loose, loose


def _lloyd(
    classes: _Classes, c0: torch.Tensor, c1: torch.Tensor, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's Lloyd loop for every restart of every class, from centers ``(B, R, D)``.

    Works on the restarts still running only: when some stop, their state is written out
    and the working set is compacted (a class whose restarts all stopped leaves the batch).

    Returns ``(labels, c0, c1, relabel)``: bool labels ``(B, n, R)``, the final centers,
    and which restarts stopped without strict convergence (scikit-learn then reassigns
    every point to the final centers once).
    """
    b, n, _ = classes.x.shape
    r = c0.shape[1]
    device = classes.x.device
    out_labels = torch.zeros(b, n, r, dtype=torch.bool, device=device)
    out_c0, out_c1 = c0.clone(), c1.clone()
    relabel = torch.zeros(b, r, dtype=torch.bool, device=device)
    cls = torch.arange(b, device=device)  # working row -> class
    slot = torch.arange(r, device=device).expand(b, r).clone()  # working column -> restart
    running = torch.ones(b, r, dtype=torch.bool, device=device)
    labels = torch.zeros(b, n, r, dtype=torch.bool, device=device)
    s1 = torch.zeros(b, r, classes.x.shape[2], dtype=torch.float64, device=device)
    for step in range(max_iter):
        new = _assign(classes.x, c0, c1, classes.valid)
        s1 = _sum_update(s1, classes.x, new, labels) if step else _sums(new, classes.x)
        c0, c1, ends, loose = _update(
            s1, new, labels, c0, c1, classes, step > 0, step == max_iter - 1
        )
        labels = new
        stop = running & ends
        if not bool(stop.any()):  # one synchronisation per step
            continue
        row, col = stop.nonzero(as_tuple=True)
        where, which = cls[row], slot[row, col]
        out_labels[where, :, which] = labels[row, :, col]
        out_c0[where, which], out_c1[where, which] = c0[row, col], c1[row, col]
        relabel[where, which] = loose[row, col]
        running &= ~stop
        left = running.sum(1)
        keep = (left > 0).nonzero().squeeze(1)
        if not keep.numel():
            break
        order = torch.argsort((~running[keep]).int(), dim=1, stable=True)[:, : int(left.max())]

        def take(
            t: torch.Tensor, keep: torch.Tensor = keep, order: torch.Tensor = order
        ) -> torch.Tensor:
            return t[keep].gather(
                1, order.reshape(*order.shape, *[1] * (t.ndim - 2)).expand(-1, -1, *t.shape[2:])
            )

        cls, slot, running = cls[keep], take(slot), take(running)
        c0, c1, s1 = take(c0), take(c1), take(s1)
        labels = take(labels.transpose(1, 2)).transpose(1, 2)
        if keep.numel() < classes.x.shape[0]:
            classes = classes.take(keep)
    return out_labels, out_c0, out_c1, relabel


class _DenseLloyd:
    """scikit-learn's Lloyd loop with every restart kept in place (no compaction), as pure
    tensor code with no host synchronisation: on CUDA, blocks of steps are captured once in
    a CUDA graph and replayed, one launch per block instead of ~50 per step.

    The state (``labels``, ``c0``, ``c1``, ``running``, ``relabel``, ``step``) is updated in
    place; a restart that stopped keeps its state (every update is masked by ``running``).
    """

    BLOCK = 8  # Lloyd steps per graph replay (a stopped restart costs nothing but flops)

    def __init__(
        self, classes: _Classes, c0: torch.Tensor, c1: torch.Tensor, max_iter: int
    ) -> None:
        b, n, _ = classes.x.shape
        device = classes.x.device
        self.classes, self.max_iter = classes, max_iter
        self.c0, self.c1 = c0.clone(), c1.clone()
        self.labels = torch.zeros(b, n, c0.shape[1], dtype=torch.bool, device=device)
        self.running = torch.ones(b, c0.shape[1], dtype=torch.bool, device=device)
        self.relabel = torch.zeros_like(self.running)
        self.step = torch.zeros((), dtype=torch.long, device=device)

    def one_step(self) -> None:
        running, classes = self.running, self.classes
        new = torch.where(
            running[:, None, :], _assign(classes.x, self.c0, self.c1, classes.valid), self.labels
        )
        c0, c1, ends, loose = _update(
            _sums(new, classes.x),
            new,
            self.labels,
            self.c0,
            self.c1,
            classes,
            self.step > 0,
            self.step == self.max_iter - 1,
        )
        self.c0.copy_(torch.where(running[:, :, None], c0, self.c0))
        self.c1.copy_(torch.where(running[:, :, None], c1, self.c1))
        self.labels.copy_(new)
        stop = running & ends
        self.relabel.logical_or_(stop & loose)
        self.running.logical_and_(~stop)
        self.step.add_(1)

    def block(self) -> None:
        for _ in range(self.BLOCK):
            self.one_step()

    def run(self, graphs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        replay = self.block
        if graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph: these steps count
                self.block()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.block()
                replay = graph.replay
            except RuntimeError:  # capture refused (e.g. inside another capture): run eagerly
                replay = self.block
        # past max_iter every restart has stopped, so a block that overruns changes nothing
        while bool(self.running.any()):  # one synchronisation per block
            replay()
        return self.labels, self.c0, self.c1, self.relabel


def _kmeans2_padded(
    x: torch.Tensor,
    sizes: Sequence[int],
    *,
    n_init: int,
    seed: int,
    max_iter: int,
    tol: float,
    dense: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``B`` classes padded into ``x`` ``(B, n, D)``; class ``b`` is ``x[b, :sizes[b]]``
    and the padding rows after it are zero.

    ``dense`` picks the Lloyd loop: the compacting one (CPU default: stopped restarts and
    classes leave the batch, moved points update the sums) or the dense one (CUDA default:
    fixed shapes, captured in a CUDA graph). Both are the same algorithm, step for step.

    Returns ``(labels, inertia)``: bool ``(B, n)`` (True = cluster 1, padding False) and the
    float64 inertia ``(B,)`` of the chosen restart.
    """
    _, n, dim = x.shape
    device = x.device
    count = torch.as_tensor(sizes, device=device, dtype=torch.float64)  # (B,)
    valid = torch.arange(n, device=device)[None, :] < count[:, None]  # (B, n)
    # centered in float32, as scikit-learn centers float32 data; the float64 copy of the
    # centered points serves the seeding, the tolerance and the inertias (one conversion)
    x64 = x.to(torch.float64, copy=True)
    mean = x64.sum(1, keepdim=True) / count[:, None, None]  # (B, 1, D); padding rows are 0
    xc = x - mean.float()
    if min(sizes) < n:
        xc.masked_fill_(~valid[:, :, None], 0.0)
    x64.copy_(xc)
    sq = torch.einsum("bnd,bnd->bn", x64, x64)  # (B, n) squared norms, float64
    # scikit-learn's tol: tol * mean over dimensions of the per-dimension variance
    tolerance = tol * sq.sum(1) / (count * dim)  # (B,)
    first, second = _seed(x64, sq, valid, sizes, n_init, seed)
    classes = _Classes(xc, valid, count, x64.sum(1, keepdim=True), tolerance)
    c0, c1 = _gather_rows(xc, first), _gather_rows(xc, second)  # (B, R, D)
    if dense is None:
        dense = x.device.type == "cuda"
    if dense:
        loop = _DenseLloyd(classes, c0, c1, max_iter)
        labels, c0, c1, relabel = loop.run(graphs=x.device.type == "cuda")
    else:
        labels, c0, c1, relabel = _lloyd(classes, c0, c1, max_iter)
    if bool(relabel.any()):
        labels = torch.where(relabel[:, None, :], _assign(xc, c0, c1, valid), labels)

    # inertia of every restart w.r.t. its own centers, in float64
    lab = labels.transpose(1, 2).double()  # (B, R, n)
    s1 = torch.bmm(lab, x64)  # (B, R, D)
    ones = lab.sum(2)
    c0d, c1d = c0.double(), c1.double()
    inertia = sq.sum(1)[:, None] - 2.0 * ((s1 * c1d).sum(2) + ((classes.total - s1) * c0d).sum(2))
    inertia += ones * (c1d * c1d).sum(2) + (count[:, None] - ones) * (c0d * c0d).sum(2)
    # the lowest inertia wins; of the restarts that found that partition (either labelling),
    # the first one, as scikit-learn keeps its best unless a *different* partition beats it
    lowest = labels.gather(2, inertia.argmin(1)[:, None, None].expand(-1, n, 1))  # (B, n, 1)
    same = ((labels == lowest) | ~valid[:, :, None]).all(1)
    same |= ((labels != lowest) | ~valid[:, :, None]).all(1)
    chosen = same.int().argmax(1)  # the first True
    best = labels.gather(2, chosen[:, None, None].expand(-1, n, 1)).squeeze(2)
    return best, inertia.gather(1, chosen[:, None]).squeeze(1).clamp_min(0.0)


def _check_args(n_init: int, max_iter: int, tol: float) -> None:
    if n_init < 1 or max_iter < 1:
        raise ValueError(
            f"n_init and max_iter should be >= 1, but got n_init={n_init}, max_iter={max_iter}"
        )
    if not tol >= 0:
        raise ValueError(f"tol should be >= 0, but got tol={tol}")


def kmeans2(
    x: torch.Tensor, *, n_init: int = 10, seed: int = 0, max_iter: int = 300, tol: float = TOL
) -> tuple[torch.Tensor, float]:
    """Cluster ``(n, D)`` points in two, as ``sklearn.cluster.KMeans`` with the same seed does.

    Lloyd's algorithm from greedy k-means++ seeds, best of ``n_init`` restarts, run together
    on the device of ``x`` (CPU or CUDA) in float32; the seeds come from
    ``numpy.random.RandomState(seed)`` exactly as scikit-learn draws them, so the labels are
    scikit-learn's (up to float32 rounding; see the module notes).

    Args:
        x: ``(n, D)`` points, ``n >= 2``.
        n_init: Number of k-means++ restarts, run together; the lowest inertia wins.
        seed: Seed of the restarts (scikit-learn's ``random_state``).
        max_iter: Most Lloyd steps per restart.
        tol: scikit-learn's ``tol``: stop when the squared center shift is at most
            ``tol`` times the mean per-dimension variance of ``x``.

    Returns:
        ``(labels, inertia)``: int64 ``(n,)`` labels in {0, 1} on the device of ``x`` (the
        cluster of the first seed is 0, as in scikit-learn), and the within-cluster sum of
        squares of the chosen restart.

    Raises:
        ValueError: if ``x`` is not 2-D with at least two rows, or ``n_init``/``max_iter``
            is below 1, or ``tol`` is negative.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [9.0, 9.0], [9.0, 8.0]])
        >>> labels, inertia = kmeans2(x, n_init=3, seed=0)
        >>> labels[0] == labels[1], labels[0] != labels[2], round(inertia, 3)
        (tensor(True), tensor(True), 1.0)
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x should have shape (n, D) with n >= 2, but got shape {tuple(x.shape)}")
    _check_args(n_init, max_iter, tol)
    with _ieee_fp32(x.device):
        labels, inertia = _kmeans2_padded(
            x[None].float(), [x.shape[0]], n_init=n_init, seed=seed, max_iter=max_iter, tol=tol
        )
    return labels[0].long(), float(inertia[0])


def kmeans2_many(
    x: np.ndarray,
    groups: Sequence[np.ndarray],
    *,
    n_init: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_iter: int = 300,
    tol: float = TOL,
    chunk_elements: int | None = None,
) -> list[np.ndarray]:
    """`kmeans2` on the rows ``x[group]`` of every group (one per class), batched by size.

    Each group's rows are clustered exactly as `kmeans2` clusters them alone. Groups are
    sorted by size and their rows gathered (zero-padded) straight into chunks of about
    ``chunk_elements`` float32 values of work, each chunk one batched run on ``device``:
    no copy of the whole of ``x`` is made.

    Args:
        x: ``(N, D)`` float32 features.
        groups: Row indices into ``x``, at least two per group.
        n_init: k-means++ restarts per group.
        seed: Seed of every group's restarts (scikit-learn's ``random_state``).
        device: Where to compute (``"cpu"`` or a CUDA device).
        max_iter: Most Lloyd steps per restart.
        tol: scikit-learn's ``tol`` (see `kmeans2`).
        chunk_elements: Size of a chunk, counted as ``rows x (D + 6 n_init)`` float32 values
            (the points and the per-restart work arrays); default 2**20 on a CPU (cache
            sized) and 2**28 on a GPU.

    Returns:
        int64 labels in {0, 1}, one ``(len(group),)`` array per group, in the order given.

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0], [1.0], [0.1], [9.0], [5.0], [9.5], [5.1], [1.2], [9.2]])
        >>> groups = [np.array([0, 2, 4, 6]), np.array([1, 3, 5, 7, 8])]
        >>> [labels.tolist() for labels in kmeans2_many(x.astype(np.float32), groups)]
        [[1, 1, 0, 0], [1, 0, 0, 1, 0]]
        >>> from sklearn.cluster import KMeans  # the same labels, one call per group
        >>> [KMeans(2, n_init=10, random_state=0).fit_predict(x[g]).tolist() for g in groups]
        [[1, 1, 0, 0], [1, 0, 0, 1, 0]]
    """
    _check_args(n_init, max_iter, tol)
    device = torch.device(device)
    if chunk_elements is None:
        chunk_elements = CUDA_CHUNK_ELEMENTS if device.type == "cuda" else CPU_CHUNK_ELEMENTS
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(groups)
    sizes = [len(group) for group in groups]
    width = x.shape[1]
    row_cost = width + 6 * n_init
    order = sorted(range(len(groups)), key=sizes.__getitem__)
    start = 0
    with _ieee_fp32(device):
        while start < len(order):
            stop = start + 1  # grow the chunk while the padded stack fits the budget
            while stop < len(order) and (stop + 1 - start) * sizes[order[stop]] * row_cost <= (
                chunk_elements
            ):
                stop += 1
            chunk = order[start:stop]
            chunk_sizes = [sizes[i] for i in chunk]
            stacked = np.zeros((len(chunk), max(chunk_sizes), width), dtype=np.float32)
            for row, i in enumerate(chunk):
                stacked[row, : chunk_sizes[row]] = x[groups[i]]
            labels, _ = _kmeans2_padded(
                torch.from_numpy(stacked).to(device),
                chunk_sizes,
                n_init=n_init,
                seed=seed,
                max_iter=max_iter,
                tol=tol,
            )
            found = labels.cpu().numpy()
            for row, i in enumerate(chunk):
                out[i] = found[row, : chunk_sizes[row]].astype(np.int64)
            start = stop
    return out

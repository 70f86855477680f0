"""Exact 2-means in torch with all k-means++ restarts vectorised (the ``"torch"`` backend).

Why it exists: clustering ImageNet-1k-shaped outputs (1000 classes of ~1280 x 1000) with
one scikit-learn ``KMeans(n_init=10)`` call per class spends its time in ten sequential
restarts of a general-k Lloyd loop per class. With two clusters the algebra collapses:

* Center the class's points (k-means is translation invariant). With ``S1`` the sum of the
  points in cluster 1 (``n1`` of ``n``), the centers are ``c1 = S1 / n1`` and
  ``c0 = -S1 / n0``.
* A point goes to cluster 1 iff it is strictly nearer ``c1`` (ties go to cluster 0, as
  scikit-learn's argmin does), i.e. ``x . S1 > |S1|^2 (n0 - n1) / (2 n0 n1)``.
* The inertia is ``sum |x|^2 - |S1|^2 n / (n0 n1)``, so the best restart is the one with the
  largest ``|S1|^2 n / (n0 n1)``.

One Lloyd step for all ``n_init`` restarts is therefore two matrix products,
``(n, D) @ (D, n_init)`` and its transpose, in float32. Lloyd runs until the partition stops
changing (no tolerance: a fixed point of Lloyd's algorithm), seeded exactly as scikit-learn
seeds (greedy k-means++ with ``2 + int(log(2)) = 2`` local trials), from a local
`torch.Generator`. Same seed, same input, same thread count: same labels.

Conventions: ``n`` points of dimension ``D`` (one class's outputs), ``n_init`` restarts.
"""

from __future__ import annotations

import math

import torch

__all__ = ["kmeans2"]

_LOCAL_TRIALS = 2 + int(math.log(2))  # scikit-learn's greedy k-means++ default for k=2


def _seed_centers(
    x: torch.Tensor, sq: torch.Tensor, n_init: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ for two centers, ``n_init`` times at once; returns ``(c0, c1)``."""
    n = x.shape[0]
    first = torch.randint(n, (n_init,), generator=generator).to(x.device)
    c0 = x[first]  # (n_init, D)
    # squared distances of every point to each restart's first center: (n, n_init)
    d0 = (sq[:, None] - 2.0 * (x @ c0.T) + sq[first][None, :]).clamp_min_(0.0)
    weights = d0.T.double().cpu()  # sample on the CPU generator: same draws on every device
    flat = weights.sum(1) <= 0  # every point on the first center (rounding): pick uniformly
    weights[flat] = 1.0
    trials = torch.multinomial(weights, _LOCAL_TRIALS, replacement=True, generator=generator)
    trials = trials.to(x.device)  # (n_init, trials)
    cand = x[trials.reshape(-1)]  # (n_init * trials, D)
    d_cand = sq[:, None] - 2.0 * (x @ cand.T) + sq[trials.reshape(-1)][None, :]
    d_cand = d_cand.clamp_min_(0.0).reshape(n, n_init, _LOCAL_TRIALS)
    # keep the candidate that lowers the k-means++ potential most (first one on ties)
    potential = torch.minimum(d_cand, d0[:, :, None]).double().sum(0)  # (n_init, trials)
    best = potential.argmin(1)
    second = trials.gather(1, best[:, None]).squeeze(1)
    return c0, x[second]


def _first_of_equal(
    labels: torch.Tensor, active: torch.Tensor, dropped: torch.Tensor
) -> torch.Tensor:
    """Drop restarts whose partition equals an earlier one's: Lloyd is deterministic, so they
    would end identical, and the earlier one wins ties anyway. Marks them in ``dropped``."""
    if active.numel() < 2:
        return active
    _, inverse = torch.unique(labels[:, active].T, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), active.numel(), device=active.device)
    first = first.scatter_reduce(
        0, inverse, torch.arange(active.numel(), device=active.device), "amin"
    )
    keep = torch.zeros(active.numel(), dtype=torch.bool, device=active.device)
    keep[first] = True
    dropped[active[~keep]] = True
    return active[keep]


def kmeans2(
    x: torch.Tensor, *, n_init: int = 10, seed: int = 0, max_iter: int = 300
) -> tuple[torch.Tensor, float]:
    """Cluster ``(n, D)`` points in two with k-means (Lloyd, k-means++ seeding, best of ``n_init``).

    Runs on the device of ``x`` (CPU or CUDA), in float32; seeds are drawn on the CPU so a
    given ``seed`` starts from the same points on every device.

    Args:
        x: ``(n, D)`` points, ``n >= 2``.
        n_init: Number of k-means++ restarts, run together; the lowest inertia wins.
        seed: Seed of the restarts.
        max_iter: Most Lloyd steps per restart (it usually converges in tens).

    Returns:
        ``(labels, inertia)``: int64 ``(n,)`` labels in {0, 1} on the device of ``x`` (the
        cluster seeded first is 0), and the best restart's within-cluster sum of squares.

    Raises:
        ValueError: if ``x`` is not 2-D with at least two rows, or ``n_init``/``max_iter``
            is below 1.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [9.0, 9.0], [9.0, 8.0]])
        >>> labels, inertia = kmeans2(x, n_init=3, seed=0)
        >>> labels[0] == labels[1], labels[0] != labels[2], round(inertia, 3)
        (tensor(True), tensor(True), 1.0)
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x should have shape (n, D) with n >= 2, but got shape {tuple(x.shape)}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(
            f"n_init and max_iter should be >= 1, but got n_init={n_init}, max_iter={max_iter}"
        )
    n = x.shape[0]
    x = x.float()
    x = x - x.double().mean(0).float()  # centered: c0 = -S1 / n0, c1 = S1 / n1
    sq = (x * x).sum(1)
    generator = torch.Generator().manual_seed(int(seed))
    c0, c1 = _seed_centers(x, sq, n_init, generator)
    # first assignment to the seeded centers; ties go to cluster 0
    labels = (x @ (c1 - c0).T) > 0.5 * ((c1 * c1).sum(1) - (c0 * c0).sum(1))  # (n, n_init)
    s1 = (labels.T.float() @ x).double()  # (n_init, D): sum of the points in cluster 1
    dropped = torch.zeros(n_init, dtype=torch.bool, device=x.device)
    active = _first_of_equal(labels, torch.arange(n_init, device=x.device), dropped)
    for _ in range(max_iter):
        lab = labels[:, active]
        n1 = lab.sum(0).double()
        n0 = n - n1
        s = s1[active]
        thr = (s * s).sum(1) * (n0 - n1) / (2.0 * n0.clamp_min(1) * n1.clamp_min(1))
        new = (x @ s.float().T) > thr.float()[None, :]
        # a restart whose cluster emptied (only through rounding) stays as it is
        diff = (new != lab) & ((n1 > 0) & (n0 > 0))[None, :]
        changed = diff.any(0)
        if not changed.any():
            break
        rows = diff.any(1).nonzero().squeeze(1)  # only moved points change S1
        s1[active] += (diff[rows].float() * (new[rows].float() * 2.0 - 1.0)).T @ x[rows]
        active = active[changed]
        labels[:, active] = new[:, changed]
        active = _first_of_equal(labels, active, dropped)
    n1 = labels.sum(0).double()
    n0 = n - n1
    s1_sq = ((labels.T.float() @ x).double() ** 2).sum(1)  # exact sums, not the running ones
    between = torch.where((n1 > 0) & (n0 > 0), s1_sq * n / (n0 * n1).clamp_min(1), 0.0)
    between[dropped] = -math.inf
    best = int(between.argmax())  # the first of equally good restarts, as scikit-learn
    inertia = float(sq.double().sum() - between[best])
    return labels[:, best].long(), max(inertia, 0.0)

"""The paper's ablation baselines to USEFUL's k-means split, chosen with
``find_slow_learnable(..., strategy=...)``; see `useful_data.strategies` for what each is and
the paper's figures."""

from __future__ import annotations

import numpy as np

__all__ = ["STRATEGIES", "select_loss_quantile", "select_misclassified", "select_random_like"]

#: Names accepted by ``find_slow_learnable(..., strategy=...)``.
STRATEGIES = ("kmeans", "misclassified", "loss_quantile", "random")


def _per_example(name: str, values: np.ndarray, targets: np.ndarray) -> None:
    """Raise unless ``values`` and ``targets`` are 1-D arrays of the same length."""
    if values.ndim != 1 or targets.ndim != 1 or values.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{name} and targets should both have shape (N,), but got shapes "
            f"{tuple(values.shape)} and {tuple(targets.shape)}"
        )


def select_misclassified(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mask of the examples whose arg-max prediction differs from their label (JTT-style).

    Ties go to the lowest column, as in ``np.argmax``.

    Args:
        logits: ``(N, C)`` model outputs at the separating epoch.
        targets: ``(N,)`` integer labels.

    Returns:
        ``(N,)`` bool mask, ``True`` for misclassified examples.

    Raises:
        ValueError: if ``logits`` is not ``(N, C)`` or ``targets`` not ``(N,)``.

    Example:
        >>> import numpy as np
        >>> logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
        >>> select_misclassified(logits, np.array([0, 0, 1])).tolist()
        [False, True, True]
    """
    logits, targets = np.asarray(logits), np.asarray(targets)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(
            f"logits should have shape (N, C) and targets (N,), but got shapes "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    return logits.argmax(axis=1) != targets


def select_loss_quantile(
    loss: np.ndarray, targets: np.ndarray, *, quantile: float = 0.5
) -> np.ndarray:
    """Mask of the examples whose loss is strictly above their class's loss quantile.

    With the default ``quantile=0.5`` this is our reading of the paper's ``QUANTILE``
    baseline ("larger than the median value", Appendix D.8): the examples above their
    class's median. Ties at the quantile are not selected, so a class whose losses
    are all equal selects nothing.

    Args:
        loss: ``(N,)`` per-example loss at the separating epoch.
        targets: ``(N,)`` integer labels.
        quantile: Quantile in ``[0, 1)`` of every class's loss used as the threshold.

    Returns:
        ``(N,)`` bool mask.

    Raises:
        ValueError: if ``quantile`` is not in ``[0, 1)``, or ``loss`` and ``targets`` are not
            both ``(N,)``.

    Example:
        >>> import numpy as np
        >>> loss = np.array([0.1, 0.9, 0.5, 2.0, 0.2, 0.3])
        >>> select_loss_quantile(loss, np.array([0, 0, 0, 1, 1, 1])).tolist()
        [False, True, False, True, False, False]
    """
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile should be in [0, 1), but got quantile={quantile}")
    loss = np.asarray(loss, dtype=np.float64)
    targets = np.asarray(targets)
    _per_example("loss", loss, targets)
    mask = np.zeros(loss.shape[0], dtype=bool)
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        threshold = np.quantile(loss[members], quantile)
        mask[members] = loss[members] > threshold
    return mask


def select_random_like(reference: np.ndarray, targets: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A random mask with the same number of selected examples *per class* as ``reference``.

    Drawing per class (stratified) keeps the class balance of the upsampled set identical to
    USEFUL's, so a comparison isolates *which* examples are upsampled.

    Args:
        reference: ``(N,)`` bool mask whose per-class counts are matched (USEFUL's k-means).
        targets: ``(N,)`` integer labels.
        seed: Seed of local ``numpy`` generators (one per class, seeded with
            ``(seed, label)``); the same seed gives the same mask.

    Returns:
        ``(N,)`` bool mask.

    Raises:
        ValueError: if ``reference`` and ``targets`` are not both ``(N,)``.

    Example:
        >>> import numpy as np
        >>> ref = np.array([True, True, False, False, True, False])
        >>> targets = np.array([0, 0, 0, 0, 1, 1])
        >>> draw = select_random_like(ref, targets, seed=0)
        >>> int(draw[targets == 0].sum()), int(draw[targets == 1].sum())
        (2, 1)
    """
    reference = np.asarray(reference, dtype=bool)
    targets = np.asarray(targets)
    _per_example("reference", reference, targets)
    mask = np.zeros(reference.shape[0], dtype=bool)
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        count = int(reference[members].sum())
        # One generator per class, seeded by (seed, label): a class's draw does not depend on
        # which other classes are present, so a run split by class across ranks agrees.
        rng = np.random.default_rng([int(seed), int(label)])
        mask[rng.choice(members, size=count, replace=False)] = True
    return mask

"""Alternatives to USEFUL's k-means split, for ablations, and loss upweighting.

USEFUL (the default, ``strategy="kmeans"``) splits every class into two clusters of model
outputs and upsamples the higher-loss cluster. The paper compares it against other ways of
picking the examples to upsample, all taken at the same separating epoch ``t``, and against
upweighting the loss instead of upsampling. This module implements those baselines so that
you can rerun the ablations on your own data; they are reachable through
``find_slow_learnable(..., strategy=...)`` and return the same `Selection`.

* ``"misclassified"``: the examples the model gets wrong at epoch ``t`` (JTT-style).
  Paper, Table 7 (ResNet18, SGD): 4.98 +- 0.17 % test error on CIFAR-10 and 23.86 +- 0.70 %
  on CIFAR-100, versus 4.79 +- 0.05 % and 22.58 +- 0.08 % for k-means.
* ``"loss_quantile"``: the examples whose loss is above the median loss of their class.
  The paper (Appendix D.8) says "larger than the median value" without saying over what;
  per class is our reading, like k-means' per-class split (it keeps the class balance).
  Paper, Table 7: 5.27 +- 0.10 % (CIFAR-10) and 23.49 +- 0.82 % (CIFAR-100).
* ``"random"``: as many examples as k-means picks in every class, drawn uniformly at random
  (seeded). Paper, Figure 6: random upsampling is no better than the original data, so the
  gain of USEFUL comes from *which* examples are upsampled, not from longer epochs.
* `loss_weights`: a per-example weight vector (``upsample_factor`` for the selected examples,
  1 elsewhere) for a weighted loss, instead of upsampling. Paper, Table 5: upweighting is
  worse than upsampling, e.g. SGD on CIFAR-10 5.33 +- 0.09 % versus 4.79 +- 0.05 %.

Conventions: ``N`` examples, ``C`` classes (logit columns).

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024, Appendix D.8
(Tables 5 and 7) and Section 5.3 (Figure 6).
"""

from __future__ import annotations

import numpy as np

from useful_data._checks import check_upsample_factor
from useful_data._deprecation import moved_names
from useful_data.selection import Selection

__all__ = ["loss_weights"]

#: Names accepted by ``find_slow_learnable(..., strategy=...)``.
_STRATEGIES = ("kmeans", "misclassified", "loss_quantile", "random")


def _per_example(name: str, values: np.ndarray, targets: np.ndarray) -> None:
    """Raise unless ``values`` and ``targets`` are 1-D arrays of the same length."""
    if values.ndim != 1 or targets.ndim != 1 or values.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{name} and targets should both have shape (N,), but got shapes "
            f"{tuple(values.shape)} and {tuple(targets.shape)}"
        )


def _select_misclassified(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
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
        >>> _select_misclassified(logits, np.array([0, 0, 1])).tolist()
        [False, True, True]
    """
    logits, targets = np.asarray(logits), np.asarray(targets)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(
            f"logits should have shape (N, C) and targets (N,), but got shapes "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    return logits.argmax(axis=1) != targets


def _select_loss_quantile(
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
        >>> _select_loss_quantile(loss, np.array([0, 0, 0, 1, 1, 1])).tolist()
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


def _select_random_like(reference: np.ndarray, targets: np.ndarray, *, seed: int = 0) -> np.ndarray:
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
        >>> draw = _select_random_like(ref, targets, seed=0)
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


def loss_weights(selection: Selection, upsample_factor: int | None = None) -> np.ndarray:
    """Per-example loss weights: the upweighting alternative to upsampling (paper, Table 5).

    Multiply the per-example loss by these weights (``reduction="none"``, then
    ``(loss * w[idx]).mean()``) instead of upsampling. In expectation over a full-batch
    epoch this gives the selected examples the same share of the gradient as upsampling, but
    the paper found it clearly worse than upsampling with SGD and SAM on CIFAR: upsampling also
    changes how often the examples appear in mini-batches, and so the noise of SGD.

    Args:
        selection: The `Selection` whose selected examples are upweighted.
        upsample_factor: Weight of a selected example; defaults to
            ``selection.upsample_factor`` (the paper doubles their loss).

    Returns:
        ``(N,)`` float32 weights in dataset order.

    Example:
        >>> import numpy as np
        >>> sel = Selection(np.array([True, False]), loss=np.zeros(2), targets=np.zeros(2, int))
        >>> loss_weights(sel).tolist()
        [2.0, 1.0]
    """
    if not isinstance(selection, Selection):
        raise TypeError(
            f"selection should be a Selection, but got {type(selection).__name__}; "
            "build one with find_slow_learnable or Selection.load"
        )
    factor = check_upsample_factor(
        selection.upsample_factor if upsample_factor is None else upsample_factor
    )
    weights = np.ones(selection.num_examples, dtype=np.float32)
    weights[selection.mask] = float(factor)
    return weights


# Private since 1.0: a strategy is chosen with find_slow_learnable(strategy=...).
__getattr__ = moved_names(
    __name__,
    {
        "STRATEGIES": "useful_data.strategies:_STRATEGIES",
        "select_loss_quantile": "useful_data.strategies:_select_loss_quantile",
        "select_misclassified": "useful_data.strategies:_select_misclassified",
        "select_random_like": "useful_data.strategies:_select_random_like",
    },
)

"""Alternatives to USEFUL's k-means split, for ablations, and loss upweighting.

USEFUL (the default, ``strategy="kmeans"``) splits every class into two clusters of model
outputs and upsamples the higher-loss cluster. The paper compares it against other ways of
picking the examples to upsample, all taken at the same separating epoch ``t``, and against
upweighting the loss instead of upsampling. Those baselines are reachable through
``find_slow_learnable(..., strategy=...)`` (so that you can rerun the ablations on your own
data) and return the same `Selection`; this module holds `loss_weights`.

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
        "STRATEGIES": "useful_data._baselines:STRATEGIES",
        "select_loss_quantile": "useful_data._baselines:select_loss_quantile",
        "select_misclassified": "useful_data._baselines:select_misclassified",
        "select_random_like": "useful_data._baselines:select_random_like",
    },
)

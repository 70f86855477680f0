"""Choose USEFUL's separating epoch ``t`` from the training-error curve, automatically.

The paper separates the examples "when the change in training error starts to shrink"
(Section 4 and Appendix C.2, Figure 15a: about epoch 8 of 200 for CIFAR-10 and 20 of 200 for
CIFAR-100) and picks ``t`` by hand; the test error depends on it (Figure 15b). This module turns
that sentence into a deterministic rule that works with any framework: you feed it one number
per epoch (training error or training loss) and it says when to separate.

The rule, for a curve ``e[1], e[2], ...`` (``e[i]`` measured after epoch ``i``):

1. Smoothed decrease: ``d[i] = (e[i - w] - e[i]) / w`` with ``w = min(smoothing, i - 1)``,
   the mean one-epoch decrease over the last ``w`` epochs (defined from epoch 2 on).
2. ``peak[i] = max(d[2], ..., d[i])``, the largest smoothed decrease so far.
3. Separate at the first epoch ``i >= min_epochs`` where ``d[i] < fraction * peak[i]`` held for
   ``patience`` consecutive epochs (ending at ``i``) and ``peak[i] > 0``.
4. Guard: never later than ``max_epoch = max(min_epochs, floor(max_fraction * total_epochs))``;
   if the rule has not fired by then, separate at ``max_epoch``.

The rule only compares decreases of the same curve with each other, so it does not depend on
the units (error in % or as a fraction, or loss) or on the level the curve settles at, and it
scales with the curve's own speed: a curve that falls twice as slowly separates about twice as
late. It is causal: `SeparatingEpoch.update` called epoch by epoch and `find_separating_epoch`
on the whole curve give the same epoch.

Calibration (tests/test_separating_epoch.py): on curves shaped like Figure 15a, training
error ``5 + 90 exp(-epoch / tau)`` % over 200 epochs, with ``tau = 2.5`` (CIFAR-10-like) or
``tau = 11`` (CIFAR-100-like), the defaults separate at epoch 8 and 20, the paper's choices.
With seeded Gaussian noise of 0.5 error points per epoch, over 30 noise seeds, they stay within
1 epoch of 8 (CIFAR-10-like) and 4 epochs of 20 (CIFAR-100-like; standard deviation 1.6
epochs). The defaults were chosen to hit those two epochs: that is a calibration on stand-in
curves, not a validation on CIFAR. Treat the result as a good first choice and, when you can
afford it, try the epochs around it (Figure 15b); `Selection.separation` tells you how well the
clusters split.

Paper: Nguyen, Haddad, Gan, Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024, Appendix C.2 and D.8.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from useful_data._checks import check_positive_int

__all__ = ["SeparatingEpoch", "find_separating_epoch"]


def _check_fraction(name: str, value: float, *, upper_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} should be a float, but got {name}={value!r}")
    value = float(value)
    ok = 0.0 < value <= 1.0 if upper_inclusive else 0.0 < value < 1.0
    if not ok:
        interval = "(0, 1]" if upper_inclusive else "(0, 1)"
        raise ValueError(f"{name} should be in {interval}, but got {name}={value}")
    return value


def _check_error(value: object, epoch: int) -> float:
    if isinstance(value, torch.Tensor | np.ndarray):
        count = value.numel() if isinstance(value, torch.Tensor) else value.size
        if count != 1:
            raise TypeError(
                f"the training error of epoch {epoch} should be one number, but got an array "
                f"of shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"the training error of epoch {epoch} should be a real number (error or loss), "
            f"but got {value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"the training error of epoch {epoch} should be finite, but got {value}; "
            "did training diverge?"
        )
    if value < 0:
        raise ValueError(
            f"the training error of epoch {epoch} should be >= 0 (an error rate or a loss), "
            f"but got {value}"
        )
    return value


class SeparatingEpoch:
    """Online detector of the separating epoch: call `update` once per epoch.

    See the module docstring for the rule and its calibration.

    Args:
        total_epochs: Length of the planned training schedule; caps the separating epoch at
            ``max_fraction * total_epochs``.
        fraction: Separate when the smoothed one-epoch decrease falls below this fraction of
            the largest smoothed decrease so far.
        smoothing: Window ``w`` (epochs) of the mean decrease; 1 means no smoothing.
        patience: Consecutive epochs the condition must hold.
        min_epochs: Never separate before this epoch.
        max_fraction: Separate at the latest at ``max(min_epochs, floor(max_fraction *
            total_epochs))`` (paper: 8 and 20 of 200 epochs, i.e. 0.04 and 0.1).

    Attributes:
        errors: The values fed so far, epoch 1 first.
        epoch: The separating epoch once found, else ``None``.
        reason: ``"rule"`` or ``"max_epoch"`` once found, else ``""``.

    Example:
        >>> import math
        >>> detector = SeparatingEpoch(total_epochs=200)
        >>> for epoch in range(1, 201):
        ...     error = 5 + 90 * math.exp(-epoch / 2.5)  # falls fast, then flattens
        ...     if detector.update(error):
        ...         break
        >>> detector.epoch, detector.reason
        (8, 'rule')
    """

    def __init__(
        self,
        total_epochs: int,
        *,
        fraction: float = 0.25,
        smoothing: int = 3,
        patience: int = 2,
        min_epochs: int = 3,
        max_fraction: float = 0.2,
    ) -> None:
        self.total_epochs = check_positive_int("total_epochs", total_epochs)
        self.fraction = _check_fraction("fraction", fraction, upper_inclusive=False)
        self.smoothing = check_positive_int("smoothing", smoothing)
        self.patience = check_positive_int("patience", patience)
        self.min_epochs = check_positive_int("min_epochs", min_epochs, minimum=2)
        self.max_fraction = _check_fraction("max_fraction", max_fraction, upper_inclusive=True)
        if self.min_epochs > self.total_epochs:
            raise ValueError(
                f"min_epochs should be <= total_epochs, but got min_epochs={self.min_epochs} "
                f"and total_epochs={self.total_epochs}"
            )
        self.errors: list[float] = []
        self.epoch: int | None = None
        self.reason = ""
        self._peak = -math.inf
        self._streak = 0

    @property
    def max_epoch(self) -> int:
        """The latest epoch the detector separates at."""
        return max(self.min_epochs, math.floor(self.max_fraction * self.total_epochs))

    def update(self, train_error: float) -> bool:
        """Record the training error (or loss) of the next epoch; ``True`` when to separate.

        Args:
            train_error: Training error or loss of the epoch just finished (a float, or a
                one-element tensor/array), ``>= 0`` and finite.

        Returns:
            ``True`` exactly once, at the separating epoch (then `epoch` is set).

        Raises:
            TypeError: if ``train_error`` is not a real number.
            ValueError: if it is NaN, infinite or negative.
            RuntimeError: if called again after the separating epoch was found.

        Warns:
            RuntimeWarning: when the cap is reached on a curve that never decreased (an
                accuracy passed for an error, or a model that does not learn).
        """
        if self.epoch is not None:
            raise RuntimeError(
                f"the separating epoch was already found (epoch {self.epoch}); compute the "
                "selection now and restart training on the upsampled data"
            )
        epoch = len(self.errors) + 1
        self.errors.append(_check_error(train_error, epoch))
        if epoch >= 2:
            w = min(self.smoothing, epoch - 1)
            decrease = (self.errors[-1 - w] - self.errors[-1]) / w
            self._peak = max(self._peak, decrease)
            below = self._peak > 0 and decrease < self.fraction * self._peak
            self._streak = self._streak + 1 if below else 0
        if epoch >= self.min_epochs and self._streak >= self.patience:
            self.epoch, self.reason = epoch, "rule"
        elif epoch >= self.max_epoch:
            self.epoch, self.reason = epoch, "max_epoch"
            if self._peak <= 0:
                warnings.warn(
                    f"the training error never decreased over the first {epoch} epochs, so "
                    f"the separating epoch is the cap ({epoch}): is it an accuracy rather than "
                    "an error or loss, or is the model not learning?",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.epoch is not None

    def __repr__(self) -> str:
        return (
            f"SeparatingEpoch(total_epochs={self.total_epochs}, fraction={self.fraction}, "
            f"smoothing={self.smoothing}, patience={self.patience}, "
            f"min_epochs={self.min_epochs}, max_fraction={self.max_fraction}, "
            f"epochs_seen={len(self.errors)}, epoch={self.epoch})"
        )


def find_separating_epoch(
    train_error: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    total_epochs: int | None = None,
    fraction: float = 0.25,
    smoothing: int = 3,
    patience: int = 2,
    min_epochs: int = 3,
    max_fraction: float = 0.2,
) -> int:
    """The separating epoch of a recorded training-error (or loss) curve.

    Same rule and arguments as `SeparatingEpoch` (see the module docstring); use it on the
    logged curve of a previous run, e.g. the first epochs of a baseline run.

    Args:
        train_error: Per-epoch training error or loss, epoch 1 first (1-D).
        total_epochs: Length of the training schedule; defaults to ``len(train_error)``.
        fraction: See `SeparatingEpoch`.
        smoothing: See `SeparatingEpoch`.
        patience: See `SeparatingEpoch`.
        min_epochs: See `SeparatingEpoch`.
        max_fraction: See `SeparatingEpoch`.

    Returns:
        The separating epoch, 1-based: separate after training this many epochs.

    Raises:
        TypeError: if ``train_error`` is not a 1-D sequence of real numbers.
        ValueError: for NaN, infinite or negative values, or a curve that ends before the
            rule fires and before the ``max_fraction`` cap (train for more epochs).

    Example:
        >>> import numpy as np
        >>> epochs = np.arange(1, 201)
        >>> cifar100_like = 5 + 90 * np.exp(-epochs / 11)
        >>> find_separating_epoch(cifar100_like)
        20
    """
    if isinstance(train_error, str | bytes) or not isinstance(
        train_error, Sequence | np.ndarray | torch.Tensor
    ):
        raise TypeError(
            "train_error should be a 1-D sequence, numpy array or tensor of per-epoch values, "
            f"but got {type(train_error).__name__}"
        )
    values = (
        train_error.tolist() if isinstance(train_error, np.ndarray | torch.Tensor) else train_error
    )
    if isinstance(train_error, np.ndarray | torch.Tensor) and train_error.ndim != 1:
        raise TypeError(
            f"train_error should be 1-D (one value per epoch), but got shape "
            f"{tuple(train_error.shape)}"
        )
    if len(values) == 0:
        raise ValueError("train_error should hold at least one epoch, but got an empty curve")
    values = [_check_error(value, epoch) for epoch, value in enumerate(values, start=1)]
    detector = SeparatingEpoch(
        len(values) if total_epochs is None else total_epochs,
        fraction=fraction,
        smoothing=smoothing,
        patience=patience,
        min_epochs=min_epochs,
        max_fraction=max_fraction,
    )
    for value in values:
        if detector.update(value):
            return int(detector.epoch)  # type: ignore[arg-type]
    raise ValueError(
        f"the rule did not fire within the {len(values)} epochs given and the cap "
        f"(epoch {detector.max_epoch}) is not reached yet; train for more epochs"
    )

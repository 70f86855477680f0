"""The paper's synthetic data distribution (Definition 3.1) and its two-layer cubic CNN.

A data point is ``P`` patches of dimension ``d``: one *slow-learnable* feature patch
``beta_d * y * v_d``, one *fast-learnable* feature patch ``beta_e * y * v_e`` present with
probability ``alpha`` (zeros otherwise), and ``P - 2`` Gaussian noise patches orthogonal to both
features. The examples that lack the fast-learnable feature are exactly the ones USEFUL should
find, which makes this distribution a ground truth for testing the selection.

The model is Eq. (1): ``f(x) = sum_j sum_p sigma(<w_j, x_p>)`` with ``sigma(z) = z**3``, trained
with the logistic loss. `ToyCNN` returns two logits ``(-f/2, f/2)``, so cross-entropy on
labels ``{0, 1}`` equals the paper's logistic loss ``log(1 + exp(-y f))`` with
``y = 2 * label - 1``.

Paper: Nguyen et al., NeurIPS 2024, Section 3.1 and 5.1 (d=50, P=3, beta_e=1, beta_d=0.2,
alpha=0.9, sigma_p / sqrt(d)=0.125, J=40 filters).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset

from useful_data._checks import check_positive_int

__all__ = ["SimplicityBiasData", "ToyCNN", "make_simplicity_bias_data"]


class SimplicityBiasData(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A sample of Definition 3.1 as a map-style dataset of ``(x, label)`` pairs.

    Attributes:
        inputs: ``(N, P, d)`` float32 patches.
        targets: ``(N,)`` int64 labels in ``{0, 1}`` (``y = 2 * label - 1``).
        has_fast_feature: ``(N,)`` bool, ``False`` for the examples without the fast feature.
        v_e: ``(d,)`` unit fast-learnable feature.
        v_d: ``(d,)`` unit slow-learnable feature.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        has_fast_feature: torch.Tensor,
        v_e: torch.Tensor,
        v_d: torch.Tensor,
    ) -> None:
        self.inputs = inputs
        self.targets = targets
        self.has_fast_feature = has_fast_feature
        self.v_e = v_e
        self.v_d = v_d

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


def make_simplicity_bias_data(
    num_examples: int,
    *,
    dim: int = 50,
    num_patches: int = 3,
    beta_e: float = 1.0,
    beta_d: float = 0.2,
    alpha: float = 0.9,
    noise_std: float = 0.125,
    shuffle_patches: bool = True,
    seed: int = 0,
) -> SimplicityBiasData:
    """Draw ``num_examples`` points from ``D(beta_e, beta_d, alpha)`` (Definition 3.1).

    Args:
        num_examples: ``N``.
        dim: Patch dimension ``d`` (>= 3: two features and room for noise).
        num_patches: ``P >= 3`` patches per example.
        beta_e: Strength of the fast-learnable feature.
        beta_d: Strength of the slow-learnable feature (``0 <= beta_d <= beta_e``; the
            paper's Definition 3.1 has ``beta_d < beta_e``; its Figure 8 uses equal ones).
        alpha: Probability that an example has the fast-learnable feature.
        noise_std: Per-coordinate std of the noise patches, ``sigma_p / sqrt(d)``.
        shuffle_patches: Put the patches in a random order per example (Section 5.1).
        seed: Seed of a local generator; the same seed gives the same data.

    Returns:
        The dataset, with the planted truth in ``has_fast_feature``.

    Example:
        >>> data = make_simplicity_bias_data(1000, seed=0)
        >>> tuple(data.inputs.shape), round(float(data.has_fast_feature.float().mean()), 1)
        ((1000, 3, 50), 0.9)
    """
    num_examples = check_positive_int("num_examples", num_examples)
    dim = check_positive_int("dim", dim, minimum=3)
    num_patches = check_positive_int("num_patches", num_patches, minimum=3)
    for name, value in (("alpha", alpha), ("beta_e", beta_e), ("beta_d", beta_d)):
        if not math.isfinite(value):
            raise ValueError(f"{name} should be finite, but got {name}={value}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha should be a probability in [0, 1], but got alpha={alpha}")
    if not 0.0 <= beta_d <= beta_e:
        raise ValueError(
            f"feature strengths should satisfy 0 <= beta_d <= beta_e, but got beta_d={beta_d}, "
            f"beta_e={beta_e}"
        )
    if not noise_std >= 0 or not math.isfinite(noise_std):  # NaN fails both comparisons
        raise ValueError(f"noise_std should be finite and >= 0, but got noise_std={noise_std}")
    g = torch.Generator().manual_seed(seed)
    v_e = torch.zeros(dim)
    v_e[0] = 1.0
    v_d = torch.zeros(dim)
    v_d[1] = 1.0
    labels = torch.randint(0, 2, (num_examples,), generator=g)
    y = (2 * labels - 1).float()[:, None]
    has_fast = torch.rand(num_examples, generator=g) < alpha
    x = torch.zeros(num_examples, num_patches, dim)
    x[:, 0] = beta_e * y * v_e * has_fast[:, None]
    x[:, 1] = beta_d * y * v_d
    noise = torch.randn(num_examples, num_patches - 2, dim, generator=g) * noise_std
    noise[..., :2] = 0.0  # noise is orthogonal to both features
    x[:, 2:] = noise
    if shuffle_patches:
        order = torch.argsort(torch.rand(num_examples, num_patches, generator=g), dim=1)
        x = torch.gather(x, 1, order[:, :, None].expand(-1, -1, dim))
    return SimplicityBiasData(x, labels.long(), has_fast, v_e, v_d)


class ToyCNN(nn.Module):
    """The two-layer nonlinear CNN of Eq. (1): ``f(x) = sum_j sum_p <w_j, x_p>**3``.

    Args:
        dim: Patch dimension ``d``.
        num_filters: ``J`` (the paper: 40).
        init_std: Std ``sigma_0`` of the Gaussian initialisation.
        seed: Seed of a local generator for the initialisation.

    Example:
        >>> model = ToyCNN(dim=50, num_filters=40, seed=0)
        >>> tuple(model(torch.zeros(8, 3, 50)).shape)
        (8, 2)
    """

    def __init__(
        self, dim: int = 50, num_filters: int = 40, *, init_std: float = 0.01, seed: int = 0
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(num_filters, dim, generator=g) * init_std)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The scalar output ``f(x)`` of shape ``(B,)`` for inputs ``(B, P, d)``."""
        return torch.einsum("bpd,jd->bpj", x, self.weight).pow(3).sum(dim=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two logits ``(-f/2, f/2)`` of shape ``(B, 2)``: cross-entropy = logistic loss."""
        f = self.score(x)
        return torch.stack([-0.5 * f, 0.5 * f], dim=1)

    @torch.no_grad()
    def feature_alignment(self, feature: torch.Tensor) -> float:
        """``max_j <w_j, v>``: how much the model has learned ``feature`` (Section 3.3)."""
        return float((self.weight @ feature).max())

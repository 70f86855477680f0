"""The paper's synthetic distribution (Definition 3.1) is what `make_simplicity_bias_data` draws."""

from __future__ import annotations

import pytest
import torch

from useful_data.synthetic import ToyCNN, make_simplicity_bias_data


def _patches(data, v):
    """Per example and patch, the coefficient along the unit vector ``v``: ``(N, P)``."""
    return torch.einsum("npd,d->np", data.inputs, v)


def test_definition_3_1_patch_structure():
    data = make_simplicity_bias_data(
        4000, dim=20, num_patches=4, alpha=0.9, beta_e=1.0, beta_d=0.2, seed=3
    )
    x, v_e, v_d = data.inputs, data.v_e, data.v_d
    y = (2 * data.targets - 1).float()
    on_e, on_d = _patches(data, v_e), _patches(data, v_d)
    # exactly one patch carries beta_d * y * v_d, in every example (the slow feature)
    slow = torch.isclose(on_d, 0.2 * y[:, None])
    assert slow.sum(1).eq(1).all()
    # one patch carries beta_e * y * v_e exactly when the example has the fast feature
    fast = torch.isclose(on_e, 1.0 * y[:, None])
    assert torch.equal(fast.sum(1), data.has_fast_feature.long())
    assert abs(data.has_fast_feature.float().mean().item() - 0.9) < 0.02
    # the feature patches are the features alone; the rest is noise orthogonal to both
    # (besides a zero patch where the fast feature is missing)
    assert torch.allclose(x[slow], 0.2 * y[:, None].expand_as(slow)[slow, None] * v_d)
    assert torch.allclose(x[fast], 1.0 * y[:, None].expand_as(fast)[fast, None] * v_e)
    noise = x[~slow & ~fast & (x.norm(dim=2) > 0)]
    assert len(noise) == 4000 * 2  # num_patches - 2 noise patches per example
    assert (noise @ v_e).abs().max() == 0 and (noise @ v_d).abs().max() == 0
    assert (
        0.95 < noise[:, 2:].std().item() / 0.125 < 1.05
    )  # the default noise_std (v_e, v_d: e_0, e_1)
    # the patches are shuffled: the slow feature is not always in the same position
    positions = slow.float().argmax(1)
    assert len(positions.unique()) == 4
    # balanced labels
    assert abs(data.targets.float().mean().item() - 0.5) < 0.03


def test_synthetic_data_rejects_non_finite_parameters():
    for kwargs in ({"noise_std": float("nan")}, {"noise_std": -0.1}, {"beta_e": float("inf")}):
        with pytest.raises(ValueError, match=r"should be finite|>= 0"):
            make_simplicity_bias_data(10, **kwargs)


def test_synthetic_defaults_are_the_papers():
    """Section 5.1: d=50, P=3, beta_e=1, beta_d=0.2, J=40 filters."""
    data = make_simplicity_bias_data(400, seed=0)
    y = (2 * data.targets - 1).float()
    assert tuple(data.inputs.shape) == (400, 3, 50)
    on_d = torch.einsum("npd,d->np", data.inputs, data.v_d)
    on_e = torch.einsum("npd,d->np", data.inputs, data.v_e)
    assert torch.allclose(on_d.sum(1), 0.2 * y)
    assert torch.allclose(on_e.sum(1), 1.0 * y * data.has_fast_feature)
    model = ToyCNN()
    assert tuple(model.weight.shape) == (40, 50)
    assert 0.008 < model.weight.std().item() < 0.012  # init_std=0.01


def test_synthetic_data_and_model_follow_the_seed():
    """Same seed, same data and weights; another seed, other labels, inputs and weights."""
    a, b = make_simplicity_bias_data(200, seed=0), make_simplicity_bias_data(200, seed=0)
    c = make_simplicity_bias_data(200, seed=1)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.targets, c.targets)
    assert not torch.equal(a.has_fast_feature, c.has_fast_feature)
    assert torch.equal(ToyCNN(seed=0).weight, ToyCNN(seed=0).weight)
    assert not torch.equal(ToyCNN(seed=0).weight, ToyCNN(seed=1).weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"alpha": 1.5}, "alpha should be a probability"),
     ({"alpha": -0.1}, "alpha should be a probability"),
     ({"beta_d": 1.5, "beta_e": 1.0}, "0 <= beta_d <= beta_e"),
     ({"beta_d": -0.1}, "0 <= beta_d <= beta_e"),
     ({"dim": 2}, "dim"),
     ({"num_patches": 2}, "num_patches")],
)  # fmt: skip
def test_synthetic_data_rejects_out_of_range_parameters(kwargs, message):
    """alpha is a probability, 0 <= beta_d <= beta_e, d >= 3 and P >= 3."""
    with pytest.raises(ValueError, match=message):
        make_simplicity_bias_data(10, **kwargs)


def test_equal_feature_strengths_are_accepted():
    """beta_d == beta_e (== alpha == 1) is the setting of the paper's Figure 8."""
    data = make_simplicity_bias_data(10, beta_d=1.0, beta_e=1.0, alpha=1.0)
    assert tuple(data.inputs.shape) == (10, 3, 50)


def test_toy_cnn_cross_entropy_is_the_logistic_loss():
    """``CE(model(x), label) == log(1 + exp(-y f(x)))`` with ``y = 2 * label - 1``."""
    data = make_simplicity_bias_data(64, seed=0)
    model = ToyCNN(init_std=0.3, seed=0)
    with torch.no_grad():
        f = model.score(data.inputs)
        ce = torch.nn.functional.cross_entropy(model(data.inputs), data.targets, reduction="none")
    y = (2 * data.targets - 1).float()
    assert f.abs().max() > 0.1  # not trivially zero
    torch.testing.assert_close(ce, torch.nn.functional.softplus(-y * f))


def test_feature_alignment_is_the_signed_max():
    """``max_j <w_j, v>``, not the largest absolute value."""
    model = ToyCNN(dim=3, num_filters=2)
    v = torch.tensor([1.0, 0.0, 0.0])
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-2.0, 0.0, 0.0], [0.5, 0.0, 0.0]]))
    assert model.feature_alignment(v) == pytest.approx(0.5)

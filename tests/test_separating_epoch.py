from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from useful_data.separating_epoch import SeparatingEpoch, find_separating_epoch

EPOCHS = np.arange(1, 201)


def figure15a_curve(tau: float) -> np.ndarray:
    """Training error (%) shaped like Figure 15a: falls fast from ~90 %, then flattens."""
    return 5.0 + 90.0 * np.exp(-EPOCHS / tau)


def noisy(curve: np.ndarray, seed: int, std: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(curve + rng.normal(0.0, std, curve.shape), 0.0, None)


@pytest.mark.parametrize(("tau", "expected", "tolerance"), [(2.5, 8, 1), (11.0, 20, 4)])
def test_figure15a_shaped_curves_separate_near_the_papers_epoch(tau, expected, tolerance):
    curve = figure15a_curve(tau)
    assert find_separating_epoch(curve) == expected
    found = [find_separating_epoch(noisy(curve, seed)) for seed in range(30)]
    assert all(abs(e - expected) <= tolerance for e in found), found
    assert np.std(found) <= 2.0  # stable across noise seeds


def test_units_and_level_do_not_matter():
    curve = figure15a_curve(2.5)
    base = find_separating_epoch(curve)
    assert find_separating_epoch(curve / 100.0) == base  # fraction instead of %
    assert find_separating_epoch(curve + 30.0) == base  # another plateau level
    assert find_separating_epoch(torch.tensor(curve)) == base
    assert find_separating_epoch(curve.tolist()) == base


def test_slower_curve_separates_later():
    found = [find_separating_epoch(figure15a_curve(tau)) for tau in (2.0, 4.0, 8.0, 16.0)]
    assert found == sorted(found) and found[0] < found[-1]


def test_online_matches_offline():
    curve = noisy(figure15a_curve(6.0), seed=3)
    detector = SeparatingEpoch(total_epochs=200)
    for value in curve:
        if detector.update(float(value)):
            break
    assert detector.epoch == find_separating_epoch(curve)
    assert len(detector.errors) == detector.epoch
    with pytest.raises(RuntimeError, match="already found"):
        detector.update(1.0)


def test_max_fraction_caps_a_curve_that_keeps_falling():
    linear = np.linspace(90.0, 10.0, 100)  # constant decrease: the rule never fires
    detector = SeparatingEpoch(total_epochs=100, max_fraction=0.1)
    epoch = next(i for i, v in enumerate(linear, start=1) if detector.update(v))
    assert (epoch, detector.reason) == (10, "max_epoch")
    assert find_separating_epoch(linear, max_fraction=0.1) == 10


def test_min_epochs_guard():
    curve = 5.0 + 90.0 * np.exp(-EPOCHS / 0.5)  # flat after two epochs
    free = find_separating_epoch(curve, min_epochs=2)
    assert free < 8
    # the condition keeps holding on the flat tail, so the guard decides
    assert find_separating_epoch(curve, min_epochs=free + 4) == free + 4


def test_flat_or_rising_curve_falls_back_to_the_cap_with_a_warning():
    for curve in (np.full(50, 40.0), np.linspace(10, 20, 50)):  # e.g. an accuracy passed
        with pytest.warns(RuntimeWarning, match="never decreased"):
            assert find_separating_epoch(curve, max_fraction=0.2) == 10


def test_a_curve_that_fell_and_reached_the_cap_does_not_warn():
    curve = 50.0 - np.arange(50.0)  # still falling steadily at the cap: no flattening yet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_separating_epoch(curve, max_fraction=0.2) == 10


def test_bad_values_are_named_before_the_schedule_is_checked():
    """A short curve with a NaN is reported as a NaN, not as min_epochs > total_epochs."""
    with pytest.raises(ValueError, match="epoch 2 should be finite"):
        find_separating_epoch([5.0, float("nan")])
    with pytest.raises(TypeError, match="epoch 1 should be a real number"):
        find_separating_epoch([[1.0], [2.0]])


def test_short_curve_that_has_not_fired_asks_for_more_epochs():
    with pytest.raises(ValueError, match="train for more epochs"):
        find_separating_epoch(figure15a_curve(11.0)[:10], total_epochs=200)


def test_accepts_scalar_tensors_and_numpy_scalars():
    detector = SeparatingEpoch(total_epochs=10)
    assert detector.update(torch.tensor(50.0)) is False
    assert detector.update(np.float32(40.0)) is False
    assert detector.errors == [50.0, 40.0]


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (float("nan"), ValueError, "finite"),
        (math.inf, ValueError, "finite"),
        (-0.1, ValueError, ">= 0"),
        ("0.5", TypeError, "real number"),
        (True, TypeError, "real number"),
        (None, TypeError, "real number"),
        (torch.ones(2), TypeError, "one number"),
    ],
)
def test_bad_values_are_rejected_with_the_epoch(value, error, match):
    detector = SeparatingEpoch(total_epochs=10)
    detector.update(1.0)
    with pytest.raises(error, match=match) as info:
        detector.update(value)
    assert "epoch 2" in str(info.value)


def test_bad_curves():
    with pytest.raises(TypeError, match="1-D sequence"):
        find_separating_epoch("0.5 0.4")
    with pytest.raises(TypeError, match="1-D sequence"):
        find_separating_epoch(3.0)
    with pytest.raises(TypeError, match="1-D"):
        find_separating_epoch(np.ones((3, 3)))
    with pytest.raises(ValueError, match="empty"):
        find_separating_epoch([])
    with pytest.raises(ValueError, match="finite"):
        find_separating_epoch([0.9, 0.5, float("nan"), 0.3])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"total_epochs": 0}, ValueError, "total_epochs"),
        ({"total_epochs": 10.0}, TypeError, "total_epochs"),
        ({"total_epochs": 10, "fraction": 0.0}, ValueError, "fraction"),
        ({"total_epochs": 10, "fraction": 1.0}, ValueError, "fraction"),
        ({"total_epochs": 10, "fraction": "a"}, TypeError, "fraction"),
        ({"total_epochs": 10, "smoothing": 0}, ValueError, "smoothing"),
        ({"total_epochs": 10, "patience": 0}, ValueError, "patience"),
        ({"total_epochs": 10, "min_epochs": 1}, ValueError, "min_epochs"),
        ({"total_epochs": 10, "min_epochs": 11}, ValueError, "min_epochs"),
        ({"total_epochs": 10, "max_fraction": 1.5}, ValueError, "max_fraction"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SeparatingEpoch(**kwargs)


def test_separating_epoch_argument_boundaries():
    """max_fraction=1 and min_epochs == total_epochs are allowed; the cap is floored."""
    assert SeparatingEpoch(total_epochs=10, max_fraction=1.0).max_epoch == 10
    assert SeparatingEpoch(total_epochs=3, min_epochs=3).max_epoch == 3
    assert SeparatingEpoch(total_epochs=101, max_fraction=0.1).max_epoch == 10  # floor(10.1)
    assert SeparatingEpoch(total_epochs=200).max_epoch == 40  # default max_fraction=0.2
    linear = np.linspace(90.0, 10.0, 100)  # the rule never fires: the default cap decides
    assert find_separating_epoch(linear) == 20


def test_find_separating_epoch_defaults_match_the_online_detector():
    """On a short schedule the cap is max(min_epochs=3, ...), online and offline."""
    curve = [10.0, 9.0, 8.0, 7.0, 6.0]  # constant decrease: only the cap can fire
    detector = SeparatingEpoch(total_epochs=len(curve))
    online = next(i for i, v in enumerate(curve, start=1) if detector.update(v))
    assert online == find_separating_epoch(curve) == 3


def test_smoothing_window_grows_from_one_to_smoothing():
    """``w = min(smoothing, i - 1)``: at epoch 3 the mean decrease is over 2 epochs."""
    curve = [10.0, 9.0] + [9.0] * 20
    # d2 = 1 (peak); d3 = (10 - 9) / 2 = 0.5 and d4 = 1/3 are not < 0.25; d5 = 0 is
    assert find_separating_epoch(curve, patience=1, total_epochs=100) == 5


def test_a_curve_that_never_decreased_never_fires_by_the_rule():
    """Flat, then rising: peak stays 0, so the cap (with its warning) decides, not the rule."""
    curve = np.array([5.0, 5.0, 5.0] + [6.0 + i for i in range(47)])
    detector = SeparatingEpoch(total_epochs=50)
    with pytest.warns(RuntimeWarning, match="never decreased"):
        epoch = next(i for i, v in enumerate(curve, start=1) if detector.update(v))
    assert (epoch, detector.reason) == (10, "max_epoch")


def test_the_condition_is_strictly_below_the_fraction_of_the_peak():
    """A decrease exactly at ``fraction * peak`` does not count."""
    curve = [100.0, 96.0] + [96.0 - i for i in range(1, 30)]  # d2 = 4, then exactly 1 = 0.25 * 4
    detector = SeparatingEpoch(total_epochs=100, smoothing=1)
    epoch = next(i for i, v in enumerate(curve, start=1) if detector.update(v))
    assert (epoch, detector.reason) == (20, "max_epoch")


def test_patience_needs_consecutive_epochs():
    """The streak resets when the condition stops holding."""
    curve = [100.0, 60.0, 55.0, 30.0, 25.0, 20.0] + [20.0] * 20  # below, above, below, below
    assert find_separating_epoch(curve, smoothing=1, total_epochs=100) == 6


def test_separating_epoch_rejects_empty_and_2d_tensors():
    """An empty tensor is not one number; a 2-D tensor curve is reported as not 1-D."""
    detector = SeparatingEpoch(total_epochs=10)
    with pytest.raises(TypeError, match="one number"):
        detector.update(torch.tensor([]))
    with pytest.raises(TypeError, match="1-D"):
        find_separating_epoch(torch.ones(3, 3))

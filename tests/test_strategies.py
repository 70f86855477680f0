from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import two_blob_logits

from useful_data import Selection, find_slow_learnable
from useful_data._baselines import (
    STRATEGIES,
    select_loss_quantile,
    select_misclassified,
    select_random_like,
)
from useful_data.slow_learnable import _select_from_logits as select_from_logits
from useful_data.strategies import loss_weights

ROOT = Path(__file__).resolve().parents[1]


def _select(logits, targets, strategy, **kwargs):
    return find_slow_learnable(
        logits=logits, targets=targets, strategy=strategy, backend="sklearn", **kwargs
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_a_selection_recording_it(strategy, tmp_path):
    logits, targets, _ = two_blob_logits()
    sel = _select(logits, targets, strategy)
    assert isinstance(sel, Selection)
    assert sel.params["strategy"] == strategy
    assert sel.num_examples == len(targets)
    assert Selection.load(sel.save(tmp_path / "s.npz")).params["strategy"] == strategy


def test_misclassified_matches_argmax():
    logits, targets, _ = two_blob_logits()
    logits = logits.copy()
    logits[:5] = 0.0
    logits[np.arange(5), (targets[:5] + 1) % 3] = 1.0  # wrong on purpose
    sel = _select(logits, targets, "misclassified")
    np.testing.assert_array_equal(sel.mask, logits.argmax(1) != targets)
    assert sel.mask[:5].all()


def test_loss_quantile_selects_above_the_class_median():
    logits, targets, _ = two_blob_logits(n_per_class=41)
    sel = _select(logits, targets, "loss_quantile")
    for c in range(3):
        members = targets == c
        median = np.median(sel.loss[members])
        np.testing.assert_array_equal(sel.mask[members], sel.loss[members] > median)
        assert sel.mask[members].sum() == 20  # odd class size: strictly above the median


def test_random_matches_kmeans_counts_per_class_and_is_seeded():
    logits, targets, truth = two_blob_logits(n_per_class=100)
    kmeans = _select(logits, targets, "kmeans")
    rand = _select(logits, targets, "random", seed=3)
    for c in range(3):
        assert rand.mask[targets == c].sum() == kmeans.mask[targets == c].sum()
    assert not np.array_equal(rand.mask, kmeans.mask)
    np.testing.assert_array_equal(rand.mask, _select(logits, targets, "random", seed=3).mask)
    assert not np.array_equal(rand.mask, _select(logits, targets, "random", seed=4).mask)
    # kmeans finds the planted low-margin blob; random does not
    np.testing.assert_array_equal(kmeans.mask, truth)
    assert (rand.mask & truth).sum() < 0.6 * truth.sum()


def test_select_from_logits_accepts_strategy_and_rejects_unknown():
    logits, targets, _ = two_blob_logits()
    assert select_from_logits(logits, targets, strategy="misclassified").params["strategy"] == (
        "misclassified"
    )
    for call in (
        select_from_logits,
        lambda *a, **k: find_slow_learnable(logits=a[0], targets=a[1], **k),
    ):
        with pytest.raises(ValueError, match="strategy should be one of"):
            call(logits, targets, strategy="jtt")


def test_find_slow_learnable_with_a_model_and_strategy():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    data = torch.utils.data.TensorDataset(torch.randn(30, 4), torch.arange(30) % 3)
    sel = find_slow_learnable(model, data, strategy="misclassified", progress=False)
    with torch.no_grad():
        expected = model(data.tensors[0]).argmax(1).numpy() != data.tensors[1].numpy()
    np.testing.assert_array_equal(sel.mask, expected)


def test_rule_helpers_directly():
    assert select_misclassified(np.array([[0.0, 1.0]]), np.array([1])).tolist() == [False]
    loss = np.array([1.0, 1.0, 1.0])
    assert not select_loss_quantile(loss, np.zeros(3, int)).any()  # ties: nothing selected
    assert (
        select_loss_quantile(np.array([0.0, 1.0, 2.0, 3.0]), np.zeros(4, int), quantile=0.0).sum()
        == 3
    )
    with pytest.raises(ValueError, match="quantile"):
        select_loss_quantile(loss, np.zeros(3, int), quantile=1.0)
    ref = np.array([True, False, True, False])
    assert select_random_like(ref, np.array([0, 0, 1, 1]), seed=0).sum() == 2


def test_loss_weights():
    sel = Selection(
        mask=np.array([True, False, True]),
        loss=np.zeros(3),
        targets=np.zeros(3, int),
        upsample_factor=3,
    )
    w = loss_weights(sel)
    assert w.dtype == np.float32 and w.tolist() == [3.0, 1.0, 3.0]
    assert loss_weights(sel, upsample_factor=2).tolist() == [2.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="upsample_factor"):
        loss_weights(sel, upsample_factor=0)
    with pytest.raises(TypeError, match="Selection"):
        loss_weights(np.array([True]))


def test_upweighting_equals_upsampling_for_a_full_batch_mean():
    logits, targets, _ = two_blob_logits()
    sel = _select(logits, targets, "kmeans")
    per_example = sel.loss.astype(np.float64)
    w = loss_weights(sel)
    upsampled = np.concatenate([per_example, per_example[sel.mask]])
    assert np.isclose((w * per_example).sum() / w.sum(), upsampled.mean())


def test_bench_accuracy_quick_runs_and_prints_parsable_tables():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_accuracy.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "method" not in line]
    names = [r.split("|")[1].strip() for r in rows]
    assert names.count("SGD") == 4 and names.count("SAM+USEFUL") == 3
    assert "SGD+upweight" in names and "SGD+loss_quantile" in names
    assert "SGD+USEFUL, equal length" in names and "SGD+random, equal length" in names
    assert "share of USEFUL's mean gain over SGD kept at equal length" in out
    for row in rows:
        acc = float(row.split("|")[2].split("±")[0])
        assert 0.0 <= acc <= 1.0
    assert "elapsed:" in out


def test_random_draw_of_a_class_does_not_depend_on_the_other_classes():
    # what lets a run split by class across ranks (useful_data.distributed) agree
    ref = np.tile([True, False, False], 40)
    targets = np.repeat([0, 1, 2], 40)
    full = select_random_like(ref, targets, seed=5)
    keep = targets != 1
    part = select_random_like(ref[keep], targets[keep], seed=5)
    np.testing.assert_array_equal(full[keep], part)


def test_rule_helpers_reject_mismatched_lengths():
    with pytest.raises(ValueError, match=r"loss and targets should both have shape \(N,\)"):
        select_loss_quantile(np.ones(5), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"reference and targets should both have shape"):
        select_random_like(np.ones(5, dtype=bool), np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match=r"logits should have shape \(N, C\) and targets"):
        select_misclassified(np.ones((5, 2)), np.zeros(4, dtype=int))


def test_random_like_matches_per_class_counts_not_the_global_share():
    """Class 0 has 2 of 4 selected, class 1 none: the draw keeps those counts."""
    ref = np.array([True, True, False, False, False, False, False, False])
    targets = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    draw = select_random_like(ref, targets, seed=0)
    assert (int(draw[:4].sum()), int(draw[4:].sum())) == (2, 0)


def test_random_like_seeding_is_as_documented():
    """One generator per class, seeded with ``(seed, label)``; the default seed is 0."""
    ref = np.tile([True, False, False, False], 50)
    targets = np.repeat([0, 1], 100)
    draw = select_random_like(ref, targets, seed=7)
    for label in (0, 1):
        members = np.flatnonzero(targets == label)
        rng = np.random.default_rng([7, label])
        expected = np.zeros_like(draw)
        expected[rng.choice(members, size=25, replace=False)] = True
        np.testing.assert_array_equal(draw[members], expected[members])
    np.testing.assert_array_equal(
        select_random_like(ref, targets), select_random_like(ref, targets, seed=0)
    )


def test_loss_quantile_is_computed_in_float64():
    """A float32 loss must not have its threshold rounded onto the top value."""
    top = np.nextafter(np.float32(1.0), np.float32(2.0))
    loss = np.array([1.0, top], dtype=np.float32)
    assert select_loss_quantile(loss, np.zeros(2, int), quantile=0.9).tolist() == [False, True]


def test_strategy_helpers_reject_non_1d_inputs():
    """2-D loss/reference/targets with a matching first dimension are still errors."""
    with pytest.raises(ValueError, match=r"reference and targets should both have shape"):
        select_random_like(np.ones((4, 2), bool), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"loss and targets should both have shape"):
        select_loss_quantile(np.ones(4), np.zeros((4, 1), int))
    with pytest.raises(ValueError, match=r"logits should have shape \(N, C\)"):
        select_misclassified(np.ones((4, 2)), np.zeros((4, 1), int))

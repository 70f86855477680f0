from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import two_blob_logits

from useful_data import Selection, find_slow_learnable
from useful_data.cli import _format_summary, main
from useful_data.selection import _WEAK_SEPARATION_AUC as WEAK_SEPARATION_AUC
from useful_data.selection import _loss_auc as loss_auc


def _pairwise_auc(loss, positive):
    pos, neg = loss[positive], loss[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return greater + 0.5 * ties


@pytest.mark.parametrize("seed", range(5))
def test_rank_auc_matches_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    loss = rng.normal(size=80).round(1)  # rounding makes ties
    positive = rng.random(80) < 0.3
    assert np.isclose(loss_auc(loss, positive), _pairwise_auc(loss, positive))


@pytest.mark.parametrize("seed", range(4))
def test_class_summary_aucs_match_the_pairwise_definition_class_by_class(seed):
    # class_summary ranks every class in one sort; ties within a class, equal losses across
    # classes (which must not tie), classes with one side empty, and unsorted labels.
    rng = np.random.default_rng(seed)
    n = 300
    targets = rng.choice([7, 2, 5, 9], size=n)
    loss = rng.normal(size=n).round(1).astype(np.float32)
    mask = rng.random(n) < 0.4
    mask[targets == 9] = False  # no slow-learnable example: AUC undefined
    sel = Selection(mask=mask, loss=loss, targets=targets)
    summary = {c.label: c.loss_auc for c in sel.class_summary()}
    assert list(summary) == [2, 5, 7, 9]
    for label in (2, 5, 7):
        members = targets == label
        expected = _pairwise_auc(loss[members].astype(np.float64), mask[members])
        assert summary[label] == pytest.approx(expected, abs=1e-12)
        assert summary[label] == loss_auc(loss[members], mask[members])
    assert np.isnan(summary[9])
    # The top loss of class 0 equals the bottom loss of class 1: they are not one tie group.
    loss = np.array([0.5, 1.0, 1.0, 1.0, 1.0, 2.0], dtype=np.float32)
    mask = np.array([False, True, False, True, False, False])
    targets = np.array([0, 0, 0, 1, 1, 1])
    aucs = [c.loss_auc for c in Selection(mask=mask, loss=loss, targets=targets).class_summary()]
    assert aucs == [_pairwise_auc(loss[:3], mask[:3]), _pairwise_auc(loss[3:], mask[3:])]


def test_rank_auc_edge_cases():
    assert np.isnan(loss_auc(np.array([1.0, 2.0]), np.array([True, True])))
    assert np.isnan(loss_auc(np.array([1.0]), np.array([False])))
    assert loss_auc(np.array([3.0, 1.0]), np.array([False, True])) == 0.0


def test_well_separated_selection_reports_high_auc_and_positive_gap():
    logits, targets, _ = two_blob_logits()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no weak-separation warning here
        sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    for c in sel.class_summary():
        assert c.loss_auc == 1.0
        assert c.loss_gap > 0.5
        assert np.isclose(c.loss_gap, c.mean_loss_slow - c.mean_loss_fast)
    sep = sel.separation
    assert sep.auc == 1.0 and sep.loss_gap > 0.5 and sep.num_classes_split == 3
    assert not sep.weak


def test_weak_separation_warns_and_is_flagged():
    # Outputs whose 2-means split is driven by a direction unrelated to the loss: every class
    # splits ~50/50 along the non-target logit, while the loss is noise.
    rng = np.random.default_rng(0)
    n = 300
    targets = np.repeat(np.arange(3), n // 3)
    logits = rng.normal(0.0, 0.05, size=(n, 3)).astype(np.float32)
    side = rng.random(n) < 0.5
    for c in range(3):
        other = (c + 1) % 3
        logits[targets == c, other] += np.where(side[targets == c], 4.0, -4.0)
        logits[targets == c, c] += 4.0 * side[targets == c]  # same loss on both sides
    with pytest.warns(RuntimeWarning, match="weakly separated by loss.*separating epoch"):
        sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    assert sel.separation.weak
    assert sel.separation.auc < WEAK_SEPARATION_AUC
    assert 0.4 < sel.num_slow_learnable / n < 0.6


def test_random_strategy_does_not_warn_but_has_auc_near_half():
    logits, targets, _ = two_blob_logits(n_per_class=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel = find_slow_learnable(
            logits=logits, targets=targets, strategy="random", backend="sklearn"
        )
    assert abs(sel.separation.auc - 0.5) < 0.15


def test_separation_survives_save_and_load(tmp_path):
    logits, targets, _ = two_blob_logits(seed=2)
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    loaded = Selection.load(sel.save(tmp_path / "sel.npz"))
    assert loaded.separation == sel.separation
    assert loaded.class_summary() == sel.class_summary()


def test_unsplit_selection_has_nan_separation_and_counts_as_weak():
    sel = Selection(mask=np.zeros(4, bool), loss=np.ones(4), targets=np.array([0, 0, 1, 1]))
    sep = sel.separation
    assert np.isnan(sep.auc) and sep.num_classes_split == 0 and sep.weak
    assert "no class has examples on both sides" in _format_summary(sel)


def test_inspect_shows_auc_gap_and_overall_line(tmp_path, capsys):
    logits, targets, _ = two_blob_logits()
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    assert main(["inspect", str(sel.save(tmp_path / "sel.npz"))]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("class"))
    assert header.split()[-3:] == ["auc", "gap", "note"]
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [float(r[6]) for r in rows] == [1.0, 1.0, 1.0]
    assert "separation: loss auc 1.000" in out and "check: ok" in out


def test_inspect_flags_weak_separation():
    rng = np.random.default_rng(1)
    sel = Selection(
        mask=rng.random(200) < 0.3,
        loss=rng.random(200).astype(np.float32),
        targets=np.repeat([0, 1], 100),
    )
    summary = _format_summary(sel)
    assert "warning: the slow-learnable clusters are weakly separated" in summary
    assert "check: ok" not in summary


def _noise_logits(seed: int = 0, n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-noise binary logits and random labels (the issue's AUC 0.897 case)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_logits_do_not_pass_as_ok(seed, tmp_path, capsys):
    logits, targets = _noise_logits(seed)
    with pytest.warns(RuntimeWarning, match="phase-1 model looks untrained") as caught:
        sel = find_slow_learnable(logits=logits, targets=targets, backend="torch")
    assert sel.separation.auc > 0.7  # the AUC alone would call this selection fine
    assert any("looks untrained" in m for m in sel.diagnose())
    assert len([w for w in caught if "looks untrained" in str(w.message)]) == 1  # once
    assert main(["inspect", str(sel.save(tmp_path / "noise.npz"))]) == 0
    out = capsys.readouterr().out
    assert "check: ok" not in out and "warning: the phase-1 model looks untrained" in out


def test_chance_level_phase_one_is_flagged():
    # The HF and Accelerate guides' example: loss 0.6932 in every epoch (a binary model at
    # chance), 210 of 400 selected, 205 of them of one class.
    targets = np.repeat([0, 1], [210, 190])
    mask = np.zeros(400, dtype=bool)
    mask[:205] = True  # class 0
    mask[210:215] = True
    loss = np.full(400, 0.6932, dtype=np.float32)
    loss[mask] += 0.001
    found = Selection(mask=mask, loss=loss, targets=targets).diagnose()
    assert any("classifies 0.0% of the training examples correctly, chance is 50.0%" in m
               for m in found)  # fmt: skip
    swallowed = "class 0 holds 205 of the 210 selected examples but 210 of the 400"
    assert any(swallowed in m for m in found)
    assert any("210 of 400 examples (52.5%)" in m for m in found)


def test_one_class_swallowing_the_selection_is_flagged_even_when_loss_is_low():
    targets = np.repeat([0, 1], 200)
    mask = np.zeros(400, dtype=bool)
    mask[:90] = True
    mask[200:205] = True  # 90 of 95 selected from class 0, which holds half the data
    loss = np.where(mask, 1.0, 0.05).astype(np.float32)
    found = Selection(mask=mask, loss=loss, targets=targets).diagnose()
    assert (
        found == [m for m in found if m.startswith("class 0 holds 90 of the 95 selected examples")]
        and len(found) == 1
    )
    balanced = mask.copy()
    balanced[200:260] = True  # 90 and 60: no class swallows the selection
    assert Selection(mask=balanced, loss=loss, targets=targets).diagnose() == []


@pytest.mark.parametrize(("num_selected", "advice"), [(3, "more epochs"), (70, "fewer epochs")])
def test_selected_share_outside_the_papers_range_is_flagged(num_selected, advice):
    targets = np.arange(100) % 2
    mask = np.zeros(100, dtype=bool)
    mask[:num_selected] = True
    loss = np.where(mask, 0.5, 0.01).astype(np.float32)
    found = Selection(mask=mask, loss=loss, targets=targets).diagnose()
    assert len(found) == 1
    assert f"{num_selected} of 100 examples ({num_selected}.0%)" in found[0]
    assert advice in found[0] and "5%-50%" in found[0]


def test_a_learned_selection_in_the_papers_range_is_ok(tmp_path, capsys):
    logits, targets, _ = two_blob_logits(slow_fraction=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    assert sel.diagnose() == []
    assert main(["inspect", str(sel.save(tmp_path / "sel.npz"))]) == 0
    assert "check: ok" in capsys.readouterr().out


def test_plot_selection_checks_its_arguments():
    pytest.importorskip("matplotlib")
    from useful_data.plot import plot_selection

    logits, targets, _ = two_blob_logits(num_classes=3)
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    with pytest.raises(ValueError, match="class_names should name every label"):
        plot_selection(sel, class_names=["a", "b"])
    with pytest.raises(TypeError, match="selection should be a Selection"):
        plot_selection(sel.mask)
    assert len(plot_selection(sel, class_names=["a", "b", "c"]).axes) == 1


def test_to_image_array_rescales_and_handles_rgba_tensors():
    """Min-max to [0, 1]; a (4, H, W) tensor is channels-first."""
    from useful_data.plot import _to_image_array

    out = _to_image_array(torch.arange(12.0).reshape(3, 2, 2) * 10 + 5)
    assert out.min() == 0.0 and out.max() == 1.0
    assert _to_image_array(torch.rand(4, 8, 8)).shape == (8, 8, 3)


def test_plot_grid_puts_slow_examples_left_and_caps_classes():
    """Left half of a grid row shows slow-learnable images; max_classes caps the rows."""
    pytest.importorskip("matplotlib")
    from useful_data.plot import plot_selection

    targets = np.array([0, 0, 1, 1])
    mask = np.array([True, False, True, False])
    sel = Selection(mask=mask, loss=mask.astype(float), targets=targets)
    slow, fast = np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])
    data = [(slow if m else fast, int(t)) for m, t in zip(mask, targets, strict=True)]
    fig = plot_selection(sel, data, num_per_class=1, max_classes=1)
    grid = [ax for ax in fig.axes if ax.get_images()]
    assert len(grid) == 2  # one class, one slow and one fast image
    left = min(grid, key=lambda ax: ax.get_position().x0)
    np.testing.assert_allclose(left.get_images()[0].get_array()[0, :, 0], [0.0, 1.0])


def test_the_grid_png_shows_slow_examples_left_and_fast_ones_right(tmp_path):
    """Issue 26.6: the picture, checked by its pixels. Slow-learnable examples are light
    images, the rest dark ones; the grid's left half must be light, its right half dark
    (a per-image rescaling would turn both into the same grey noise)."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from useful_data.plot import plot_selection

    g = torch.Generator().manual_seed(0)
    targets = np.arange(40) % 2
    mask = np.arange(40) < 16
    data = [
        (torch.full((3, 8, 8), 0.8 if m else 0.2) + 0.01 * torch.rand(3, 8, 8, generator=g), t)
        for m, t in zip(mask, targets.tolist(), strict=True)
    ]
    sel = Selection(mask=mask, loss=np.where(mask, 1.0, 0.1), targets=targets)
    path = tmp_path / "grid.png"
    plot_selection(sel, data, path, num_per_class=3)
    pixels = imread(path)[:, :, :3]
    height, width = pixels.shape[:2]
    assert (height, width) == (500, 640)  # figsize (6.4, 5.0) at 100 dpi: 2 rows + the bars
    # the image cells: pixels whose channels are equal and that are neither white nor black
    cells = (np.ptp(pixels, axis=2) < 0.02) & (pixels.mean(axis=2) > 0.1)
    cells &= pixels.mean(axis=2) < 0.95
    top = cells[: int(0.45 * height)]
    left, right = top[:, : width // 2], top[:, width // 2 :]
    light = pixels[: int(0.45 * height), : width // 2][left].mean()
    dark = pixels[: int(0.45 * height), width // 2 :][right].mean()
    assert left.sum() > 2000 and right.sum() > 2000  # 6 cells per side were drawn
    assert light == pytest.approx(0.8, abs=0.03) and dark == pytest.approx(0.2, abs=0.03)


def test_noise_logits_over_ten_classes_are_flagged_too():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2000, 10, generator=g), torch.randint(0, 10, (2000,), generator=g)
    with pytest.warns(RuntimeWarning, match="looks untrained: its mean loss"):
        sel = find_slow_learnable(logits=logits, targets=targets, backend="torch")
    assert any("close to ln(10)" in m for m in sel.diagnose())
    learned, labels, _ = two_blob_logits(num_classes=10, slow_fraction=0.3)
    assert find_slow_learnable(logits=learned, targets=labels, backend="torch").diagnose() == []


_TWO_RANKS = '''
import json, sys, warnings
import numpy as np
import torch.distributed as dist
from useful_data import find_slow_learnable

dist.init_process_group("gloo")
rng = np.random.default_rng(0)
targets = np.repeat(np.arange(4), 100)
logits = rng.normal(0.0, 1.0, size=(400, 4)).astype(np.float32)
for c in (2, 3):  # classes 2 and 3: 60 slow-learnable examples each
    members = np.flatnonzero(targets == c)
    logits[members, c] += np.where(np.arange(100) < 60, 0.0, 6.0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sel = find_slow_learnable(logits=logits, targets=targets, distributed=True)
found = [str(w.message) for w in caught if w.category is RuntimeWarning]
every = [None] * 2
dist.all_gather_object(every, {"warned": found, "diagnose": sel.diagnose()})
if dist.get_rank() == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(every, f)
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_the_diagnostics_under_ddp_are_those_of_the_global_selection(tmp_path):
    """Issue 26.5: under DDP each rank clusters some classes; the warnings must describe the
    whole selection (the same on every rank, and as one process computes them)."""
    from _two_processes import run_two_processes

    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    ranks = run_two_processes(script, tmp_path / "out.json")
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(4), 100)
    logits = rng.normal(0.0, 1.0, size=(400, 4)).astype(np.float32)
    for c in (2, 3):
        members = np.flatnonzero(targets == c)
        logits[members, c] += np.where(np.arange(100) < 60, 0.0, 6.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = find_slow_learnable(logits=logits, targets=targets).diagnose()
    assert any(" of 400 examples" in m for m in alone)  # counted over all classes
    for rank in ranks:
        assert rank["warned"] == alone and rank["diagnose"] == alone

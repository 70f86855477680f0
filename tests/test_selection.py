from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import two_blob_logits

from useful_data import Selection, find_slow_learnable
from useful_data._resolve import resolve_selection
from useful_data._targets import dataset_fingerprint


@pytest.fixture
def selection() -> Selection:
    logits, targets, _ = two_blob_logits()
    return find_slow_learnable(logits=logits, targets=targets, backend="sklearn")


def test_selection_is_immutable(selection):
    with pytest.raises(ValueError):
        selection.mask[0] = not selection.mask[0]
    with pytest.raises(AttributeError):
        selection.upsample_factor = 3  # type: ignore[misc]


def test_save_load_round_trip(tmp_path, selection):
    path = selection.save(tmp_path / "sel.npz")
    loaded = Selection.load(path)
    np.testing.assert_array_equal(loaded.mask, selection.mask)
    np.testing.assert_array_equal(loaded.loss, selection.loss)
    np.testing.assert_array_equal(loaded.targets, selection.targets)
    assert loaded.params == selection.params
    assert loaded.unsplit == selection.unsplit
    assert loaded.upsample_factor == selection.upsample_factor
    assert loaded.fingerprint == selection.fingerprint
    assert [c for c in loaded.class_summary()] == [c for c in selection.class_summary()]


def test_save_keeps_exact_path_and_leaves_no_temp_files(tmp_path, selection):
    selection.save(tmp_path / "selection.useful")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["selection.useful"]


def test_file_is_not_a_pickle(tmp_path, selection):
    path = selection.save(tmp_path / "sel.npz")
    with np.load(path, allow_pickle=False) as data:  # loads without pickle
        meta = json.loads(data["meta"].tobytes())
    assert meta["format"] == "useful-data/selection" and meta["format_version"] == 1


def test_unsplit_classes_survive_round_trip(tmp_path):
    sel = Selection(
        mask=np.array([True, False, False]),
        loss=np.array([1.0, 0.5, 0.1]),
        targets=np.array([0, 0, 1]),
        unsplit={1: "single example"},
    )
    assert Selection.load(sel.save(tmp_path / "s.npz")).unsplit == {1: "single example"}


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Selection.load(tmp_path / "nope.npz")


def test_load_unreadable_file(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a readable useful-data selection"):
        Selection.load(path)


def _rewrite_meta(path, **changes):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta.update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_load_wrong_version(tmp_path, selection):
    path = selection.save(tmp_path / "sel.npz")
    _rewrite_meta(path, format_version=99)
    with pytest.raises(ValueError, match="format_version=99"):
        Selection.load(path)


def test_load_other_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        Selection.load(path)


def test_load_detects_corruption(tmp_path, selection):
    path = selection.save(tmp_path / "sel.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["targets"] = arrays["targets"][::-1].copy()
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="corrupt"):
        Selection.load(path)
    assert zipfile.is_zipfile(path)


def test_fingerprint_changes_with_labels_or_order():
    a = dataset_fingerprint(np.array([0, 1, 2]))
    assert a == dataset_fingerprint(np.array([0, 1, 2], dtype=np.int32))
    assert a != dataset_fingerprint(np.array([0, 2, 1]))
    assert a != dataset_fingerprint(np.array([0, 1, 2, 2]))


def test_class_summary_counts(selection):
    summary = selection.class_summary()
    assert sum(c.num_examples for c in summary) == selection.num_examples
    assert sum(c.num_slow_learnable for c in summary) == selection.num_slow_learnable
    assert selection.upsampled_size == selection.num_examples + selection.num_slow_learnable
    assert "num_slow_learnable=54" in repr(selection)


def test_constructor_validates_shapes():
    with pytest.raises(ValueError, match="mask"):
        Selection(mask=np.array([1, 0]), loss=np.zeros(2), targets=np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="loss"):
        Selection(mask=np.array([True]), loss=np.zeros(2), targets=np.zeros(1, dtype=int))


@pytest.mark.parametrize(
    ("value", "num_examples", "match"),
    [
        ([0, 5], 5, r"\[0, 5\).*index 5"),
        ([-1], 5, "index -1"),
        ([1, 1], 5, "appears 2 times"),
        (np.array([True, False]), 3, r"shape \(3,\)"),
        ([1, 2], None, "num_examples"),
    ],
)
def test_resolve_selection_errors(value, num_examples, match):
    with pytest.raises(ValueError, match=match):
        resolve_selection(value, num_examples)


def test_resolve_selection_size_mismatch(selection):
    with pytest.raises(ValueError, match="computed on 180 examples"):
        resolve_selection(selection, 100)


def test_resolve_selection_type_error():
    with pytest.raises(TypeError, match="selection"):
        resolve_selection(3.5, 4)  # type: ignore[arg-type]


def test_save_names_a_missing_folder_or_a_folder_given_as_the_file(tmp_path, selection):
    with pytest.raises(
        FileNotFoundError, match=r"path should be in an existing folder, but '.*missing'"
    ):
        selection.save(tmp_path / "missing" / "sel.npz")
    with pytest.raises(IsADirectoryError, match=r"path should be a file path, but .* is a folder"):
        selection.save(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_save_load_keeps_a_non_default_upsample_factor(tmp_path):
    sel = Selection(
        mask=np.array([True, False]), loss=np.ones(2), targets=np.zeros(2, int), upsample_factor=3
    )
    assert Selection.load(sel.save(tmp_path / "s.npz")).upsample_factor == 3


def test_separation_weights_classes_by_their_examples():
    """Class 0 (8 examples): AUC 1, gap 1; class 1 (2 examples): AUC 0, gap -1."""
    sel = Selection(
        mask=np.array([True] * 4 + [False] * 4 + [True, False]),
        loss=np.array([2.0] * 4 + [1.0] * 4 + [0.0, 1.0], dtype=np.float32),
        targets=np.array([0] * 8 + [1] * 2),
    )
    sep = sel.separation
    assert sep.auc == pytest.approx((8 * 1.0 + 2 * 0.0) / 10)
    assert sep.loss_gap == pytest.approx((8 * 1.0 + 2 * -1.0) / 10)


def _cost_selection(n: int, slow: int, k: int) -> Selection:
    return Selection(
        mask=np.arange(n) < slow,
        loss=np.zeros(n, dtype=np.float32),
        targets=np.zeros(n, dtype=np.int64),
        upsample_factor=k,
    )


def test_relative_cost_is_phase1_share_plus_phase2_epoch_over_n():
    sel = _cost_selection(1000, 150, 3)  # upsampled: 1000 + 2 * 150 = 1300 per epoch
    cost = sel.relative_cost(separating_epoch=8, total_epochs=200)
    assert cost == pytest.approx(8 / 200 + 1300 / 1000)
    equal = sel.relative_cost(separating_epoch=8, total_epochs=200, epoch_size=1000)
    assert equal == pytest.approx(8 / 200 + 1.0)
    assert sel.relative_cost(separating_epoch=0, total_epochs=1, epoch_size=500) == 0.5
    # counting phase 1 in steps works the same, as long as T is in steps too
    assert sel.relative_cost(separating_epoch=100, total_epochs=1000) == pytest.approx(1.4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"separating_epoch": 201, "total_epochs": 200}, ValueError, r"\[0, total_epochs=200\]"),
        ({"separating_epoch": -1, "total_epochs": 200}, ValueError, "separating_epoch=-1"),
        ({"separating_epoch": 1, "total_epochs": 0}, ValueError, "total_epochs=0"),
        ({"separating_epoch": 1, "total_epochs": 9, "epoch_size": 0}, ValueError, "epoch_size"),
        ({"separating_epoch": 1.5, "total_epochs": 9}, TypeError, "separating_epoch"),
    ],
)
def test_relative_cost_rejects_bad_numbers(kwargs, error, match):
    with pytest.raises(error, match=match):
        _cost_selection(10, 2, 2).relative_cost(**kwargs)


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("selection", "WEAK_SEPARATION_AUC", "_WEAK_SEPARATION_AUC"),
        ("selection", "dataset_fingerprint", "useful_data._targets:dataset_fingerprint"),
        ("selection", "loss_auc", "_loss_auc"),
        ("selection", "resolve_selection", "useful_data._resolve:resolve_selection"),
        ("strategies", "STRATEGIES", "useful_data._baselines:STRATEGIES"),
        ("strategies", "select_loss_quantile", "useful_data._baselines:select_loss_quantile"),
        ("strategies", "select_misclassified", "useful_data._baselines:select_misclassified"),
        ("strategies", "select_random_like", "useful_data._baselines:select_random_like"),
        ("timm", "INTERPOLATIONS", "_INTERPOLATIONS"),
        ("timm", "check_model_name", "_check_model_name"),
        ("timm", "check_split", "_check_split"),
        ("timm", "checkpoint_data_config", "_checkpoint_data_config"),
        ("timm", "create_eval_dataset", "_create_eval_dataset"),
        ("timm", "create_timm_model", "_create_timm_model"),
        ("timm", "extract_state_dict", "_extract_state_dict"),
        ("plot", "to_image_array", "_to_image_array"),
        ("cli", "build_parser", "_build_parser"),
        ("cli", "format_summary", "_format_summary"),
        ("cli", "format_cost", "_format_cost"),
    ],
)
def test_names_made_private_in_1_0_still_import_with_a_warning(module, old, new):
    import importlib

    mod = importlib.import_module(f"useful_data.{module}")
    assert old not in mod.__all__
    target = new if ":" in new else f"useful_data.{module}:{new}"
    with pytest.warns(DeprecationWarning, match=target):
        found = getattr(mod, old)
    where, _, name = target.partition(":")
    assert found is getattr(importlib.import_module(where), name)

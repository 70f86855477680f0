"""Issue 16 (reliability round 2): each defect class, tested at every entry point it reaches.

Sections follow the issue's items: 1 the targets= workflow and the fingerprint, 2 saved
files' permissions and what a save does over a link, a FIFO or a read-only file, 3 malformed
selection files, 4 the bound on upsample_factor, 5 the command line's flags, 6 the same data
check everywhere, 8 a read-only Selection, 9 inputs refused, 10 messages that name the
argument, the value and what is accepted. (Item 7, stale .targets, is in test_dataset.py.)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import re
import stat
import zipfile

import numpy as np
import pytest
import torch
from conftest import make_image_folder, two_blob_logits
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from useful_data import Selection, UpsampleSampler, USEFULDataset, find_slow_learnable
from useful_data._targets import dataset_fingerprint
from useful_data.cli import main
from useful_data.collect import collect_outputs
from useful_data.distributed import save_on_rank0

# the models here are untrained: how well their selections separate is beside the point
pytestmark = pytest.mark.filterwarnings("ignore:the slow-learnable clusters are weakly separated")


def _selection(n: int = 6, **kwargs) -> Selection:
    arrays = {"mask": np.arange(n) % 3 == 0, "loss": np.ones(n), "targets": np.arange(n) % 2}
    return Selection(**{**arrays, **kwargs})


def _one_line_error(capsys, command: str) -> str:
    """The captured stderr, checked to be one ``useful-data COMMAND: error:`` line."""
    err = capsys.readouterr().err
    assert err.startswith(f"useful-data {command}: error: "), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- 1. the targets= workflow (a target_transform) and what the fingerprint covers --------


class Relabelled(Dataset):
    """A torchvision-like dataset with a target_transform: items carry other labels than the
    raw ``.targets`` (here: classes 0-3 merged into 0-1)."""

    def __init__(self, features: torch.Tensor, raw: np.ndarray) -> None:
        self.features, self.targets = features, list(raw.tolist())
        self.target_transform = lambda y: y // 2

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.features[i], self.target_transform(self.targets[i])


def _relabelled(seed: int = 0) -> Relabelled:
    g = torch.Generator().manual_seed(seed)
    raw = np.arange(40) % 4
    features = torch.randn(40, 2, generator=g) + torch.from_numpy(raw // 2).float()[:, None] * 3
    return Relabelled(features[:, :, None], raw)  # (2, 1) "images", for plot_selection too


def _model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(2, 2))


def test_the_targets_workflow_the_error_recommends_works_end_to_end(tmp_path):
    """find_slow_learnable says "pass targets=" for a target_transform; once the user does,
    USEFULDataset, UpsampleSampler, plot_selection and a saved copy all accept the dataset."""
    ds = _relabelled()
    model = _model()
    with pytest.raises(ValueError, match=r"target_transform. pass targets="):
        find_slow_learnable(model, ds, backend="sklearn", progress=False)
    labels = np.array([ds[i][1] for i in range(len(ds))])
    sel = find_slow_learnable(model, ds, targets=labels, backend="sklearn", progress=False)
    assert sel.data_fingerprint == dataset_fingerprint(np.asarray(ds.targets))
    loaded = Selection.load(sel.save(tmp_path / "s.npz"))
    assert loaded.data_fingerprint == sel.data_fingerprint
    for s in (sel, loaded, tmp_path / "s.npz"):
        wrapped = USEFULDataset(ds, s)
        assert len(wrapped) == sel.upsampled_size
        assert sorted(UpsampleSampler(s, len(ds))) == sorted(wrapped.index_map.tolist())
    pytest.importorskip("matplotlib")
    from useful_data.plot import plot_selection

    plot_selection(sel, ds, num_per_class=1, max_classes=1)


def test_the_targets_workflow_works_with_an_eval_view_too():
    """The eval view exposes the same raw .targets as the training set: it is checked against
    those, not against the transformed labels passed as targets=."""
    ds = _relabelled()
    labels = np.array([ds[i][1] for i in range(len(ds))])
    view = copy.copy(ds)
    sel = find_slow_learnable(_model(), ds, eval_dataset=view, targets=labels, backend="sklearn",
                              progress=False)  # fmt: skip
    assert len(USEFULDataset(ds, sel)) == sel.upsampled_size
    view.targets = view.targets[::-1]  # another order is still caught
    with pytest.raises(ValueError, match=r"eval_dataset\.targets should equal"):
        find_slow_learnable(_model(), ds, eval_dataset=view, targets=labels, progress=False)


def test_the_fingerprint_still_refuses_another_order_or_split():

    ds = _relabelled()
    labels = np.array([ds[i][1] for i in range(len(ds))])
    sel = find_slow_learnable(_model(), ds, targets=labels, backend="sklearn",
                              progress=False)  # fmt: skip
    reordered = _relabelled()
    reordered.targets = reordered.targets[1:] + reordered.targets[:1]
    other_split = _relabelled()
    other_split.targets = list((np.arange(40) * 7 % 4).tolist())
    for other in (reordered, other_split):
        with pytest.raises(ValueError, match="fingerprint mismatch"):
            USEFULDataset(other, sel)
        with pytest.raises(ValueError, match="fingerprint mismatch"):
            sel.check_fits(other)


def test_logits_with_targets_and_dataset_record_the_datasets_labels():
    ds = _relabelled()
    labels = np.array([ds[i][1] for i in range(len(ds))])
    logits = torch.nn.functional.one_hot(torch.from_numpy(labels), 2).float() * 3
    logits += torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    sel = find_slow_learnable(logits=logits, targets=labels, dataset=ds, backend="sklearn")
    assert len(USEFULDataset(ds, sel)) == sel.upsampled_size
    alone = find_slow_learnable(logits=logits, targets=labels, backend="sklearn")
    assert alone.data_fingerprint is None  # nothing known of the dataset: refused, and said
    with pytest.raises(ValueError, match="only if find_slow_learnable is given the dataset"):
        USEFULDataset(ds, alone)
    with pytest.raises(ValueError, match="computed on 40 examples, but the dataset has 39"):
        find_slow_learnable(logits=logits, targets=labels, dataset=_shorter(ds))


def _shorter(ds: Relabelled) -> Relabelled:
    short = copy.copy(ds)
    short.targets = ds.targets[:-1]
    return short


def test_a_dataset_whose_labels_are_the_selections_records_nothing():
    logits, targets, _ = two_blob_logits()
    ds = TensorDataset(torch.zeros(len(targets)), torch.from_numpy(targets))
    sel = find_slow_learnable(logits=logits, targets=targets, dataset=ds, backend="sklearn")
    assert sel.data_fingerprint is None


def test_a_data_fingerprint_of_another_size_is_refused():
    with pytest.raises(ValueError, match="data_fingerprint should describe 6 examples"):
        _selection(data_fingerprint=dataset_fingerprint(np.zeros(5, dtype=int)))
    with pytest.raises(ValueError, match="data_fingerprint should be a fingerprint"):
        _selection(data_fingerprint={"num_examples": 6})


# --- 2. saved files: permissions, links, FIFOs, read-only files ----------------------------


@pytest.fixture
def umask():
    """Set the process umask for a test; restored afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_saved_files_get_the_umasks_permissions(umask, tmp_path, mask):
    umask(mask)
    expected = 0o666 & ~mask
    assert _mode(_selection().save(tmp_path / "a.npz")) == expected
    assert _mode(save_on_rank0(_selection(), tmp_path / "b.npz")) == expected


def test_useful_data_select_writes_with_the_umasks_permissions(
    umask, tmp_path, monkeypatch, capsys
):
    import useful_data.slow_learnable as slow_learnable

    umask(0o027)
    torch.save({"state_dict": {}}, tmp_path / "c.pth.tar")
    monkeypatch.setattr("useful_data.timm._create_timm_model", lambda *a, **k: nn.Linear(1, 2))
    monkeypatch.setattr(
        "useful_data.timm._create_eval_dataset",
        lambda *a, **k: TensorDataset(torch.zeros(6, 1), torch.arange(6) % 2),
    )
    monkeypatch.setattr(slow_learnable, "find_slow_learnable", lambda *a, **k: _selection())
    out = tmp_path / "s.npz"
    argv = ["select", "--model", "resnet10t", "--checkpoint", str(tmp_path / "c.pth.tar"),
            "--num-classes", "2", "--data-dir", str(tmp_path), "--device", "cpu",
            "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert _mode(out) == 0o640


def test_saving_over_a_file_keeps_its_permissions(umask, tmp_path):
    path = _selection().save(tmp_path / "s.npz")
    os.chmod(path, 0o604)
    _selection(n=9).save(path)
    assert _mode(path) == 0o604 and Selection.load(path).num_examples == 9


def test_saving_through_a_link_replaces_the_file_it_points_to(tmp_path):
    real = _selection().save(tmp_path / "real.npz")
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    assert _selection(n=9).save(link) == link
    assert link.is_symlink() and Selection.load(real).num_examples == 9
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to(tmp_path / "new.npz")
    _selection().save(dangling)
    assert dangling.is_symlink() and Selection.load(tmp_path / "new.npz").num_examples == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dangling.npz", "link.npz", "new.npz", "real.npz"
    ]  # fmt: skip  # no temporary file left behind


def test_saving_to_a_fifo_or_a_read_only_file_is_refused(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a FIFO"):
        _selection().save(fifo)
    read_only = _selection().save(tmp_path / "ro.npz")
    os.chmod(read_only, 0o444)
    with pytest.raises(PermissionError, match="is read-only"):
        _selection(n=9).save(read_only)
    assert Selection.load(read_only).num_examples == 6  # untouched
    argv = ["select", "--model", "resnet10t", "--checkpoint", "c", "--num-classes", "2",
            "--data-dir", str(tmp_path), "--device", "cpu", "-o", str(fifo)]  # fmt: skip
    assert main(argv) == 1
    assert "is a FIFO" in _one_line_error(capsys, "select")


# --- 3. malformed selection files ----------------------------------------------------------


def _write(path, meta_text: str | bytes, **extra: np.ndarray):
    """A selection file of 6 examples with the given metadata (and extra members)."""
    sel = _selection()
    raw = meta_text.encode() if isinstance(meta_text, str) else meta_text
    np.savez(path, mask=sel.mask, loss=sel.loss, targets=sel.targets,
             meta=np.frombuffer(raw, dtype=np.uint8), **extra)  # fmt: skip
    return path


def _meta(**changes) -> str:
    meta = {
        "format": "useful-data/selection",
        "format_version": 1,
        "upsample_factor": 2,
        "params": {},
        "unsplit": {},
        "fingerprint": _selection().fingerprint,
    }
    meta.update(changes)
    return json.dumps(meta)


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        (_meta(upsample_factor="2"), "upsample_factor"),
        (_meta(upsample_factor=2.5), "upsample_factor"),
        (_meta(upsample_factor=True), "upsample_factor"),
        (_meta(upsample_factor=0), "upsample_factor"),
        (_meta(upsample_factor=None), "upsample_factor"),
        (_meta(params=[1, 2]), "params"),
        (_meta(params=json.loads("[" * 40 + "]" * 40)), "params"),
        (_meta(params={"a": json.loads("[" * 40 + "]" * 40)}), "params"),
        (_meta(unsplit=["single example"]), "unsplit"),
        (_meta(unsplit={"a": "single example"}), "unsplit"),
        (_meta(unsplit={"1": 5}), "unsplit"),
        (_meta(fingerprint=[6, "x"]), "fingerprint"),
        (_meta(data_fingerprint="x"), "data_fingerprint"),
        ("[" * 100_000 + "]" * 100_000, "metadata .nested too deeply"),
        (_meta(format_version="1"), "format_version"),
    ],
)  # fmt: skip
def test_a_malformed_selection_file_is_a_value_error_naming_the_field(
    tmp_path, capsys, meta, field
):
    path = _write(tmp_path / "bad.npz", meta)
    with pytest.raises(ValueError, match=field):
        Selection.load(path)
    assert main(["inspect", str(path)]) == 1
    assert field.split()[0] in _one_line_error(capsys, "inspect")


def test_only_the_members_a_selection_needs_are_read(tmp_path):
    """An extra member is never decompressed: a corrupt one does not even fail the load."""
    path = _write(tmp_path / "s.npz", _meta())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("junk.npy", b"\x93NUMPY\x01\x00\x10\x00not a header at all")
    assert Selection.load(path).num_examples == 6


def test_oversized_metadata_is_refused_unread(tmp_path):
    path = tmp_path / "big.npz"
    sel = _selection()
    np.savez_compressed(path, mask=sel.mask, loss=sel.loss, targets=sel.targets,
                        meta=np.zeros(2**24 + 1, dtype=np.uint8))  # fmt: skip
    with pytest.raises(ValueError, match=r"its metadata is \d+ bytes, more than the 16777216"):
        Selection.load(path)


def test_a_folder_is_not_reported_as_missing(tmp_path, capsys):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        Selection.load(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 1
    assert "is a folder" in _one_line_error(capsys, "inspect")


# --- 4. upsample_factor: refused before allocating what cannot fit; O(|S|) otherwise ------


def test_a_huge_factor_with_nothing_selected_costs_nothing():
    data = TensorDataset(torch.zeros(5))
    nothing = np.zeros(5, dtype=bool)
    assert len(USEFULDataset(data, nothing, upsample_factor=10**12)) == 5
    assert len(UpsampleSampler(nothing, upsample_factor=10**12, num_replicas=1, rank=0)) == 5


def test_a_factor_that_cannot_be_materialised_is_refused_before_allocating(tmp_path):
    data = TensorDataset(torch.zeros(6), torch.arange(6) % 2)
    sel = _selection(upsample_factor=10**12)  # a Selection only records the factor
    path = sel.save(tmp_path / "s.npz")
    for make in (
        lambda: USEFULDataset(data, [1], upsample_factor=10**12),
        lambda: USEFULDataset(data, sel),
        lambda: USEFULDataset(data, path),
        lambda: UpsampleSampler([1], 6, upsample_factor=10**12, num_replicas=1, rank=0),
        lambda: UpsampleSampler(path, num_replicas=1, rank=0),
    ):
        with pytest.raises(ValueError, match=r"upsample_factor=1000000000000 .* exceeds this"):
            make()


# --- 5. the command line: every flag checked up front, every error one line ---------------


def _select_argv(tmp_path, *extra):
    return ["select", "--model", "resnet10t", "--checkpoint", str(tmp_path / "c.pth.tar"),
            "--num-classes", "3", "--data-dir", str(tmp_path), "--device", "cpu",
            "-o", str(tmp_path / "s.npz"), *extra]  # fmt: skip


@pytest.fixture
def nothing_loaded(monkeypatch, tmp_path):
    """A weightless checkpoint, and model/dataset builders that fail the test if called."""
    torch.save({"state_dict": {}}, tmp_path / "c.pth.tar")

    def loaded(*args, **kwargs):
        raise AssertionError("the model or the data was loaded before the flags were checked")

    monkeypatch.setattr("useful_data.timm._create_timm_model", loaded)
    monkeypatch.setattr("useful_data.timm._create_eval_dataset", loaded)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--interpolation", "bogus"], "argument --interpolation: invalid choice: 'bogus'"),
        (["--crop-pct", "-1"], r"argument --crop-pct: should be a number in \(0, 1\]"),
        (["--crop-pct", "nan"], "argument --crop-pct: should be a finite number"),
        (["--crop-pct", "1.5"], "argument --crop-pct: should be a number in"),
        (["--mean", "0.5", "inf", "0.5"], "argument --mean: should be a finite number"),
        (["--std", "0.2", "0", "0.2"], r"argument --std: should be a number in \(0, inf\]"),
        (["--upsample-factor", "x"], "argument --upsample-factor: should be an integer"),
    ],
)
def test_select_flags_are_refused_at_parse_time(tmp_path, capsys, nothing_loaded, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(_select_argv(tmp_path, *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("useful-data select: error: ") and len(err.splitlines()) == 1, err
    assert message in err or re.search(message, err), err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "val"], "--split: split='val' names no subfolder"),
        (["--input-size", "1", "32", "32"], "--input-size C H W should have C=3"),
        (["--mean", "0.5", "0.5"], r"--mean should have one value per input channel \(3\)"),
        (["--std", "0.5"], "--std should have one value per input channel"),
        (["--class-map", "no-such-file.txt"], "--class-map should be a file"),
        (["--model", "resnet_bogus"], "--model: model='resnet_bogus' is not a timm model name"),
    ],
)
def test_select_flags_are_checked_before_loading(tmp_path, capsys, nothing_loaded, extra, message):
    assert main(_select_argv(tmp_path, *extra)) == 1
    assert re.search(message, _one_line_error(capsys, "select"))


def test_input_channels_come_from_the_training_run(tmp_path, capsys, monkeypatch):
    """A run trained with --in-chans 1: --input-size must say C=1 and the model gets 1 channel
    (it was built with timm's default 3, so its checkpoint could not load)."""
    import argparse

    run = argparse.Namespace(img_size=32, in_chans=1, input_size=None, mean=None, std=None,
                             crop_pct=None, interpolation="")  # fmt: skip
    torch.save({"state_dict": {}, "args": run}, tmp_path / "c.pth.tar")
    built = {}

    def model(*args, **kwargs):
        built.update(kwargs)
        raise SystemExit(0)  # stop once the model would be built

    monkeypatch.setattr("useful_data.timm._create_timm_model", model)
    assert main(_select_argv(tmp_path, "--input-size", "3", "32", "32")) == 1
    assert "--input-size C H W should have C=1" in _one_line_error(capsys, "select")
    with pytest.raises(SystemExit):
        main(_select_argv(tmp_path, "--mean", "0.5"))
    assert built["in_chans"] == 1


def test_a_training_split_falls_back_to_the_folder_and_an_existing_split_is_used(tmp_path):
    from useful_data.timm import _check_split as check_split

    check_split("", tmp_path, "train")  # timm's fallback, as its train.py reads the folder
    (tmp_path / "validation").mkdir()
    check_split("", tmp_path, "val")  # a synonym exists
    check_split("torch/cifar10", tmp_path, "anything")  # not an image folder: not checked
    with pytest.raises(ValueError, match="split='test' names no subfolder"):
        check_split("", tmp_path, "test")


def test_select_backend_cuml_without_cuml_fails_before_loading(tmp_path, capsys, nothing_loaded):
    try:
        import cuml  # noqa: F401

        pytest.skip("cuML is installed")
    except ImportError:
        pass
    assert main(_select_argv(tmp_path, "--backend", "cuml")) == 1
    assert "cuML" in _one_line_error(capsys, "select")


def test_any_unexpected_error_is_one_line(tmp_path, capsys, monkeypatch):
    torch.save({"state_dict": {}}, tmp_path / "c.pth.tar")

    def broken(*args, **kwargs):
        raise KeyError("bogus")

    monkeypatch.setattr("useful_data.timm._create_timm_model", broken)
    assert main(_select_argv(tmp_path)) == 1
    assert "KeyError: no such key 'bogus'" in _one_line_error(capsys, "select")


def test_inspect_checks_its_split_too(tmp_path, capsys):
    path = _selection().save(tmp_path / "s.npz")
    argv = ["inspect", str(path), "--plot", str(tmp_path / "p.png"), "--data-dir", str(tmp_path),
            "--split", "val"]  # fmt: skip
    assert main(argv) == 1
    assert "--split: split='val'" in _one_line_error(capsys, "inspect")
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(path), "--num-per-class", "0"])
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.splitlines()) == 1


# --- 6. the same check wherever a selection meets data -------------------------------------


def test_inspect_plot_refuses_a_selection_of_another_dataset_of_the_same_length(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("timm")
    make_image_folder(tmp_path / "images", num_classes=2, per_class=3, size=8)
    right = Selection(mask=np.arange(6) % 3 == 0, loss=np.ones(6),
                      targets=np.repeat(np.arange(2), 3))  # fmt: skip
    wrong = Selection(mask=right.mask, loss=right.loss, targets=np.arange(6) % 2)  # same length
    for sel, code in ((right, 0), (wrong, 1)):
        path = sel.save(tmp_path / "s.npz")
        argv = ["inspect", str(path), "--plot", str(tmp_path / "p.png"),
                "--data-dir", str(tmp_path / "images"), "--num-per-class", "1"]  # fmt: skip
        assert main(argv) == code
    assert "fingerprint mismatch" in _one_line_error(capsys, "inspect")
    from useful_data.plot import plot_selection

    with pytest.raises(ValueError, match="fingerprint mismatch"):
        plot_selection(wrong, TensorDataset(torch.zeros(6), torch.tensor(right.targets)))


# --- 8. a Selection is read-only -----------------------------------------------------------


def test_params_and_unsplit_are_read_only_and_save_still_works(tmp_path):
    sel = _selection(params={"strategy": "kmeans", "nested": {"a": [1, 2]}},
                     unsplit={1: "single example"})  # fmt: skip
    for mutate in (
        lambda: sel.params.__setitem__("x", object()),
        lambda: sel.params.update(x=1),
        lambda: sel.params.pop("strategy"),
        lambda: sel.params["nested"].__setitem__("a", 3),
        lambda: sel.unsplit.__setitem__(0, "x"),
        lambda: sel.unsplit.clear(),
    ):
        with pytest.raises(TypeError, match="immutable"):
            mutate()
    assert sel.params == {"strategy": "kmeans", "nested": {"a": (1, 2)}}
    loaded = Selection.load(sel.save(tmp_path / "s.npz"))
    assert loaded.params == sel.params and loaded.unsplit == {1: "single example"}
    copied = dict(sel.params)
    copied["x"] = 1  # a copy is an ordinary dict
    for clone in (pickle.loads(pickle.dumps(sel)), copy.deepcopy(sel), dataclasses.replace(sel)):
        assert clone.params == sel.params and clone.unsplit == sel.unsplit
    assert "params={'strategy': 'kmeans'" in repr(sel)


# --- 9. inputs that are refused --------------------------------------------------------------


@pytest.mark.parametrize(
    "logits",
    [
        np.ones((4, 2), dtype=np.complex64),
        torch.ones(4, 2, dtype=torch.complex64),
        np.ones((4, 2), dtype=bool),
        torch.ones(4, 2, dtype=torch.bool),
    ],
    ids=["complex", "complex-tensor", "bool", "bool-tensor"],
)
def test_complex_or_bool_logits_are_refused(logits):
    with pytest.raises(TypeError, match=r"logits should hold real numbers .* but got dtype"):
        find_slow_learnable(logits=logits, targets=np.array([0, 1, 0, 1]), backend="sklearn")


class _Outputs(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(x), 2, dtype=self.dtype)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool])
def test_a_model_returning_complex_or_bool_outputs_is_refused(dtype):
    data = TensorDataset(torch.zeros(4, 1), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="the model's outputs should hold real numbers"):
        collect_outputs(_Outputs(dtype), data, progress=False)


def test_bool_labels_are_refused_on_both_paths():
    """One rule: bools are not class labels, whether given as targets= or in the items."""
    logits, _, _ = two_blob_logits(n_per_class=4, num_classes=2)
    flags = np.arange(8) % 2 == 0
    with pytest.raises(ValueError, match=r"targets should be integer class labels, but got .*bool"):
        find_slow_learnable(logits=logits, targets=flags, backend="sklearn")
    items = TensorDataset(torch.from_numpy(logits), torch.from_numpy(flags))
    with pytest.raises(ValueError, match="should be integer class labels, but got dtype bool"):
        find_slow_learnable(nn.Identity(), items, backend="sklearn", progress=False)


# --- 10. messages that name the argument, the value and what is accepted -------------------


@pytest.mark.parametrize(
    ("targets", "shown"),
    [
        (np.array([0.0, 1.0, np.inf, 1.0]), "inf"),
        (np.array([0.0, 1.0, 1e20, 1.0]), "1e+20"),
        (np.array([0, 1, 2**64 - 1, 1], dtype=np.uint64), "18446744073709551615"),
        (np.array([0.0, 1.0, -np.inf, 1.0]), "-inf"),
        (np.array([0, 1, 7, 1]), "7"),
    ],
)
def test_bad_labels_are_reported_as_given(targets, shown):
    logits = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    with pytest.raises(ValueError, match=re.escape(f"label {shown} at index 2")):
        find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    items = TensorDataset(torch.from_numpy(logits), torch.from_numpy(targets))
    with pytest.raises(ValueError, match=re.escape(f"label {shown} at index 2")):
        find_slow_learnable(nn.Identity(), items, backend="sklearn", progress=False)


def test_logits_beyond_float32_are_not_called_nan():
    logits = np.zeros((4, 2))
    logits[2, 1] = 1e39
    with pytest.raises(ValueError, match=r"logits should fit in float32 .* row 2 holds 1e\+39"):
        find_slow_learnable(logits=logits, targets=np.array([0, 1, 0, 1]), backend="sklearn")


def test_ragged_logits_name_the_argument():
    with pytest.raises(ValueError, match="logits should be a rectangular array"):
        find_slow_learnable(logits=[[0.0, 1.0], [1.0]], targets=[0, 1], backend="sklearn")


class _Strings(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.zeros(2), ["cat", "dog"][i % 2]


class _IndexFirst(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return i, torch.zeros(2), i % 2


def test_item_labels_that_are_not_class_indices_are_explained():
    with pytest.raises(TypeError, match=r"got strings .e.g. 'cat'.; map class names to indices"):
        find_slow_learnable(nn.Linear(2, 2), _Strings(), backend="sklearn", progress=False)
    with pytest.raises(TypeError, match=r"second element of each item.*\(index, input, target\)"):
        find_slow_learnable(nn.Linear(2, 2), _IndexFirst(), backend="sklearn", progress=False)


class _Stream(IterableDataset):
    def __iter__(self):
        yield from ((torch.zeros(2), 0) for _ in range(4))


def test_indices_beyond_int64_are_reported_as_given():
    huge = np.array([2**64 - 1], dtype=np.uint64)
    for make in (lambda: USEFULDataset(TensorDataset(torch.zeros(4)), huge),
                 lambda: UpsampleSampler(huge, 4, num_replicas=1, rank=0)):  # fmt: skip
        with pytest.raises(ValueError, match="but got index 18446744073709551615"):
            make()


def test_a_dataset_without_length_is_named():
    for call in (
        lambda: collect_outputs(nn.Linear(2, 2), _Stream(), progress=False),
        lambda: USEFULDataset(_Stream(), [0]),
    ):
        with pytest.raises(TypeError, match=r"dataset should be a map-style dataset .* _Stream"):
            call()


def test_a_stream_without_example_keys_is_named():
    """find_slow_learnable takes a stream (issue #17), addressed by example key: items
    without one get an error naming the key and what to pass instead (not "has no len()")."""
    with pytest.raises(ValueError, match=r"example key in the field '__key__'.* pass key="):
        find_slow_learnable(nn.Linear(2, 2), _Stream(), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"unsplit": {"a": "single example"}}, ValueError, "unsplit should map integer"),
        ({"unsplit": {1.5: "single example"}}, ValueError, "unsplit should map integer"),
        ({"unsplit": {1: 2}}, TypeError, r"unsplit\[1\]=2"),
        ({"unsplit": [1]}, TypeError, "unsplit should be a mapping"),
        ({"params": {1: "x"}}, TypeError, "params should have string keys .* key 1"),
        ({"params": {"f": object()}}, TypeError, r"params\['f'\] should be JSON data"),
        ({"params": ["seed", 0]}, TypeError, "params should be a mapping"),
        ({"loss": np.array(["a"] * 6)}, ValueError, "loss should hold real numbers"),
        (
            {"targets": np.array([0, 1, 2**64 - 1, 0, 1, 0], dtype=np.uint64)},
            ValueError,
            "within int64, but got label 18446744073709551615",
        ),
    ],
)
def test_bad_selection_metadata_in_the_constructor_is_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        _selection(**kwargs)


def test_selection_params_accept_numpy_scalars_and_string_label_keys():
    sel = _selection(params={"seed": np.int64(3), "tol": np.float32(0.5)}, unsplit={"1": "x"})
    assert sel.params == {"seed": 3, "tol": 0.5} and type(sel.params["seed"]) is int
    assert sel.unsplit == {1: "x"}


# --- Issue 25 (round 3): bounded loads, keys stored exactly, orphan temporaries, ----------
# --- non-finite losses, special files --------------------------------------------------


def _bomb(path, *, declared: int, meta_examples: int, members: tuple[str, ...] = ("mask",)):
    """A selection file whose ``members`` are deflated runs of zeros that declare
    ``declared`` entries of their dtype, the other members as a real 6-example selection."""
    sel = _selection()
    fp = {**sel.fingerprint, "num_examples": meta_examples}
    meta = np.frombuffer(_meta(fingerprint=fp).encode(), dtype=np.uint8)
    arrays = {"mask": sel.mask, "loss": sel.loss, "targets": sel.targets, "meta": meta}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            if name not in members:
                with archive.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, array)
                continue
            info = zipfile.ZipInfo(f"{name}.npy")
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as f:
                header = {"descr": np.lib.format.dtype_to_descr(array.dtype),
                          "fortran_order": False, "shape": (declared,)}  # fmt: skip
                np.lib.format.write_array_header_1_0(f, header)
                zeros, left = bytes(2**24), declared * array.dtype.itemsize
                while left:
                    f.write(zeros[: min(left, len(zeros))])
                    left -= min(left, len(zeros))


@pytest.mark.parametrize("member", ["mask", "loss", "targets"])
def test_a_member_declaring_another_shape_is_refused_before_it_is_read(tmp_path, capsys, member):
    import tracemalloc

    path = tmp_path / "bomb.npz"
    _bomb(path, declared=2**26, meta_examples=6, members=(member,))  # 64 Mi entries, < 1 MB
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{member} should be a \\(6,\\) array"):
            Selection.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**22  # nothing near the 64-512 MiB the member declares was allocated
    assert main(["inspect", str(path)]) == 1
    assert "declares shape (67108864,)" in _one_line_error(capsys, "inspect")


def test_a_consistent_file_declaring_far_more_than_it_holds_is_refused(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.npz"
    n = 2**25  # 416 MiB declared by a file of about 400 KiB
    _bomb(path, declared=n, meta_examples=n, members=("mask", "loss", "targets"))
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"its arrays declare \d+ bytes, more than the"):
            Selection.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**22


def test_a_stream_selection_file_is_bounded_through_the_stream_wrapper_too(tmp_path):
    from useful_data import USEFULIterableDataset

    path = tmp_path / "bomb.npz"
    _bomb(path, declared=2**26, meta_examples=6)
    with pytest.raises(ValueError, match=r"mask should be a \(6,\) array"):
        USEFULIterableDataset([], path)


def _keyed(keys: list) -> Selection:
    n = len(keys)
    return Selection(mask=np.arange(n) % 2 == 0, loss=np.ones(n), targets=np.zeros(n, int),
                     keys=keys)  # fmt: skip


@pytest.mark.parametrize(
    "keys",
    [
        ["k1", "k1\x00", "\x00", ""],  # trailing NULs and the empty key are keys of their own
        ["é", "日本", "🙂", "a\nb"],
        ["lone \ud800 surrogate", "ok"],  # kept as Python keeps it (surrogatepass)
        [0, -1, 2**63 - 1, -(2**63)],
    ],
)
def test_keys_round_trip_exactly(tmp_path, keys):
    sel = _keyed(keys)
    assert sel.keys.tolist() == keys
    loaded = Selection.load(sel.save(tmp_path / "k.npz"))
    assert loaded.keys.tolist() == keys
    assert loaded.fingerprint == sel.fingerprint


def test_a_key_ending_in_nul_is_not_the_key_without_it():
    sel = _keyed(["k1", "k1\x00"])  # numpy's <U dtype would make them collide
    assert sel.fingerprint["num_examples"] == 2


def test_a_long_key_costs_its_length_not_its_length_times_n(tmp_path):
    keys = [f"k{i}" for i in range(19_999)] + ["x" * 50_000]
    sel = _keyed(keys)
    path = sel.save(tmp_path / "long.npz")
    assert path.stat().st_size < 2**20  # <U50000 would be 4 GB
    assert sel.keys.dtype == object
    assert Selection.load(path).keys.tolist() == keys


def test_a_file_with_keys_of_the_0x_format_still_loads(tmp_path):
    keys = ["a", "bb", "ccc", "d", "e", "f"]
    sel = _keyed(keys)
    meta = _meta(fingerprint=sel.fingerprint)
    path = tmp_path / "old.npz"
    np.savez(path, mask=sel.mask, loss=sel.loss, targets=sel.targets,
             meta=np.frombuffer(meta.encode(), dtype=np.uint8), keys=np.array(keys))  # fmt: skip
    assert Selection.load(path).keys.tolist() == keys


def test_bad_key_offsets_are_refused(tmp_path):
    sel = _keyed(["a", "b", "c", "d", "e", "f"])
    meta = _meta(fingerprint=sel.fingerprint)
    path = tmp_path / "bad.npz"
    np.savez(path, mask=sel.mask, loss=sel.loss, targets=sel.targets,
             meta=np.frombuffer(meta.encode(), dtype=np.uint8),
             keys_utf8=np.frombuffer(b"abcdef", dtype=np.uint8),
             keys_offsets=np.array([0, 1, 2, 3, 5, 4, 6]))  # fmt: skip
    with pytest.raises(ValueError, match="keys_offsets should be non-decreasing"):
        Selection.load(path)


def test_an_orphan_temporary_is_never_loaded_and_a_stale_one_is_removed(tmp_path):
    path = _selection().save(tmp_path / "sel.npz")
    stale = tmp_path / ".sel.npz.0123456789abcdef.tmp"  # a save killed before its rename
    fresh = tmp_path / ".sel.npz.fedcba9876543210.tmp"  # perhaps a save in progress
    other = tmp_path / ".other.npz.0123456789abcdef.tmp"
    for tmp in (stale, fresh, other):
        tmp.write_bytes(b"half a file")
    old = os.stat(stale).st_mtime - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert Selection.load(path).num_examples == 6  # the temporaries are not looked at
    _selection(8).save(path)
    assert not stale.exists() and fresh.exists() and other.exists()
    assert Selection.load(path).num_examples == 8


def test_a_non_finite_loss_is_refused_in_the_constructor_and_in_a_file(tmp_path):
    with pytest.raises(ValueError, match="loss should be finite, but 6 of 6 values are NaN"):
        _selection(loss=np.full(6, np.nan))
    with pytest.raises(ValueError, match="1 of 6 values"):
        _selection(loss=np.array([1, 1, 1, 1, 1, np.inf]))
    sel = _selection()
    path = tmp_path / "nan.npz"
    np.savez(path, mask=sel.mask, loss=np.full(6, np.nan, dtype=np.float32),
             targets=sel.targets, meta=np.frombuffer(_meta().encode(), np.uint8))  # fmt: skip
    with pytest.raises(ValueError, match="is malformed: loss should be finite"):
        Selection.load(path)


def test_a_device_is_not_a_regular_file_and_is_not_called_missing(capsys):
    with pytest.raises(ValueError, match="is not a regular file"):
        Selection.load("/dev/zero")
    assert main(["inspect", "/dev/zero"]) == 1
    assert "not a regular file" in _one_line_error(capsys, "inspect")

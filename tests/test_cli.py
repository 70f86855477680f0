from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import two_blob_logits
from torch.utils.data import TensorDataset

from useful_data import Selection, __version__, find_slow_learnable
from useful_data.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"useful-data {__version__}"


def test_inspect_prints_per_class_table(tmp_path, capsys):
    logits, targets, _ = two_blob_logits()
    logits = np.vstack([logits, np.zeros((1, 3), dtype=np.float32)])
    targets = np.append(targets, 2)
    sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn")
    path = sel.save(tmp_path / "sel.npz")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"examples: {sel.num_examples}" in out
    lines = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    by_class = {int(row[0]): row for row in lines}
    for c in sel.class_summary():
        assert int(by_class[c.label][1]) == c.num_examples
        assert int(by_class[c.label][2]) == c.num_slow_learnable


def test_inspect_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_text("nope")
    assert main(["inspect", str(bad)]) == 1
    assert "not a readable useful-data selection" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "inspect" in capsys.readouterr().out


def test_select_help_says_the_checkpoint_data_config_wins(capsys):
    # _select fills every eval-transform flag left out from the checkpoint's saved training
    # arguments before the model's defaults; the help must not promise the model's first.
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    options = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    for flag in ("--img-size", "--input-size", "--crop-pct", "--mean", "--std", "--interpolation"):
        described = options.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert "saved in the checkpoint, else the model's" in described, (flag, described)


def test_console_script_entry_point(tmp_path):
    sel = Selection(
        mask=np.array([True, False]), loss=np.array([1.0, 0.1]), targets=np.array([0, 0])
    )
    path = sel.save(tmp_path / "s.npz")
    result = subprocess.run(
        [sys.executable, "-m", "useful_data.cli", "inspect", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "slow-learnable: 1 (50.0%)" in result.stdout


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """An image folder and a timm-style checkpoint of a tiny timm model."""
    import argparse as _argparse

    import timm
    import torch
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("cli")
    make_image_folder(root / "images")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3)
    checkpoint = root / "checkpoint-3.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
            "args": _argparse.Namespace(model="resnet10t"),
        },
        checkpoint,
    )
    return root, checkpoint


def _select_argv(root, checkpoint, *extra):
    return [
        "select",
        "--model",
        "resnet10t",
        "--checkpoint",
        str(checkpoint),
        "--data-dir",
        str(root / "images"),
        "--img-size",
        "32",
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--backend",
        "sklearn",
        "--no-progress",
        *extra,
    ]


def test_select_writes_a_selection_of_the_training_folder(timm_run, tmp_path, capsys):
    root, checkpoint = timm_run
    out = tmp_path / "sel.npz"
    argv = _select_argv(root, checkpoint, "--num-classes", "3", "-o", str(out), "--seed", "1")
    assert main(argv) == 0
    sel = Selection.load(out)
    assert sel.num_examples == 30
    assert sel.targets.tolist() == np.repeat(np.arange(3), 10).tolist()
    assert sel.params["seed"] == 1
    assert sel.upsample_factor == 2  # the paper's factor, by default (USEFULDataset uses it)
    assert 0 < sel.num_slow_learnable < sel.num_examples
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-classes", "5"], "classifier with 3 classes but the model has 5"),
        (["--num-classes", "3", "--model", "resnet18"], "does not fit the model"),
        (["--num-classes", "3", "--data-dir", "EMPTY"], "could not build dataset|no examples"),
    ],
)
def test_select_errors_are_clear(timm_run, tmp_path, capsys, extra, message):
    root, checkpoint = timm_run
    (tmp_path / "EMPTY" / "train").mkdir(parents=True)
    extra = [str(tmp_path / "EMPTY") if e == "EMPTY" else e for e in extra]
    argv = [*_select_argv(root, checkpoint), *extra, "-o", str(tmp_path / "s.npz")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("useful-data select: error:")
    assert re.search(message, err)
    assert not (tmp_path / "s.npz").exists()


def test_inspect_plot(timm_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    root, _ = timm_run
    targets = np.repeat(np.arange(3), 10)
    sel = Selection(mask=np.arange(30) % 4 == 0, loss=np.ones(30), targets=targets)
    path = sel.save(tmp_path / "sel.npz")
    bars = tmp_path / "bars.png"
    assert main(["inspect", str(path), "--plot", str(bars)]) == 0
    grid = tmp_path / "grid.png"
    argv = ["inspect", str(path), "--plot", str(grid), "--data-dir", str(root / "images")]
    assert main(argv) == 0
    assert f"wrote {grid}" in capsys.readouterr().out
    assert bars.stat().st_size > 0
    assert grid.stat().st_size > bars.stat().st_size  # the grid of images is drawn too
    wrong = Selection(mask=np.ones(4, bool), loss=np.ones(4), targets=np.arange(4) % 2)
    argv = ["inspect", str(wrong.save(tmp_path / "w.npz")), "--plot", str(tmp_path / "x.png")]
    assert main([*argv, "--data-dir", str(root / "images")]) == 1
    assert "selection was computed on" in capsys.readouterr().err


@pytest.fixture
def stub_select(monkeypatch, tmp_path):
    """Stubs for everything `useful-data select` calls but the checkpoint's data config (read
    from a weightless checkpoint, ``tmp_path / "c.pth.tar"``); records their arguments."""
    import useful_data.slow_learnable as slow_learnable

    torch.save({"state_dict": {}}, tmp_path / "c.pth.tar")
    seen = {"targets": torch.tensor([0, 1, 2, 1])}

    def model(*args, **kwargs):
        seen["model"] = kwargs
        return torch.nn.Linear(1, 1)

    def dataset(*args, **kwargs):
        seen["dataset"] = (args, kwargs)
        return TensorDataset(torch.zeros(len(seen["targets"]), 1), seen["targets"])

    def find(*args, **kwargs):
        seen["find"] = kwargs
        raise SystemExit(0)

    monkeypatch.setattr("useful_data.timm._create_timm_model", model)
    monkeypatch.setattr("useful_data.timm._create_eval_dataset", dataset)
    monkeypatch.setattr(slow_learnable, "find_slow_learnable", find)
    return seen


def _argv(tmp_path, *extra, checkpoint=None):
    checkpoint = str(checkpoint or tmp_path / "c.pth.tar")
    return ["select", "--model", "resnet10t", "--checkpoint", checkpoint, "--num-classes", "3",
            "--data-dir", str(tmp_path), "--device", "cpu", "-o", str(tmp_path / "s.npz"),
            *extra]  # fmt: skip


def test_select_channels_last_flag_is_three_way(stub_select, tmp_path):
    seen = []
    for flag in ([], ["--channels-last"], ["--no-channels-last"]):
        with pytest.raises(SystemExit):  # the stub stops right after the arguments are resolved
            main(_argv(tmp_path, *flag))
        seen.append(stub_select["find"]["channels_last"])
    assert seen == [None, True, False]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "MISSING/s.npz"], "--output should be in an existing folder"),
        (["-o", "FOLDER"], "--output should be a file path, but .* is a folder"),
        (["-o", "OUT", "--device", "gpu"], "--device should be a torch device"),
        (["-o", "OUT", "--device", "cuda:7"], "--device cuda:7"),
    ],
)
def test_select_checks_output_and_device_before_any_work(tmp_path, capsys, extra, message):
    """Nothing is loaded (the checkpoint does not even exist) before these are checked."""
    subs = {"FOLDER": str(tmp_path), "OUT": str(tmp_path / "s.npz")}
    extra = [subs.get(e, e).replace("MISSING", str(tmp_path / "missing")) for e in extra]
    argv = ["select", "--model", "resnet18", "--checkpoint", str(tmp_path / "none.pth"),
            "--num-classes", "3", "--data-dir", str(tmp_path), *extra]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("useful-data select: error:")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--img-size", "0"), ("--batch-size", "0"), ("--workers", "-1"), ("--seed", "-1"),
     ("--upsample-factor", "0"), ("--num-classes", "x")],
)  # fmt: skip
def test_select_rejects_bad_numbers_at_parse_time(tmp_path, capsys, flag, value):
    argv = ["select", "--model", "resnet18", "--checkpoint", "c", "--num-classes", "3",
            "--data-dir", str(tmp_path), "-o", "s.npz", flag, value]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}: should be an integer" in capsys.readouterr().err


def test_inspect_checks_plot_path_and_data_dir(tmp_path, capsys):
    sel = Selection(mask=np.arange(8) % 2 == 0, loss=np.ones(8), targets=np.arange(8) % 2)
    path = str(sel.save(tmp_path / "sel.npz"))
    assert main(["inspect", path, "--plot", str(tmp_path / "missing" / "p.png")]) == 1
    assert "--plot should be in an existing folder" in capsys.readouterr().err
    argv = ["inspect", path, "--plot", str(tmp_path / "p.png"), "--data-dir", "no-such-dir"]
    assert main(argv) == 1
    assert "--data-dir should be a folder, but 'no-such-dir'" in capsys.readouterr().err


def test_select_takes_the_eval_config_from_the_training_run(stub_select, tmp_path, capsys):
    """timm's checkpoints hold the run's arguments: --mean/--std/--img-size come from there
    unless given on the command line."""
    import argparse as _argparse

    checkpoint = tmp_path / "checkpoint-2.pth.tar"
    run = _argparse.Namespace(img_size=40, in_chans=3, mean=[0.5, 0.5, 0.5], std=[0.25] * 3,
                              crop_pct=None, input_size=None, interpolation="")  # fmt: skip
    torch.save({"state_dict": {}, "args": run}, checkpoint)
    built = []
    for extra in ([], ["--std", "0.2", "0.2", "0.2", "--img-size", "32"]):
        with pytest.raises(SystemExit):
            main(_argv(tmp_path, *extra, checkpoint=checkpoint))
        built.append(stub_select["dataset"][1])
    assert built[0]["input_size"] == (3, 40, 40) and built[0]["mean"] == (0.5, 0.5, 0.5)
    assert built[0]["std"] == (0.25, 0.25, 0.25) and built[0]["crop_pct"] is None
    assert built[1]["input_size"] == 32 and built[1]["std"] == [0.2, 0.2, 0.2]
    assert built[1]["mean"] == (0.5, 0.5, 0.5)  # still the run's
    assert "from the checkpoint's training arguments: input_size=(3, 40, 40)" in (
        capsys.readouterr().out
    )


def test_select_passes_its_defaults_on(stub_select, tmp_path):
    """Defaults: split train, 4 workers, seed 0, auto backend, factor 2, progress on."""
    with pytest.raises(SystemExit):
        main(_argv(tmp_path))
    find, (_, ds_kwargs) = stub_select["find"], stub_select["dataset"]
    assert ds_kwargs["split"] == "train" and ds_kwargs["download"] is False
    assert stub_select["model"]["use_ema"] is False
    assert (find["num_workers"], find["seed"], find["backend"]) == (4, 0, "auto")
    assert (find["upsample_factor"], find["batch_size"], find["progress"]) == (2, None, True)


def test_select_passes_every_flag_on(stub_select, tmp_path):
    """Every flag reaches the function that uses it."""
    (tmp_path / "val").mkdir()  # the split and the class map exist (checked up front)
    (tmp_path / "map.txt").write_text("a\nb\nc\n")
    class_map = str(tmp_path / "map.txt")
    extra = ["--split", "val", "--class-map", class_map, "--download", "--use-ema",
             "--workers", "0", "--seed", "5", "--backend", "sklearn", "--upsample-factor", "3",
             "--batch-size", "16", "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(_argv(tmp_path, *extra))
    find, (_, ds_kwargs) = stub_select["find"], stub_select["dataset"]
    assert ds_kwargs["split"] == "val" and ds_kwargs["class_map"] == class_map
    assert ds_kwargs["download"] is True and stub_select["model"]["use_ema"] is True
    assert (find["num_workers"], find["seed"], find["backend"]) == (0, 5, "sklearn")
    assert (find["upsample_factor"], find["batch_size"], find["progress"]) == (3, 16, False)


def test_select_rejects_a_label_equal_to_num_classes(stub_select, tmp_path, capsys):
    """Labels 0..3 do not fit --num-classes 3."""
    stub_select["targets"] = torch.tensor([0, 1, 2, 3])
    assert main(_argv(tmp_path)) == 1
    assert "labels up to 3 but --num-classes is 3" in capsys.readouterr().err


def test_select_reports_a_type_error_cleanly(stub_select, monkeypatch, tmp_path, capsys):
    """A TypeError while selecting is an error message and exit code 1, not a traceback."""

    def bad(*args, **kwargs):
        raise TypeError("dataset items should be tensors")

    monkeypatch.setattr("useful_data.timm._create_eval_dataset", bad)
    assert main(_argv(tmp_path)) == 1
    assert capsys.readouterr().err.startswith("useful-data select: error:")


def test_select_checks_the_cuda_device_index(monkeypatch, tmp_path, capsys):
    """cuda:1 on a machine with one CUDA device is an error."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    argv = _argv(tmp_path)
    argv[argv.index("cpu")] = "cuda:1"
    assert main(argv) == 1
    assert "1 CUDA device(s)" in capsys.readouterr().err


def test_inspect_prints_the_cost_relative_to_sgd(tmp_path, capsys):
    sel = Selection(
        mask=np.arange(1000) < 150, loss=np.zeros(1000), targets=np.zeros(1000, dtype=int)
    )  # k = 2: 1150 examples per phase-2 epoch
    path = str(sel.save(tmp_path / "s.npz"))
    assert main(["inspect", path]) == 0
    assert "cost: phase 2 1.15x SGD per epoch (N + (k-1)|S| = 1150 per epoch / N = 1000)" in (
        capsys.readouterr().out
    )
    assert main(["inspect", path, "--separating-epoch", "8", "--epochs", "200"]) == 0
    assert "cost: 1.19x SGD = t/T (8/200 = 0.04) + 1.15 (" in capsys.readouterr().out
    argv = ["inspect", path, "--separating-epoch", "8", "--epochs", "200", "--epoch-size", "1000"]
    assert main(argv) == 0
    assert "cost: 1.04x SGD = t/T (8/200 = 0.04) + 1.00 (M = 1000 per epoch / N = 1000)" in (
        capsys.readouterr().out
    )
    assert main(["inspect", path, "--epochs", "200"]) == 1
    assert "--separating-epoch and --epochs go together" in capsys.readouterr().err
    assert main(["inspect", path, "--separating-epoch", "300", "--epochs", "200"]) == 1
    assert "separating_epoch=300" in capsys.readouterr().err


def test_inspect_grid_png_shows_the_selected_images_left(tmp_path, capsys):
    """Issue 26.6 through the command line: an image folder whose first 4 images per class
    are light and selected, the other 6 dark; the PNG's grid is light left, dark right."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        folder = tmp_path / "images" / "train" / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(10):
            level = 200.0 if i < 4 else 50.0
            pixels = np.clip(rng.normal(level, 2.0, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    targets = np.repeat([0, 1], 10)  # the folder's order: class by class, files sorted
    sel = Selection(mask=np.arange(20) % 10 < 4, loss=np.ones(20), targets=targets)
    path = sel.save(tmp_path / "sel.npz")
    grid = tmp_path / "grid.png"
    argv = ["inspect", str(path), "--plot", str(grid), "--data-dir", str(tmp_path / "images"),
            "--num-per-class", "3"]  # fmt: skip
    assert main(argv) == 0
    assert f"wrote {grid}" in capsys.readouterr().out
    pixels = imread(grid)[:, :, :3]
    top = pixels[: int(0.45 * pixels.shape[0])]
    grey = (np.ptp(top, axis=2) < 0.05) & (top.mean(axis=2) > 0.1) & (top.mean(axis=2) < 0.95)
    half = top.shape[1] // 2
    light, dark = top[:, :half][grey[:, :half]].mean(), top[:, half:][grey[:, half:]].mean()
    assert light == pytest.approx(200 / 255, abs=0.04) and dark == pytest.approx(50 / 255, abs=0.04)

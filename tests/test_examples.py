"""Smoke tests: every example runs end to end on CPU with tiny settings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import useful_data
from useful_data import Selection

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAS_SAM = hasattr(useful_data, "SAM")  # SAM lands with its own branch
needs_sam = pytest.mark.skipif(not HAS_SAM, reason="useful_data.SAM is not available")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quickstart_prints_an_honest_table(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    quickstart = load_example("quickstart")
    picture = tmp_path / "q.png"
    argv = ["--num-examples", "300", "--num-test", "300", "--steps", "60", "--seeds", "2"]
    quickstart.main([*argv, "--sep-step", "20", "--plot", str(picture)])
    out = capsys.readouterr().out
    for method in ("GD", "GD + random upsampling", "GD + USEFUL"):
        assert any(line.startswith(method + " ") for line in out.splitlines())
    assert "precision" in out and "recall" in out
    assert "mean ± std over 2 seeds" in out
    assert picture.stat().st_size > 0


@pytest.mark.parametrize(
    "methods", ["gd,gd+useful", pytest.param("sam,sam+useful", marks=needs_sam)]
)
def test_toy_simplicity_bias(capsys, methods):
    toy = load_example("toy_simplicity_bias")
    argv = ["--num-examples", "400", "--steps", "40", "--sep-step", "20", "--log-every", "20"]
    toy.main([*argv, "--methods", methods])
    out = capsys.readouterr().out
    assert "feature alignment" in out
    assert "precision" in out
    for method in methods.split(","):
        assert f"  {method.upper()} " in out
    rows = [line.split() for line in out.splitlines() if line.strip().split()[:1] == ["20"]]
    assert rows and len(rows[0]) == 3  # step, v_e and v_d alignment of one optimizer


@pytest.mark.parametrize(
    "method", ["sgd", "sgd+useful", pytest.param("sam+useful", marks=needs_sam)]
)
def test_train_cifar_on_fake_data(tmp_path, capsys, method):
    train_cifar = load_example("train_cifar")
    out_dir = tmp_path / "run"
    argv = ["--fake-data", "24", "--epochs", "2", "--separating-epoch", "1", "--batch-size", "12"]
    argv += ["--model", "test_resnet", "--workers", "0", "--out", str(out_dir), "--method", method]
    final = train_cifar.main(argv)
    assert 0.0 <= final <= 100.0
    logs = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    phases = [(entry["phase"], entry["epoch"]) for entry in logs]
    if method.endswith("+useful"):
        assert phases == [("early", 1), ("train", 1), ("train", 2)]
        selection = Selection.load(out_dir / "selection.npz")
        assert selection.num_examples == 24
    else:
        assert phases == [("train", 1), ("train", 2)]
    assert logs[-2]["lr"] == pytest.approx(0.1)  # phase 2 restarts the schedule
    assert logs[-1]["lr"] < 0.1
    assert "final test error" in capsys.readouterr().out

    # resume: a finished run reloads its last state and trains no further epoch
    again = train_cifar.main([*argv, "--resume"])
    assert again == pytest.approx(final)
    assert len((out_dir / "log.jsonl").read_text().splitlines()) == len(logs)


def test_train_cifar_bf16_channels_last_runs_every_pass_in_that_precision(tmp_path, monkeypatch):
    """--bf16 --channels-last: training, test and selection see channels_last inputs under a
    bfloat16 autocast (on the CPU here; the GPU run is recorded in docs/benchmarks.md)."""
    train_cifar = load_example("train_cifar")
    seen = []

    def record(module, inputs, output):
        x = inputs[0]
        seen.append((x.is_contiguous(memory_format=torch.channels_last), output.dtype))

    build_model = train_cifar.build_model

    def hooked(name, num_classes):
        model = build_model(name, num_classes)
        model.conv1.register_forward_hook(record)
        return model

    monkeypatch.setattr(train_cifar, "build_model", hooked)
    argv = ["--fake-data", "16", "--epochs", "2", "--separating-epoch", "1", "--batch-size", "8"]
    argv += ["--model", "test_resnet", "--workers", "0", "--out", str(tmp_path / "run")]
    final = train_cifar.main([*argv, "--method", "sgd+useful", "--bf16", "--channels-last"])
    assert 0.0 <= final <= 100.0
    assert seen and all(layout and dtype == torch.bfloat16 for layout, dtype in seen), seen
    # phase 1 (2 batches) + test (1) + selection (1) + phase 2 (2 epochs) + tests + final
    assert len(seen) >= 2 + 1 + 1 + 2 * 2


@pytest.mark.parametrize("equal_length", [False, True])
def test_train_cifar_equal_length_keeps_sgd_s_epoch_length(
    tmp_path, capsys, monkeypatch, equal_length
):
    train_cifar = load_example("train_cifar")
    lengths = []
    train_epoch = train_cifar.train_epoch

    def counting(model, loader, *args):
        lengths.append(len(loader))
        return train_epoch(model, loader, *args)

    monkeypatch.setattr(train_cifar, "train_epoch", counting)
    base = ["--fake-data", "24", "--epochs", "2", "--separating-epoch", "1", "--batch-size", "4"]
    base += ["--model", "test_resnet", "--workers", "0", "--out", str(tmp_path / "run")]
    train_cifar.main([*base, "--method", "sgd+useful", *["--equal-length"] * equal_length])
    selection = Selection.load(tmp_path / "run" / "selection.npz")
    assert selection.num_slow_learnable > 0
    phase2 = 24 if equal_length else 24 + selection.num_slow_learnable
    assert lengths == [6, -(-phase2 // 4), -(-phase2 // 4)]  # phase 1, then phase 2's epochs
    cost = 0.5 + phase2 / 24  # t/T + M/N
    assert f"cost: {cost:.2f}x SGD" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train_cifar.main([*base, "--method", "sgd", "--equal-length"])


def test_train_cifar_restarts_from_the_same_initial_weights(tmp_path):
    train_cifar = load_example("train_cifar")
    import torch

    out_dir = tmp_path / "run"
    argv = ["--fake-data", "24", "--epochs", "2", "--separating-epoch", "1", "--batch-size", "12"]
    argv += ["--model", "test_resnet", "--workers", "0", "--out", str(out_dir)]
    train_cifar.main([*argv, "--method", "sgd+useful"])
    state = torch.load(out_dir / "last.pt", weights_only=False)
    torch.manual_seed(0)
    fresh = train_cifar.build_model("test_resnet", 10).state_dict()
    for key, value in fresh.items():
        assert torch.equal(state["init"][key], value), key
    assert np.isfinite(Selection.load(out_dir / "selection.npz").loss).all()


def test_train_cifar_separating_epoch_auto(tmp_path, capsys):
    """``--separating-epoch auto`` ends phase 1 by the SeparatingEpoch rule (or its cap)."""
    from useful_data.separating_epoch import SeparatingEpoch

    train_cifar = load_example("train_cifar")
    out_dir = tmp_path / "run"
    argv = ["--fake-data", "24", "--epochs", "4", "--separating-epoch", "auto"]
    argv += ["--batch-size", "12", "--model", "test_resnet", "--workers", "0"]
    argv += ["--out", str(out_dir), "--method", "sgd+useful"]
    train_cifar.main(argv)
    logs = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    early = [entry for entry in logs if entry["phase"] == "early"]
    cap = SeparatingEpoch(total_epochs=4).max_epoch
    expected = len(early)
    assert 1 <= expected <= cap
    assert [e["epoch"] for e in early] == list(range(1, expected + 1))
    assert [e["epoch"] for e in logs if e["phase"] == "train"] == [1, 2, 3, 4]
    assert f'"separating_epoch": {expected}' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train_cifar.main([*argv[:4], "--separating-epoch", "soon"])


@pytest.mark.parametrize("method", ["sgd+useful", "sam+useful"])
def test_train_lightning(capsys, method):
    pytest.importorskip("lightning")
    train_lightning = load_example("train_lightning")
    argv = ["--num-examples", "200", "--epochs", "2", "--separating-epoch", "1"]
    accuracy = train_lightning.main([*argv, "--batch-size", "50", "--method", method])
    assert 0.0 <= accuracy <= 1.0
    out = capsys.readouterr().out
    assert "separating epoch 1: selected" in out and "precision" in out
    assert f"{method}: 3 epochs on 1 process(es)" in out

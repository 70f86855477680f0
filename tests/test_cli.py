from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import two_blob_logits

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

"""Smoke runs of every benchmark in --quick mode: the tables appear and the ratios parse.

No assertion on time: these machines are shared and noisy (see docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = importlib.util.find_spec("lightning") is not None


def _tables(stdout: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every Markdown table in the output."""
    tables, lines = [], stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("| "):
                    break
                rows.append([c.strip() for c in row.strip("|").split("|")])
            tables.append((header, rows))
    return tables


def _run(script: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize(
    ("script", "headers"),
    [
        (
            "bench_selection.py",
            [
                ("selection/epoch", "cluster share"),
                ("ratio vs sklearn",),
                ("peak / (N*C*4)", "ratio vs naive"),
            ],
        ),
        ("bench_data.py", [("ratio", "ratio of best")] * 3),
        ("bench_eval_pass.py", [("median / plain eval loop",)]),
        pytest.param(
            "bench_lightning.py",
            [("ratio", "min ratio"), ("extra time / baseline epoch (median)",)],
            marks=pytest.mark.skipif(not LIGHTNING, reason="needs the [lightning] extra"),
        ),
        (
            "bench_streaming.py",
            [("pass ratio (CPU)", "pass ratio (wall)"), ("bytes/key", "lookup µs (Python)")],
        ),
    ],
)
def test_quick_run_prints_ratio_tables(script, headers):
    tables = _tables(_run(script))
    assert len(tables) == len(headers)
    for (header, rows), columns in zip(tables, headers, strict=True):
        assert rows, header
        for column in columns:
            assert column in header, (column, header)
            index = header.index(column)
            for row in rows:
                value = float(row[index])  # parses as a number
                assert value > 0

"""The distributions hold what they should: the wheel the package, the sdist its test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# setuptools builds in-process (no isolation): the SPDX `license = "MIT"` needs >= 77
pytest.importorskip("setuptools", minversion="77")
# not copied: build outputs at the root, and caches and egg-info anywhere (setuptools would
# add the files an old SOURCES.txt lists, masking a broken MANIFEST.in)
_ROOT_ONLY = {".git", ".venv", "build", "dist", "site"}
_ANYWHERE = shutil.ignore_patterns("*.egg-info", "__pycache__", ".*_cache")


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = set(_ANYWHERE(folder, names))
    return skipped | (_ROOT_ONLY & set(names)) if Path(folder) == ROOT else skipped


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build the sdist and the wheel with setuptools' PEP 517 hooks (no network, no isolation)."""
    src, out = tmp_path_factory.mktemp("src") / "useful-data", tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, src, ignore=_ignore)
    # (the path is read once: setuptools' hooks rewrite sys.argv)
    code = "import sys; from setuptools import build_meta as b; out = sys.argv[1]; "
    code += "b.build_sdist(out); b.build_wheel(out)"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


def test_sdist_carries_what_its_tests_read(dists: tuple[Path, Path]) -> None:
    with tarfile.open(dists[0]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    # conftest.py: 9 test files import from it; docs/ and mkdocs.yml: test_docs reads them;
    # examples/ and benchmarks/: test_examples and test_benchmarks run them.
    for needed in (
        "LICENSE",
        "README.md",
        "mkdocs.yml",
        "tests/conftest.py",
        "tests/test_docs.py",
        "docs/api.md",
        "docs/assets/alignment.png",
        "examples/quickstart.py",
        "benchmarks/bench_selection.py",
        "useful_data/py.typed",
    ):
        assert needed in names, f"{needed} missing from the sdist"
    if shutil.which("git") is None:
        return
    folders = ["tests", "examples", "benchmarks", "docs", "useful_data"]
    tracked = subprocess.run(["git", "ls-files", "-z", *folders], cwd=ROOT, capture_output=True)
    if tracked.returncode == 0:  # in a git checkout: every tracked file of these folders
        files = {f for f in tracked.stdout.decode().split("\0") if f and (ROOT / f).is_file()}
        assert files <= names


def test_wheel_is_the_package_only(dists: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(dists[1]) as whl:
        names = set(whl.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert {name.split("/", 1)[0] for name in names} == {"useful_data", info}
    assert {"useful_data/py.typed", "useful_data/cli.py", "useful_data/sam.py"} <= names
    assert "License-Expression: MIT" in metadata
    assert "Framework :: Pytest" not in metadata
    assert "useful-data = useful_data.cli:main" in entry_points


def _requires(metadata: str) -> dict[str, set[str]]:
    """``Requires-Dist`` of a wheel's METADATA: project names by extra ("" = always)."""
    found: dict[str, set[str]] = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        spec, _, marker = line.removeprefix("Requires-Dist: ").partition(";")
        name = spec.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        extra = marker.split("extra ==")[1].strip().strip("'\"") if "extra ==" in marker else ""
        found.setdefault(extra, set()).add(name)
    return found


def test_a_plain_install_pulls_torch_numpy_and_typing_extensions_only(
    dists: tuple[Path, Path],
) -> None:
    with zipfile.ZipFile(dists[1]) as whl:
        info = next(n.split("/")[0] for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        requires = _requires(whl.read(f"{info}/METADATA").decode())
    assert requires[""] == {"torch", "numpy", "typing-extensions"}
    assert requires["timm"] == {"timm"}
    assert requires["vision"] == {"torchvision"}
    assert requires["sklearn"] == {"scikit-learn"}
    assert requires["progress"] == {"tqdm"}
    assert {"timm", "torchvision", "scikit-learn", "tqdm"} <= requires["dev"]


def _without(missing: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which importing ``missing`` fails."""
    block = "".join(f"sys.modules[{m!r}] = None; " for m in missing.split(","))
    return subprocess.run(
        [sys.executable, "-c", f"import sys; {block}\n{code}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_without_timm_useful_data_timm_names_the_extra() -> None:
    code = "import useful_data, useful_data.timm as t, useful_data.cli\nt._check_model_name('x')"
    done = _without("timm", code)
    assert "ImportError: this part of useful_data.timm needs timm: " in done.stderr
    assert "pip install 'useful-data[timm]'" in done.stderr


def test_without_scikit_learn_only_the_sklearn_backend_names_the_extra() -> None:
    code = (
        "import numpy as np, useful_data\n"
        "logits, targets = np.eye(2)[np.arange(40) % 2] * 3, np.arange(40) % 2\n"
        "logits[:8] = 0  # a few unlearned examples per class\n"
        "sel = useful_data.find_slow_learnable(logits=logits, targets=targets)\n"
        "print('torch backend', sel.num_slow_learnable)\n"
        "useful_data.find_slow_learnable(logits=logits, targets=targets, backend='sklearn')"
    )
    done = _without("sklearn", code)
    assert "torch backend 8" in done.stdout, done.stderr
    assert "pip install 'useful-data[sklearn]'" in done.stderr


def test_without_tqdm_the_selection_pass_runs_without_a_bar() -> None:
    code = (
        "import torch, useful_data\n"
        "from torch.utils.data import TensorDataset\n"
        "data = TensorDataset(torch.randn(20, 2), torch.arange(20) % 2)\n"
        "from useful_data.collect import collect_outputs\n"
        "out = collect_outputs(torch.nn.Linear(2, 2), data, progress=True, batch_size=8)\n"
        "print('outputs', tuple(out[0].shape))"
    )
    done = _without("tqdm,tqdm.auto", code)
    assert "outputs (20, 2)" in done.stdout, done.stderr

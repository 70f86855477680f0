"""What the 2-process tests of the framework integrations share: the data, the selection,
the launcher and the count check (tests/test_huggingface.py, tests/test_accelerate.py)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from useful_data import Selection

ROOT = Path(__file__).resolve().parents[1]
N, NUM_SLOW, BATCH = 40, 10, 5
SLOW = np.arange(0, N, N // NUM_SLOW)  # every 4th example: 0, 4, ..., 36


class Items(Dataset):
    """Map-style: dict items with the input, the label and the item's own index."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.targets = torch.arange(N) % 2
        self.x = torch.randn(N, 4, generator=g) + 2.0 * self.targets[:, None]

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": int(self.targets[i]), "index": i}


def fixed_selection(data: Items) -> Selection:
    mask = np.zeros(N, dtype=bool)
    mask[SLOW] = True
    return Selection(mask=mask, loss=np.zeros(N, np.float32), targets=data.targets.numpy())


def flat(lists) -> list:
    return list(itertools.chain.from_iterable(lists))


def gathered(value):
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def load_example(name: str):
    """``examples/<name>.py`` as a module (its ``main(argv)`` runs it)."""
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(script: Path, out: Path) -> dict:
    """``torchrun --nproc_per_node 2 script out`` on the CPU; the JSON rank 0 wrote to ``out``."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(out.read_text())


def assert_upsampled_epoch(items: list[int]) -> None:
    """50 items: the 40 examples each once and the 10 slow-learnable ones once more."""
    counts = Counter(items)
    assert len(items) == 50, f"{len(items)} items, {len(counts)} distinct"
    assert counts == Counter(range(N)) + Counter(SLOW.tolist())

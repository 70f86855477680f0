"""SAM under DDP: 2 CPU processes on gloo, first pass per replica, second pass all-reduced."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from useful_data.sam import SAM, ddp_no_sync

WORLD_SIZE = 2
STEPS = 4
SGD_KWARGS = dict(rho=0.2, lr=0.1, momentum=0.9)


def _model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.7)
    return model


def _data(rank: int, step: int) -> tuple[Tensor, Tensor]:
    """A different batch on every rank and step."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(8, 3, generator=generator), torch.randint(0, 2, (8,), generator=generator)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        model = DistributedDataParallel(_model())
        optimizer = SAM(model.parameters(), torch.optim.SGD, **SGD_KWARGS)
        for step in range(STEPS):
            x, y = _data(rank, step)
            with ddp_no_sync(model):  # forward inside too: DDP decides at forward time
                F.cross_entropy(model(x), y).backward()
            optimizer.first_step(zero_grad=True)
            F.cross_entropy(model(x), y).backward()  # all-reduced
            optimizer.second_step(zero_grad=True)
        torch.save([p.detach() for p in model.parameters()], Path(out_dir) / f"rank{rank}.pt")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with ddp_no_sync(model.module):  # the unwrapped module: a likely mistake
                pass
        (Path(out_dir) / f"warned{rank}.txt").write_text(str([str(w.message) for w in caught]))
    finally:
        dist.destroy_process_group()


def _reference(per_replica_perturbation: bool) -> list[Tensor]:
    """One process: the mean over ranks r of ∇L_r(w + e_r), then an SGD step.

    ``e_r`` comes from rank r's own gradient (per-replica, m-sharpness) or, when
    ``per_replica_perturbation`` is False, from the all-reduced gradient.
    """
    model = _model()
    optimizer = SAM(model.parameters(), torch.optim.SGD, **SGD_KWARGS)
    params = list(model.parameters())
    for step in range(STEPS):
        batches = [_data(rank, step) for rank in range(WORLD_SIZE)]
        replicas = [[batch] for batch in batches] if per_replica_perturbation else [batches]
        total = [torch.zeros_like(p) for p in params]
        for replica in replicas:
            optimizer.zero_grad()
            _mean_loss(model, replica).backward()
            optimizer.first_step(zero_grad=True)
            _mean_loss(model, replica).backward()
            optimizer.unperturb()
            weight = len(replica) / WORLD_SIZE
            total = [t + weight * p.grad for t, p in zip(total, params, strict=True)]
        for p, g in zip(params, total, strict=True):
            p.grad = g
        optimizer.base_optimizer.step()
    return [p.detach() for p in params]


def _mean_loss(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    return sum(F.cross_entropy(model(x), y) for x, y in batches) / len(batches)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_stay_identical_and_match_per_replica_sam(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE))
    assert "not model.module" in (tmp_path / "warned0.txt").read_text()
    for a, b in zip(rank0, rank1, strict=True):
        assert torch.equal(a, b)
    initial = [p.detach() for p in _model().parameters()]
    assert not any(torch.equal(a, w) for a, w in zip(rank0, initial, strict=True))

    expected = _reference(per_replica_perturbation=True)
    for a, e in zip(rank0, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    synced_first_pass = _reference(per_replica_perturbation=False)
    assert any(
        not torch.allclose(a, s, rtol=1e-5, atol=1e-6)
        for a, s in zip(rank0, synced_first_pass, strict=True)
    )

"""USEFUL with DistributedDataParallel, launched by torchrun: CPUs (gloo) or GPUs (nccl).

1. Phase 1: train with DDP for the first few epochs (the separating epoch).
2. ``find_slow_learnable(model, train_set)`` on every rank: each rank runs its share of the
   batches, the outputs are gathered, each class is clustered on one rank, and every rank
   gets the same Selection. Rank 0 saves it once.
3. Phase 2: restart from the same initial weights, with ``UpsampleSampler`` (read from the
   saved file on every rank) in place of ``DistributedSampler``.

The data is the paper's synthetic task, identical on every rank (same seed); the selection is
scored against the planted truth (the examples without the fast-learnable feature).

Run:
    torchrun --nproc_per_node=2 examples/train_distributed.py --tiny   # CPU smoke test
    torchrun --nproc_per_node=8 examples/train_distributed.py          # one node, 8 GPUs
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from useful_data import UpsampleSampler, find_slow_learnable
from useful_data.distributed import save_on_rank0
from useful_data.synthetic import SimplicityBiasData, ToyCNN, make_simplicity_bias_data


def setup() -> torch.device:
    """Join the process group torchrun describes: nccl with one GPU per process where this
    node has a GPU for every local process, else gloo on the CPU."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    enough_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= local_processes
    if not enough_gpus:
        dist.init_process_group("gloo")
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    return device


def train(
    model: ToyCNN,
    data: SimplicityBiasData,
    sampler: Sampler[int],
    *,
    epochs: int,
    batch_size: int,
    device: torch.device,
) -> ToyCNN:
    """Plain DDP training; ``sampler`` decides which examples this rank sees each epoch."""
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        for inputs, targets in loader:
            loss = F.cross_entropy(ddp(inputs.to(device)), targets.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@torch.no_grad()
def accuracy(model: ToyCNN, data: SimplicityBiasData, device: torch.device) -> float:
    predictions = model(data.inputs.to(device)).argmax(1).cpu()
    return float((predictions == data.targets).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=4000)
    parser.add_argument("--separating-epoch", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=100, help="per rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for selection.npz")
    parser.add_argument("--tiny", action="store_true", help="a few seconds on CPUs")
    args = parser.parse_args()
    if args.tiny:
        args.num_examples, args.batch_size = 1001, 50
        args.separating_epoch, args.epochs = 25, 3

    device = setup()
    rank, world = dist.get_rank(), dist.get_world_size()
    log = print if rank == 0 else (lambda *_args, **_kwargs: None)
    log(f"world_size={world} backend={dist.get_backend()} device={device.type}")

    train_set = make_simplicity_bias_data(args.num_examples, seed=args.seed)
    test_set = make_simplicity_bias_data(args.num_examples, seed=args.seed + 1000)

    # 1. phase 1: the first epochs, with torch's own DistributedSampler
    sampler = DistributedSampler(train_set, seed=args.seed)
    early = ToyCNN(seed=args.seed).to(device)
    train(early, train_set, sampler, epochs=args.separating_epoch,
          batch_size=args.batch_size, device=device)  # fmt: skip

    # 2. the selection step, on every rank (each does 1/world of the forward passes)
    selection = find_slow_learnable(early, train_set, progress=rank == 0)
    masks = [None] * world
    dist.all_gather_object(masks, selection.mask.tobytes())
    if all(m == masks[0] for m in masks):
        log(f"selection identical on all ranks ({world})")
    truth = ~train_set.has_fast_feature.numpy()
    hits = int((selection.mask & truth).sum())
    log(
        f"selected {selection.num_slow_learnable} of {selection.num_examples}: "
        f"precision {hits / max(selection.num_slow_learnable, 1):.3f} "
        f"recall {hits / max(int(truth.sum()), 1):.3f} (vs. the planted truth)"
    )
    folder = args.out or Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    path = save_on_rank0(selection, folder / "selection.npz")  # written once, by rank 0
    log(f"saved selection to {path}")

    # 3. phase 2: from the same initial weights, upsampled; every rank reads the saved file
    upsampler = UpsampleSampler(path, len(train_set), seed=args.seed)  # rank/world from dist
    model = ToyCNN(seed=args.seed).to(device)
    train(model, train_set, upsampler, epochs=args.epochs,
          batch_size=args.batch_size, device=device)  # fmt: skip
    log(
        f"phase 2: {len(upsampler)} examples per rank per epoch "
        f"({upsampler.multiset_size} upsampled in all); "
        f"test accuracy {accuracy(model, test_set, device):.4f}"
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

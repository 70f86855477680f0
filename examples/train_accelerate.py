"""USEFUL in a hand-written loop under Hugging Face Accelerate: phase 1, selection, phase 2.

1. Phase 1: the first ``t`` epochs, everything through ``accelerator.prepare``.
2. ``find_slow_learnable(accelerator.unwrap_model(model), train_set)`` on every process:
   each runs its share of the forward passes and all get the same Selection.
3. Phase 2: the initial weights W0 again, a fresh optimizer and schedule, and an
   ``UpsampleSampler`` in the training loader, prepared like any other: Accelerate deals its
   batches out to the processes, and ``loader.set_epoch(epoch)`` reaches it.

The data is the paper's synthetic task (Definition 3.1) and the model its two-layer CNN; the
selection is scored against the planted truth.

Run:
    python examples/train_accelerate.py --tiny                        # seconds on a CPU
    torchrun --nproc_per_node=2 examples/train_accelerate.py --tiny   # 2 CPU processes
    accelerate launch --multi_gpu --num_processes 2 examples/train_accelerate.py --tiny

(``accelerate launch --cpu --num_processes 2`` starts one process: ``--cpu`` picks
Accelerate's single-process launcher. ``--multi_gpu`` starts the processes, and the script's
``Accelerator(cpu=True)`` keeps them on the CPU, with gloo, where no GPU is found.)
"""

from __future__ import annotations

import argparse
import copy

import torch
from accelerate import Accelerator
from torch.nn import functional as F
from torch.utils.data import DataLoader

from useful_data import UpsampleSampler, find_slow_learnable
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data


def upsampled_loader(train_set, selection, *, batch_size: int, seed: int) -> DataLoader:
    """Phase 2's loader. ``num_replicas=1, rank=0``, the switch for Accelerate: it deals the
    batches out itself, so the sampler yields the whole multiset on every process."""
    sampler = UpsampleSampler(selection, len(train_set), seed=seed, num_replicas=1, rank=0)
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler)


def train(accelerator, model, loader, *, epochs: int, total_epochs: int, lr: float) -> list[float]:
    """SGD with a cosine schedule over ``total_epochs``, stopped after ``epochs``; returns the
    learning rate after every step.

    The schedule is sized from the *prepared* loader: ``len(loader)`` after ``prepare`` is
    this process's steps per epoch, the last round of batches padded to every process, and a
    prepared scheduler advances ``num_processes`` times per step. Sized before ``prepare``,
    it would miss the padding round and pass through 0 before the end.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ticks = total_epochs * len(loader) * accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=ticks)
    scheduler = accelerator.prepare(scheduler)
    lrs = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)  # reaches the sampler through Accelerate's wrappers
        for inputs, targets in loader:
            loss = F.cross_entropy(model(inputs), targets)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--separating-epoch", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=100, help="per process")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a few seconds on a CPU")
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_examples, args.epochs, args.separating_epoch, args.batch_size = 400, 6, 2, 50
        args.lr = 0.5

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    train_set = make_simplicity_bias_data(args.num_examples, seed=args.seed)
    model = ToyCNN(seed=args.seed, init_std=0.1)  # learns within the first epochs
    w0 = copy.deepcopy(model.state_dict())

    # 1. phase 1: the first epochs of the full schedule
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    train(accelerator, model, loader, epochs=args.separating_epoch,
          total_epochs=args.epochs, lr=args.lr)  # fmt: skip

    # 2. the selection, on every process
    selection = find_slow_learnable(
        accelerator.unwrap_model(model), train_set, progress=accelerator.is_main_process
    )
    truth = ~train_set.has_fast_feature.numpy()
    hits = int((selection.mask & truth).sum())
    accelerator.print(
        f"selected {selection.num_slow_learnable} of {selection.num_examples}: precision "
        f"{hits / max(selection.num_slow_learnable, 1):.3f} recall "
        f"{hits / max(int(truth.sum()), 1):.3f} (vs. the planted truth)"
    )

    # 3. phase 2: W0, a fresh optimizer and schedule, the upsampled multiset
    model = ToyCNN(seed=args.seed)
    model.load_state_dict(w0)
    loader = upsampled_loader(train_set, selection, batch_size=args.batch_size, seed=args.seed)
    train(accelerator, model, loader, epochs=args.epochs, total_epochs=args.epochs, lr=args.lr)
    test = make_simplicity_bias_data(args.num_examples, seed=args.seed + 1000)
    with torch.no_grad():
        logits = model(test.inputs.to(accelerator.device)).cpu()
    accuracy = float((logits.argmax(1) == test.targets).float().mean())
    accelerator.print(f"phase 2: {selection.upsampled_size} examples per epoch on "
                      f"{accelerator.num_processes} process(es); "
                      f"test accuracy {accuracy:.4f}")  # fmt: skip
    accelerator.end_training()
    return accuracy


if __name__ == "__main__":
    main()

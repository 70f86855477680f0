"""What the Hugging Face integrations add per training step, against the same framework
without them, in the same run.

The baseline is the same framework on the same upsampled data built without useful-data:
``ConcatDataset([train_set, Subset(train_set, slow_learnable)])``, shuffled by the
framework's own sampler. So every variant trains ``N + |S|`` items per epoch, the same number
of steps, and a ratio of 1 means the integration costs nothing per step.

1. **Trainer.** ``transformers.Trainer`` on that baseline, against ``USEFULTrainer`` (an
   ``UpsampleSampler`` that Accelerate shards, the selection saved into every checkpoint, the
   sampler's epoch set by a callback) and against a plain ``Trainer`` on ``USEFULDataset``.
   Time per optimizer step of ``trainer.train()`` (not the Trainer's construction), with a
   checkpoint written every epoch in all three.
2. **Accelerate.** A hand-written loop under ``accelerator.prepare``: the baseline with
   ``shuffle=True`` against ``DataLoader(train_set, sampler=UpsampleSampler(...))``.

Repeats alternate which variant goes first; ratios are of the medians and of the best
repeats. Under ``torchrun`` every process runs the same and rank 0 prints.

Run:
    python benchmarks/bench_huggingface.py
    torchrun --nproc_per_node 2 benchmarks/bench_huggingface.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, describe_machine, print_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from useful_data import Selection, UpsampleSampler, USEFULDataset


class Items(Dataset):
    def __init__(self, num_examples: int, dim: int, num_classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.targets = torch.randint(0, num_classes, (num_examples,), generator=g)
        self.x = torch.randn(num_examples, dim, generator=g)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.targets[i]}


class MLP(nn.Module):
    def __init__(self, dim: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def selection_of(data: Items, fraction: float) -> Selection:
    rng = np.random.default_rng(0)
    mask = rng.random(len(data)) < fraction
    return Selection(mask=mask, loss=np.zeros(len(data), np.float32), targets=data.targets.numpy())


def by_hand(data: Items, selection: Selection) -> ConcatDataset:
    """The upsampled training set without useful-data: the slow-learnable examples appended."""
    return ConcatDataset([data, Subset(data, selection.indices.tolist())])


def reduce(base: list[float], cand: list[float]) -> tuple[float, float, float, float]:
    return (
        statistics.median(base) * 1e3,
        statistics.median(cand) * 1e3,
        statistics.median(cand) / statistics.median(base),
        min(cand) / min(base),
    )


def bench_trainer(args, data: Items, selection: Selection, out: Path) -> list[list[object]]:
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from useful_data.huggingface import USEFULTrainer

    def seconds_per_step(kind: str, run: int) -> float:
        torch.manual_seed(0)
        model = MLP(args.dim, args.classes, args.width)
        training = TrainingArguments(
            output_dir=str(out / f"{kind}-{run}"), num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size, learning_rate=0.05, optim="sgd",
            save_strategy="epoch", logging_strategy="no", report_to="none",
            disable_tqdm=True, use_cpu=args.device == "cpu", seed=0,
        )  # fmt: skip
        if kind == "USEFULTrainer":
            trainer = USEFULTrainer(model, training, train_dataset=data, selection=selection)
        elif kind == "USEFULDataset":
            trainer = Trainer(model, training, train_dataset=USEFULDataset(data, selection))
        else:
            trainer = Trainer(model, training, train_dataset=by_hand(data, selection))
        trainer.remove_callback(PrinterCallback)  # no metrics printed amid the tables
        start = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - start) / trainer.state.global_step

    kinds = ("Trainer", "USEFULTrainer", "USEFULDataset")
    for kind in kinds:  # warm-up
        seconds_per_step(kind, -1)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for run in range(args.repeats):
        order = kinds if run % 2 == 0 else kinds[::-1]
        for kind in order:
            times[kind].append(seconds_per_step(kind, run))
    return [
        [f"Trainer, by hand vs {kind}", *reduce(times["Trainer"], times[kind])]
        for kind in ("USEFULTrainer", "USEFULDataset")
    ]


def bench_accelerate(args, data: Items, selection: Selection) -> list[list[object]]:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == "cpu")

    def seconds_per_step(upsampled: bool) -> float:
        torch.manual_seed(0)
        model = MLP(args.dim, args.classes, args.width)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        if upsampled:
            sampler = UpsampleSampler(selection, len(data), seed=0, num_replicas=1, rank=0)
            loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
        else:
            loader = DataLoader(by_hand(data, selection), batch_size=args.batch_size, shuffle=True)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        steps, start = 0, time.perf_counter()
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                loss = model(batch["x"], batch["labels"])["loss"]
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                steps += 1
        return (time.perf_counter() - start) / steps

    seconds_per_step(False), seconds_per_step(True)  # warm-up
    base, cand = [], []
    for run in range(args.repeats):
        if run % 2 == 0:
            base.append(seconds_per_step(False))
            cand.append(seconds_per_step(True))
        else:
            cand.append(seconds_per_step(True))
            base.append(seconds_per_step(False))
    return [["by hand, shuffle=True vs UpsampleSampler", *reduce(base, cand)]]


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    args.dim, args.classes, args.width = 64, 10, 256
    if args.quick:
        args.num_examples, args.epochs, args.repeats = 256, 1, 1
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        describe_machine(args)
    else:
        torch.set_num_threads(args.threads)
    data = Items(args.num_examples, args.dim, args.classes)
    selection = selection_of(data, 0.25)
    header = ["baseline vs candidate", "baseline ms/step", "candidate ms/step", "ratio",
              "ratio of best"]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        trainer_rows = bench_trainer(args, data, selection, Path(folder))
    accelerate_rows = bench_accelerate(args, data, selection)
    if rank == 0:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        setting = (f"N={args.num_examples} (|S|={selection.num_slow_learnable}), batch "
                   f"{args.batch_size} per process, {args.epochs} epochs, {world} process(es), "
                   f"{args.repeats} repeats")  # fmt: skip
        print_table(f"Hugging Face Trainer: time per step ({setting})", header, trainer_rows)
        print_table(f"Accelerate loop: time per step ({setting})", header, accelerate_rows)
        print("\nratio = candidate / baseline time per step (medians); ratio of best = the same "
              "for the fastest repeat of each.")  # fmt: skip


if __name__ == "__main__":
    main()

"""What the Lightning integration adds per training step: the same fit with and without USEFUL.

A baseline ``Trainer.fit`` (plain ``DataLoader(shuffle=True)``) and the same fit with the
``USEFUL`` callback (phase 1 for ``t`` epochs, the selection, then the restart on the
upsampled data through an ``UpsampleSampler``) run interleaved, ``--repeats`` times each. A
timing callback (last in the list) records every epoch's wall time; the time per step of an
epoch is its time over its number of batches. Reported, as ratios against the baseline's
epochs of the same repeat (medians over repeats; the first epoch of each fit is warm-up and
left out):

* phase 1's steps (the callback present, nothing changed yet),
* phase 2's steps (the loader rebuilt with an ``UpsampleSampler``; more steps per epoch, each
  should cost the same),
* the one-off switch: the epoch that ends with the selection (one eval pass + clustering)
  and the rebuild of the loader, as extra time in units of a baseline epoch.

The model is a small MLP so that the framework's per-step overhead, not the arithmetic,
dominates: the ratios are an upper bound for real models.

Run:
    python benchmarks/bench_lightning.py            # the figures in docs/benchmarks.md
    python benchmarks/bench_lightning.py --quick    # a smoke run
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
from _common import base_parser, describe_machine, print_table
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from useful_data.lightning import USEFUL


class MLP(pl.LightningModule):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Data(pl.LightningDataModule):
    def __init__(self, dataset: TensorDataset, batch_size: int) -> None:
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)


class EpochTimer(pl.Callback):
    """Wall time and number of batches of every epoch (from one epoch start to the next)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.batches: list[int] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(time.perf_counter())
        self.batches.append(int(trainer.num_training_batches))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def epoch_times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]


def fit(data: Data, epochs: int, useful: USEFUL | None, seed: int) -> EpochTimer:
    torch.manual_seed(seed)
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer] if useful is None else [useful, timer]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(MLP(256), datamodule=data)
    return timer


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4, help="phase 2's T (and the baseline's)")
    parser.add_argument("--separating-epoch", type=int, default=3, help=">= 3: one clean epoch")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.num_examples, args.epochs, args.separating_epoch, args.repeats = 512, 3, 3, 2
    if args.separating_epoch < 3:
        parser.error("--separating-epoch should be >= 3 (epoch 0 is warm-up, t - 1 selects)")
    describe_machine(args)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.num_examples, 64, generator=g)
    targets = torch.randint(0, 10, (args.num_examples,), generator=g)
    data = Data(TensorDataset(inputs, targets), args.batch_size)
    t, epochs = args.separating_epoch, args.epochs

    ratios: dict[str, list[float]] = {"phase 1": [], "phase 2": []}
    per_step: dict[str, list[float]] = {"baseline": [], "phase 1": [], "phase 2": []}
    switch: list[float] = []
    slow = 0
    for repeat in range(args.repeats):
        runs = {}
        order = ("baseline", "useful") if repeat % 2 == 0 else ("useful", "baseline")
        for name in order:
            useful = None
            if name == "useful":
                useful = USEFUL(t, find_kwargs={"backend": "torch", "batch_size": 1024})
            runs[name] = (fit(data, epochs, useful, seed=repeat), useful)
        base_timer = runs["baseline"][0]
        times = base_timer.epoch_times()
        base_step = statistics.median(
            s / b for s, b in zip(times[1:], base_timer.batches[1:], strict=True)
        )
        base_epoch = statistics.median(times[1:])
        timer, useful = runs["useful"]
        assert useful is not None and useful.selection is not None
        slow = useful.selection.num_slow_learnable
        times, batches = timer.epoch_times(), timer.batches
        # epoch 0 is warm-up; epoch t - 1 ends with the selection, and the loader rebuild and
        # the restart (at the start of epoch t, before the timer's hook) count towards it too
        clean1 = zip(times[1 : t - 1], batches[1 : t - 1], strict=True)
        steps1 = statistics.median(s / b for s, b in clean1)
        steps2 = statistics.median(s / b for s, b in zip(times[t:], batches[t:], strict=True))
        per_step["baseline"].append(base_step)
        per_step["phase 1"].append(steps1)
        per_step["phase 2"].append(steps2)
        ratios["phase 1"].append(steps1 / base_step)
        ratios["phase 2"].append(steps2 / base_step)
        switch.append((times[t - 1] - batches[t - 1] * steps1) / base_epoch)

    baseline = 1e6 * statistics.median(per_step["baseline"])
    rows = [
        (
            phase,
            int(useful_batches),
            baseline,
            1e6 * statistics.median(per_step[phase]),
            statistics.median(ratios[phase]),
            min(ratios[phase]),
        )
        for phase, useful_batches in (
            ("phase 1", timer.batches[0]),
            ("phase 2", timer.batches[-1]),
        )
    ]
    print_table(
        "Per training step, the same Lightning fit with and without USEFUL "
        f"(N={args.num_examples}, {slow} slow-learnable, batch {args.batch_size}, "
        f"t={t}, T={epochs}, {args.repeats} repeats)",
        ["phase", "steps/epoch", "baseline µs/step", "USEFUL µs/step", "ratio", "min ratio"],
        rows,
    )
    print(
        "\nratio = time per step of the fit with USEFUL / the baseline fit's, same repeat "
        "(median over repeats; min ratio = the smallest repeat's)."
    )
    print_table(
        "One-off: the selection at the end of epoch t and the loader rebuilt for phase 2",
        ["extra time / baseline epoch (median)", "min"],
        [(statistics.median(switch), min(switch))],
    )


if __name__ == "__main__":
    main()

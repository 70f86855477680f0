"""Models, data and a 2-process runner for tests/test_lightning.py.

Every dataset item carries its index, and the module records, per epoch, the indices of every
batch it trained on, so the tests count exactly what each rank saw.

Run as a script under torchrun (one launch runs every scenario in turn, writing one JSON file
per scenario and rank into the output folder)::

    python -m torch.distributed.run --nproc_per_node 2 tests/_lightning_helpers.py OUT
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from useful_data import SAM, UpsampleSampler, USEFULDataset
from useful_data.lightning import USEFUL

N = 40
SLOW = list(range(0, N, 4))  # 10 slow-learnable examples for the sampler/dataset scenarios


class IndexedData(Dataset):
    """``N`` items ``(x, label, index)``: two classes, half of each one easy to fit."""

    def __init__(self, n: int = N, seed: int = 0, flip: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % 2
        if flip:
            self.targets = 1 - self.targets
        self.inputs = torch.randn(n, 8, generator=g)
        easy = torch.arange(n) % 4 < 2
        self.inputs[easy, 0] += 3.0 * (2 * self.targets[easy] - 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.inputs[i], self.targets[i], i


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from IndexedData()


class Data(pl.LightningDataModule):
    """``mode``: ``"plain"``, ``"dataset"`` (USEFULDataset in train_dataloader),
    ``"sampler"`` (UpsampleSampler in train_dataloader), ``"sampler_early"`` (built in
    ``__init__``, before any process group exists) or ``"stateful"`` (torchdata's
    ``StatefulDataLoader``, shuffled)."""

    def __init__(self, mode: str = "plain", shuffle: bool = True, flip: bool = False) -> None:
        super().__init__()
        self.mode, self.shuffle = mode, shuffle
        self.train_set = IndexedData(flip=flip)
        self.early_sampler = (
            UpsampleSampler(SLOW, num_examples=N, seed=0) if mode == "sampler_early" else None
        )

    def train_dataloader(self) -> DataLoader:
        if self.mode == "dataset":
            return DataLoader(USEFULDataset(self.train_set, SLOW), batch_size=5, shuffle=True)
        if self.mode == "sampler":
            sampler = UpsampleSampler(SLOW, num_examples=N, seed=0)
            return DataLoader(self.train_set, batch_size=5, sampler=sampler)
        if self.mode == "sampler_early":
            return DataLoader(self.train_set, batch_size=5, sampler=self.early_sampler)
        if self.mode == "stateful":
            from torchdata.stateful_dataloader import StatefulDataLoader

            return StatefulDataLoader(self.train_set, batch_size=5, shuffle=True)
        return DataLoader(self.train_set, batch_size=5, shuffle=self.shuffle)


class Model(pl.LightningModule):
    """A small MLP that records what it trains on; ``sam=True``: SAM, manual optimization."""

    def __init__(self, sam: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.sam = sam
        self.automatic_optimization = not sam
        self.seen: dict[int, list[int]] = defaultdict(list)
        self.epoch_start: dict[int, dict] = {}
        self.estimated_steps: list[int] = []  # what configure_optimizers saw, each call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        self.seen[self.current_epoch] += index.tolist()
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        if not self.sam:
            return loss
        optimizer = self.optimizers().optimizer
        self.manual_backward(loss)
        optimizer.first_step(zero_grad=True)
        self.manual_backward(F.cross_entropy(self(x), y))
        optimizer.second_step(zero_grad=True)
        return loss

    def on_train_epoch_start(self) -> None:
        optimizer = self.trainer.optimizers[0]
        base = optimizer.base_optimizer if self.sam else optimizer
        self.epoch_start[self.current_epoch] = {
            "weights": [p.detach().clone() for p in self.parameters()],
            "optimizer_state": len(base.state),
            "lr": optimizer.param_groups[0]["lr"],
        }

    def configure_optimizers(self):
        self.estimated_steps.append(self.trainer.estimated_stepping_batches)
        if self.sam:
            return SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def trainer(**kwargs) -> pl.Trainer:
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kwargs,
    }
    return pl.Trainer(**settings)


class ShownMessages(logging.Handler):
    """The USEFUL messages Lightning's console output shows (its ``lightning.pytorch`` logger)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("USEFUL"):
            self.messages.append(record.getMessage())


def _run_scenario(name: str, out: Path) -> None:
    if name.startswith("useful"):
        model = Model(sam=name == "useful_sam")
        data = Data("stateful" if name == "useful_stateful" else "plain")
        useful = USEFUL(separating_epoch=2, find_kwargs={"backend": "sklearn"})
        callbacks = [useful]
        max_epochs = 2
    else:
        model, data, useful, callbacks, max_epochs = Model(), Data(name), None, [], 2
    initial = [p.detach().clone() for p in model.parameters()]
    fit = trainer(devices=2, strategy="ddp", max_epochs=max_epochs, callbacks=callbacks)
    shown = ShownMessages()
    logging.getLogger("lightning.pytorch").addHandler(shown)
    try:
        fit.fit(model, datamodule=data)
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(shown)
    record = {"seen": model.seen, "world_size": fit.world_size, "shown": shown.messages}
    if useful is not None:
        restart = model.epoch_start[useful.separating_epoch]
        record["selection"] = useful.selection.indices.tolist()
        record["restarted_from_w0"] = all(
            torch.equal(a, b) for a, b in zip(restart["weights"], initial, strict=True)
        )
        record["fresh_optimizer"] = restart["optimizer_state"] == 0
    (out / f"{name}_rank{fit.global_rank}.json").write_text(json.dumps(record))


SCENARIOS = (
    "sampler_early",
    "sampler",
    "dataset",
    "useful",
    "useful_sam",
    "useful_stateful",
)

if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    for scenario in sys.argv[2:] or SCENARIOS:
        _run_scenario(scenario, out_dir)

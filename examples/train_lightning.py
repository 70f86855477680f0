"""USEFUL in PyTorch Lightning: one ``trainer.fit`` with the ``USEFUL`` callback.

The module and datamodule below are ordinary Lightning code on the paper's synthetic task
(Definition 3.1, the two-layer cubic CNN of Section 5.1); the callback runs phase 1 for the
separating epoch, selects the slow-learnable examples (scored here against the planted truth:
the examples without the fast-learnable feature), and restarts from the initial weights with
a fresh optimizer on the upsampled data for ``--epochs`` epochs.

Run:
    python examples/train_lightning.py                        # one CPU process
    python examples/train_lightning.py --separating-epoch auto --method sam+useful
    python examples/train_lightning.py --devices 2 --strategy ddp   # 2 processes (gloo on CPU)
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from useful_data import SAM
from useful_data.lightning import USEFUL
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data

METHODS = ("sgd", "sgd+useful", "sam", "sam+useful")


class SyntheticData(pl.LightningDataModule):
    def __init__(self, num_examples: int, batch_size: int, seed: int) -> None:
        super().__init__()
        self.train_set = make_simplicity_bias_data(num_examples, beta_d=0.5, seed=seed)
        self.test_set = make_simplicity_bias_data(num_examples, beta_d=0.5, seed=seed + 1000)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=1000)


class ToyModule(pl.LightningModule):
    """ToyCNN trained with SGD, or with SAM by manual optimization."""

    def __init__(self, sam: bool, lr: float, seed: int) -> None:
        super().__init__()
        self.net = ToyCNN(seed=seed)
        self.sam, self.lr = sam, lr
        self.automatic_optimization = not sam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = F.cross_entropy(self(inputs), targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        if self.sam:
            optimizer = self.optimizers().optimizer
            self.manual_backward(loss)
            optimizer.first_step(zero_grad=True)
            self.manual_backward(F.cross_entropy(self(inputs), targets))
            optimizer.second_step(zero_grad=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        accuracy = (self(inputs).argmax(1) == targets).float().mean()
        self.log("test_acc", accuracy, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.sam:
            return SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="sgd+useful")
    parser.add_argument("--num-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=40, help="phase 2's full schedule T")
    parser.add_argument(
        "--separating-epoch", default="10", help="t, or 'auto' to detect it from train_loss"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    data = SyntheticData(args.num_examples, args.batch_size, args.seed)
    model = ToyModule(sam=args.method.startswith("sam"), lr=args.lr, seed=args.seed)
    callbacks: list[pl.Callback] = []
    useful = None
    if args.method.endswith("+useful"):
        separating = None if args.separating_epoch == "auto" else int(args.separating_epoch)
        useful = USEFUL(separating, find_kwargs={"seed": args.seed})
        callbacks.append(useful)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    accuracy = float(trainer.callback_metrics["test_acc"])
    if trainer.is_global_zero:
        if useful is not None and useful.selection is not None:
            selection = useful.selection
            truth = ~data.train_set.has_fast_feature.numpy()
            hits = int((selection.mask & truth).sum())
            print(
                f"separating epoch {useful.separating_epoch}: selected "
                f"{selection.num_slow_learnable} of {selection.num_examples}, precision "
                f"{hits / max(selection.num_slow_learnable, 1):.3f} recall "
                f"{hits / max(int(truth.sum()), 1):.3f} (vs. the planted truth)"
            )
        print(
            f"{args.method}: {trainer.current_epoch} epochs on {trainer.world_size} "
            f"process(es), test accuracy {accuracy:.4f}"
        )
    return accuracy


if __name__ == "__main__":
    main()

"""USEFUL with the Hugging Face ``Trainer``: phase 1, the selection, phase 2 from W0.

1. Phase 1: a plain ``Trainer`` with the full schedule's arguments and a
   ``SeparatingEpochCallback``, which stops it after the separating epoch (a number, or
   ``auto``: a ``SeparatingEpoch`` fed the training loss the Trainer logs every epoch).
2. ``select_with_trainer``: ``trainer.predict`` over the training set, then
   ``find_slow_learnable`` on the logits; every process gets the same Selection.
3. Phase 2: ``USEFULTrainer`` from the same initial weights W0, with a fresh optimizer and
   schedule, on the training set with the slow-learnable examples twice. Its checkpoints
   carry the selection; ``--resume`` continues from the last one.

The data is the paper's synthetic task (Definition 3.1) and the model its two-layer CNN,
wrapped to return ``{"loss", "logits"}`` as the Trainer expects; the selection is scored
against the planted truth (the examples without the fast-learnable feature).

Run:
    python examples/train_huggingface.py --tiny                          # seconds on a CPU
    torchrun --nproc_per_node=2 examples/train_huggingface.py --tiny     # 2 processes
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from useful_data.huggingface import SeparatingEpochCallback, USEFULTrainer, select_with_trainer
from useful_data.separating_epoch import SeparatingEpoch
from useful_data.synthetic import SimplicityBiasData, ToyCNN, make_simplicity_bias_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import Trainer, TrainingArguments


class DictItems(Dataset):
    """The Trainer's collator takes dict items: ``{"x": patches, "labels": label}``."""

    def __init__(self, data: SimplicityBiasData) -> None:
        self.data = data
        self.targets = data.targets  # lets USEFULTrainer check the selection's labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x, label = self.data[index]
        return {"x": x, "labels": label}


class Classifier(nn.Module):
    """Any module whose forward takes the item's keys and returns the loss and logits."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.net = ToyCNN(seed=seed, init_std=0.1)  # learns within the first epochs

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.net(x)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def arguments(out: Path, args: argparse.Namespace, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(out),
        num_train_epochs=args.epochs,  # the full schedule, in phase 1 too
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        optim="sgd",
        logging_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--separating-epoch", default="auto", help="an epoch, or 'auto'")
    parser.add_argument("--batch-size", type=int, default=100, help="per process")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("useful_hf_run"))
    parser.add_argument("--resume", action="store_true", help="resume phase 2's last checkpoint")
    parser.add_argument("--tiny", action="store_true", help="a few seconds on a CPU")
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_examples, args.epochs, args.batch_size, args.lr = 400, 6, 50, 0.5
    if args.separating_epoch == "auto":
        separating: int | SeparatingEpoch = SeparatingEpoch(total_epochs=args.epochs)
    else:
        try:
            separating = int(args.separating_epoch)
        except ValueError:
            parser.error(f"--separating-epoch should be an integer or 'auto', "
                         f"but got {args.separating_epoch!r}")  # fmt: skip

    data = make_simplicity_bias_data(args.num_examples, seed=args.seed)
    train_set = DictItems(data)
    model = Classifier(seed=args.seed)
    w0 = copy.deepcopy(model.state_dict())  # the initial weights, for phase 2

    # 1. phase 1: the first epochs of the full schedule
    stop = SeparatingEpochCallback(separating)
    phase1 = Trainer(model, arguments(args.out / "phase1", args), train_dataset=train_set,
                     callbacks=[stop])  # fmt: skip
    phase1.train()
    log = print if phase1.is_world_process_zero() else (lambda *_a, **_k: None)
    log(f"phase 1 stopped after epoch {stop.epoch} of {args.epochs}")

    # 2. the selection (the synthetic data has no augmentation: the training set is its
    #    own eval view), on every process
    selection = select_with_trainer(phase1, train_set)  # prints its summary on the main process
    truth = ~data.has_fast_feature.numpy()
    hits = int((selection.mask & truth).sum())
    log(f"selected {selection.num_slow_learnable} of {selection.num_examples}: precision "
        f"{hits / max(selection.num_slow_learnable, 1):.3f} recall "
        f"{hits / max(int(truth.sum()), 1):.3f} (vs. the planted truth)")  # fmt: skip

    # 3. phase 2: W0, a fresh optimizer and schedule, the upsampled training set
    model.load_state_dict(w0)
    phase2_args = arguments(args.out / "phase2", args, save_strategy="epoch",
                            save_total_limit=2)  # fmt: skip
    phase2 = USEFULTrainer(model, phase2_args, train_dataset=train_set, selection=selection)
    phase2.train(resume_from_checkpoint=True if args.resume else None)
    test = make_simplicity_bias_data(args.num_examples, seed=args.seed + 1000)
    with torch.no_grad():
        device = next(model.parameters()).device
        predictions = model(test.inputs.to(device))["logits"].argmax(1).cpu()
    accuracy = float((predictions == test.targets).float().mean())
    log(f"phase 2: {phase2.state.global_step} steps; test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
    if torch.distributed.is_initialized():  # torchrun: the Trainer leaves the group open
        torch.distributed.destroy_process_group()

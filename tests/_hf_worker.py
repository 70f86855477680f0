"""Worker of tests/test_huggingface.py, run under ``torchrun --nproc_per_node 2`` (CPU, gloo).

Every way a ``transformers.Trainer`` user can train on USEFUL's upsampled data, each for two
epochs on N=40 examples of which 10 are slow-learnable (batch 5 per process): the model
records the dataset index of every item it trains on, and rank 0 writes what all ranks saw,
epoch by epoch, to the JSON file named by ``argv[1]``. Then the whole workflow: phase 1 with
`SeparatingEpochCallback`, `select_with_trainer` on both ranks, `USEFULTrainer` from W0,
and a resume from a mid-epoch checkpoint. A user's own sampler is built as the guide says,
``num_replicas=1, rank=0``; one built without it must refuse to train, on every rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from useful_data import UpsampleSampler, USEFULDataset, find_slow_learnable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _two_processes import BATCH, Items, N, fixed_selection, flat, gathered

# A sampler built here, before TrainingArguments creates the process group.
SAMPLER_BEFORE_GROUP: UpsampleSampler | None = None
GROUP_BEFORE = dist.is_available() and dist.is_initialized()


def tiny_model_classes() -> tuple[type, type]:
    from transformers import PretrainedConfig, PreTrainedModel

    class TinyConfig(PretrainedConfig):
        model_type = "useful-tiny"

        def __init__(self, width: int = 4, num_labels: int = 2, **kwargs):
            self.width = width
            super().__init__(num_labels=num_labels, **kwargs)

    class TinyModel(PreTrainedModel):
        config_class = TinyConfig

        def __init__(self, config):
            super().__init__(config)
            self.linear = nn.Linear(config.width, config.num_labels)
            self.seen: list[list[list[int]]] = []  # epoch -> batch -> dataset indices
            self.post_init()

        def forward(self, x, labels=None, index=None):
            if self.training and index is not None:
                if not self.seen:
                    self.seen.append([])
                self.seen[-1].append(index.tolist())
            logits = self.linear(x)
            loss = F.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    return TinyConfig, TinyModel


def main(out: str) -> None:
    global SAMPLER_BEFORE_GROUP
    data = Items()
    selection = fixed_selection(data)
    SAMPLER_BEFORE_GROUP = UpsampleSampler(selection, N, seed=0, num_replicas=1, rank=0)

    from transformers import Trainer, TrainerCallback, TrainingArguments

    from useful_data.huggingface import SeparatingEpochCallback, USEFULTrainer, select_with_trainer

    TinyConfig, TinyModel = tiny_model_classes()
    tmp = Path(out).parent / "runs"  # the same folder on every rank

    class NewEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, model=None, **kwargs):
            model.seen.append([])

    def arguments(name: str, **overrides) -> TrainingArguments:
        kwargs = dict(
            output_dir=str(tmp / name),
            use_cpu=True,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=7,
            num_train_epochs=2,
            learning_rate=0.1,
            report_to="none",
            disable_tqdm=True,
            save_strategy="no",
            logging_strategy="no",
            seed=0,
        )
        kwargs.update(overrides)
        return TrainingArguments(**kwargs)

    args = arguments("counts")
    results: dict = {"group_before": GROUP_BEFORE, "world": dist.get_world_size()}

    class UserTrainer(Trainer):  # the override users write, returning our sampler
        sampler = None

        def _get_train_sampler(self, train_dataset=None):
            if self.sampler is not None:
                return self.sampler
            return UpsampleSampler(selection, seed=0, num_replicas=1, rank=0)

    def run(trainer) -> list[list[int]]:
        trainer.model.seen.clear()
        trainer.train()
        epochs = [flat(batches) for batches in trainer.model.seen]
        return [flat(ranks) for ranks in zip(*gathered(epochs), strict=True)]

    cases = {
        "dataset": lambda: Trainer(
            TinyModel(TinyConfig()),
            args,
            train_dataset=USEFULDataset(data, selection),
            callbacks=[NewEpoch()],
        ),
        "sampler_after_group": lambda: UserTrainer(
            TinyModel(TinyConfig()), args, train_dataset=data, callbacks=[NewEpoch()]
        ),
        "useful_trainer": lambda: USEFULTrainer(
            TinyModel(TinyConfig()),
            args,
            train_dataset=data,
            selection=selection,
            callbacks=[NewEpoch()],
        ),
    }
    counts = {name: run(make()) for name, make in cases.items()}
    before = UserTrainer(TinyModel(TinyConfig()), args, train_dataset=data, callbacks=[NewEpoch()])
    before.sampler = SAMPLER_BEFORE_GROUP
    counts["sampler_before_group"] = run(before)
    results["counts"] = counts
    forgot = UserTrainer(TinyModel(TinyConfig()), args, train_dataset=data, callbacks=[NewEpoch()])
    forgot.sampler = UpsampleSampler(selection, seed=0)  # num_replicas=1, rank=0 forgotten
    try:
        forgot.train()
        refused = "trained"
    except RuntimeError as err:
        refused = str(err)
    results["forgotten_switch"] = gathered(refused)

    # --- the workflow: phase 1 from W0, selection on both ranks, phase 2 from W0 -------------
    torch.manual_seed(0)
    model = TinyModel(TinyConfig())
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    stop = SeparatingEpochCallback(2)
    phase1 = Trainer(
        model,
        arguments("phase1", num_train_epochs=4),
        train_dataset=data,
        callbacks=[stop, NewEpoch()],
    )
    phase1.train()
    results["phase1_epoch"] = [phase1.state.epoch, stop.epoch, len(model.seen)]
    found = select_with_trainer(phase1, data, backend="sklearn", progress=False)
    with torch.no_grad():  # the same selection from the logits of one local forward pass
        local = model.eval()(data.x)["logits"]
    alone = find_slow_learnable(
        logits=local, targets=data.targets, backend="sklearn", distributed=False
    )
    results["selection_masks"] = gathered(found.mask.tolist())
    results["selection_alone"] = alone.mask.tolist()

    class StartWeights(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            sd = model.state_dict()
            self.from_w0 = all(torch.equal(sd[k], v) for k, v in w0.items())

    model.load_state_dict(w0)
    start = StartWeights()
    steps_per_epoch = -(-(N + found.num_slow_learnable) // (2 * BATCH))
    save_step = steps_per_epoch + 2  # two steps into epoch 1
    results["save_step"], results["steps_per_epoch"] = save_step, steps_per_epoch
    phase2_args = arguments(
        "phase2", num_train_epochs=3, save_strategy="steps", save_steps=save_step
    )
    phase2 = USEFULTrainer(
        model, phase2_args, train_dataset=data, selection=found, callbacks=[NewEpoch(), start]
    )
    model.seen.clear()
    phase2.train()
    full = gathered(model.seen)  # rank -> epoch -> batches
    results["phase2_from_w0"] = gathered(start.from_w0)
    results["phase2_optimizer_steps"] = phase2.state.global_step
    per_rank = [[flat(batches) for batches in epochs] for epochs in full]
    results["phase2_epochs"] = [flat(ranks) for ranks in zip(*per_rank, strict=True)]
    # resume two steps into epoch 1, with the selection the checkpoint holds
    checkpoint = Path(phase2_args.output_dir) / f"checkpoint-{save_step}"
    results["checkpoint_has_selection"] = (checkpoint / "useful_selection.npz").is_file()
    resumed = USEFULTrainer(
        TinyModel(TinyConfig()),
        phase2_args,
        train_dataset=data,
        selection=None,
        callbacks=[NewEpoch()],
    )
    resumed.model.seen.clear()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    results["resume_adopted"] = bool(np.array_equal(resumed.selection.mask, found.mask))
    results["resumed_batches"] = gathered(resumed.model.seen)
    results["original_batches"] = full

    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])

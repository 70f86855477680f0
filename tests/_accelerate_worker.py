"""Worker of tests/test_accelerate.py, run under ``torchrun --nproc_per_node 2`` (CPU, gloo).

A hand-written loop under ``accelerator.prepare``, two epochs on N=40 examples of which 10 are
slow-learnable (batch 5 per process), in every way a user would pass the upsampled data:
`USEFULDataset` with ``shuffle=True``; `UpsampleSampler` built as docs/guides/accelerate.md
says (``num_replicas=1, rank=0``), before or after ``Accelerator()``. The loop records the
dataset index of every item it trains on; rank 0 writes what all ranks saw, epoch by epoch, to
the JSON file named by ``argv[1]``. Also: a sampler built without the switch (refused on every
rank), the selection on both ranks, a resumed epoch through ``accelerator.skip_first_batches``,
and the example's learning-rate schedule over a padded last round.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _two_processes import BATCH, Items, N, fixed_selection, flat, gathered, load_example

from useful_data import UpsampleSampler, USEFULDataset, find_slow_learnable


def main(out: str) -> None:
    data = Items()
    selection = fixed_selection(data)
    before = UpsampleSampler(selection, N, seed=0, num_replicas=1, rank=0)  # no group yet

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    results: dict = {"world": accelerator.num_processes}

    rank_epochs: dict[str, list[list[int]]] = {}  # this rank's items, per case and epoch

    def train(case: str, loader: DataLoader) -> list[list[int]]:
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        epochs = []
        for epoch in range(2):
            loader.set_epoch(epoch)  # the prepared loader passes it on to the sampler
            seen = []
            for batch in loader:
                seen += batch["index"].tolist()
                loss = F.cross_entropy(model(batch["x"]), batch["labels"])
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            epochs.append(seen)
        rank_epochs[case] = epochs
        return [flat(ranks) for ranks in zip(*gathered(epochs), strict=True)]

    after = UpsampleSampler(selection, N, seed=0, num_replicas=1, rank=0)
    recipe = UpsampleSampler(selection, N, seed=0, num_replicas=1, rank=0)

    def loader(dataset, sampler=None) -> DataLoader:
        return DataLoader(dataset, batch_size=BATCH, sampler=sampler, shuffle=sampler is None)

    results["counts"] = {
        "dataset": train("dataset", loader(USEFULDataset(data, selection))),
        "sampler_before_accelerator": train("sampler_before_accelerator", loader(data, before)),
        "sampler_after_accelerator": train("sampler_after_accelerator", loader(data, after)),
        "recipe": train("recipe", loader(data, recipe)),
    }
    try:  # the switch forgotten: the sampler would shard by the process group, then Accelerate
        train("forgotten", loader(data, UpsampleSampler(selection, N, seed=0)))
        results["forgotten_switch"] = gathered("trained")
    except RuntimeError as err:
        results["forgotten_switch"] = gathered(str(err))

    # the selection, on every rank, from the prepared (DDP-wrapped) model
    model = accelerator.prepare(torch.nn.Linear(4, 2))
    found = find_slow_learnable(
        accelerator.unwrap_model(model), data, backend="sklearn", progress=False
    )
    alone = find_slow_learnable(
        accelerator.unwrap_model(model), data, backend="sklearn", progress=False,
        distributed=False,
    )  # fmt: skip
    results["selection_masks"] = gathered(found.mask.tolist())
    results["selection_alone"] = alone.mask.tolist()

    # resuming two batches into epoch 1, as a new process would: a new sampler and loader;
    # set the epoch on the prepared loader, then skip (the skipping loader wraps the
    # sampler out of reach of its own set_epoch)
    def epoch1(skip: int) -> list[int]:
        sampler = UpsampleSampler(selection, N, seed=0, num_replicas=1, rank=0)
        prepared = accelerator.prepare(loader(data, sampler))
        prepared.set_epoch(1)
        batches = accelerator.skip_first_batches(prepared, skip) if skip else prepared
        return flat(batch["index"].tolist() for batch in batches)

    results["resume"] = gathered([rank_epochs["recipe"][1], epoch1(2)])

    # the example's phase 2 with a padded last round: 125 items in batches of 10 are 13
    # batches, 7 per rank; its cosine schedule must reach 0 at the last step, not before
    from useful_data.synthetic import ToyCNN, make_simplicity_bias_data

    example = load_example("train_accelerate")
    toy = make_simplicity_bias_data(100, seed=0)
    toy_selection = np.arange(100) % 4 == 0  # 25 slow-learnable: 125 items per epoch
    toy_loader = example.upsampled_loader(toy, toy_selection, batch_size=10, seed=0)
    results["example_lrs"] = example.train(
        accelerator, ToyCNN(seed=0), toy_loader, epochs=2, total_epochs=2, lr=0.1
    )
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps(results))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])

"""Data-path overhead of USEFUL: `UpsampleSampler` and `USEFULDataset` vs plain PyTorch.

1. Sampler: one epoch of `UpsampleSampler` indices vs `torch.utils.data.RandomSampler` over
   a dataset of the same (upsampled) length.
2. DataLoader throughput (items/s) of `USEFULDataset(dataset, selection)` vs the plain
   dataset, ``num_workers`` 0 and 2, batch 128, shuffled.
3. The wrapper alone: fetching the same items, batch by batch, through
   ``USEFULDataset.__getitems__`` (what a DataLoader calls) vs the plain dataset's
   per-item list (what a DataLoader does without a wrapper): no loader, no sampler, so
   the wrapper's own cost is not buried in their noise.

Each ratio is USEFUL's time per item over the baseline's, medians of interleaved repeats.
Target: <= 1.02. Run: ``python benchmarks/bench_data.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import base_parser, describe_machine, interleaved, median_and_best, print_table

from useful_data import UpsampleSampler, USEFULDataset


class Images(Dataset):
    """Map-style dataset of uint8 32x32 images converted to float on access, like a
    torchvision dataset after ToTensor (the per-item work a real pipeline does)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.targets = torch.randint(0, 10, (n,), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.data[index].float().div_(255), self.targets[index]


def slow_mask(n: int, fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: int(fraction * n)]] = True
    return mask


def section_sampler(args) -> None:
    rows = []
    for n in [10_000] if args.quick else [50_000, 1_281_167]:
        mask = slow_mask(n)
        upsampled = UpsampleSampler(mask, seed=0)
        plain = RandomSampler(range(len(upsampled)), generator=torch.Generator().manual_seed(0))
        epoch = [0]

        def run_upsample(sampler=upsampled, epoch=epoch):
            sampler.set_epoch(epoch[0])
            epoch[0] += 1
            for _ in sampler:
                pass

        def run_plain(sampler=plain):
            for _ in sampler:
                pass

        run_upsample(), run_plain()  # warm-up
        base, cand = interleaved(run_plain, run_upsample, 3 if args.quick else 7)
        items = len(upsampled)
        ratio, best = median_and_best(base, cand)
        rows.append([n, items, items / median(base), items / median(cand), ratio, best])
    print_table(
        "Sampler: one epoch of indices (30% slow-learnable, upsample_factor=2)",
        [
            "N",
            "indices/epoch",
            "RandomSampler items/s",
            "UpsampleSampler items/s",
            "ratio",
            "ratio of best",
        ],
        rows,
    )


def loader_rate(dataset: Dataset, num_workers: int, max_batches: int) -> float:
    loader = DataLoader(
        dataset,
        batch_size=128,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
    start = time.perf_counter()
    items = 0
    for i, (x, _y) in enumerate(loader):
        items += x.shape[0]
        if i + 1 >= max_batches:
            break
    return items / (time.perf_counter() - start)


def section_loader(args) -> None:
    n = 4_000 if args.quick else 50_000
    plain = Images(n)
    useful = USEFULDataset(plain, slow_mask(n))
    max_batches = 20 if args.quick else 200
    rows = []
    for workers in (0, 2):
        repeats = 2 if args.quick else (21 if workers == 0 else 7)
        loader_rate(plain, workers, 2)  # warm-up
        loader_rate(useful, workers, 2)
        items = max_batches * 128
        base, cand = interleaved(
            lambda ds=plain, w=workers: loader_rate(ds, w, max_batches),
            lambda ds=useful, w=workers: loader_rate(ds, w, max_batches),
            repeats,
        )
        ratio, best = median_and_best(base, cand)
        rows.append([workers, items, items / median(base), items / median(cand), ratio, best])
    print_table(
        f"DataLoader throughput, USEFULDataset vs plain dataset (N={n}, batch 128, shuffled)",
        [
            "num_workers",
            "items/run",
            "plain items/s",
            "USEFULDataset items/s",
            "ratio",
            "ratio of best",
        ],
        rows,
    )
    print(
        "\nratio = time per item with USEFULDataset / time per item with the plain dataset "
        "(medians of repeats); ratio of best = the same for the fastest repeat of each."
    )


def section_wrapper(args) -> None:
    n = 4_000 if args.quick else 50_000
    plain = Images(n)
    useful = USEFULDataset(plain, slow_mask(n))
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(len(useful), generator=g)[: 50 * 128].tolist()
    batches = [order[i : i + 128] for i in range(0, len(order), 128)]
    mapped = [[int(useful.index_map[i]) for i in batch] for batch in batches]  # same items

    def run_plain():
        for batch in mapped:
            [plain[i] for i in batch]

    def run_useful():
        for batch in batches:
            useful.__getitems__(batch)

    run_plain(), run_useful()  # warm-up
    base, cand = interleaved(run_plain, run_useful, 5 if args.quick else 31)
    items = len(order)
    ratio, best = median_and_best(base, cand)
    print_table(
        f"The wrapper alone: the same {items} items in batches of 128 (N={n})",
        ["plain µs/item", "USEFULDataset µs/item", "ratio", "ratio of best"],
        [[median(base) / items * 1e6, median(cand) / items * 1e6, ratio, best]],
    )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    describe_machine(args)
    section_sampler(args)
    section_loader(args)
    section_wrapper(args)


if __name__ == "__main__":
    main()

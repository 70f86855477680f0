"""The selection against a plain eval loop of the same model, and the eval pass's settings.

#27's target: on a GPU, the selection (`find_slow_learnable`: the eval pass and the per-class
2-means) is no slower than 1.05x a user's own ``model(x)`` loop over the same data. Every
variant runs once per round, rounds alternate the order, and the table gives medians over the
rounds (the plain loop is the baseline). The collection variants swap two settings of the
library's eval pass: pinned DataLoader memory (the default on a GPU) and copying the outputs
to the CPU in chunks of 32 MiB (1.0) or after every batch (0.1).

Run: ``python benchmarks/bench_eval_pass.py --device cuda`` (timm resnet18, N=50,000
CIFAR-shaped images, 7 rounds); ``--quick`` is a CPU smoke run.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import base_parser, describe_machine, print_table
from bench_selection import eval_pass, small_cnn, synthetic_images

import useful_data.collect as collect
from useful_data import find_slow_learnable
from useful_data._batches import loader as pinned_loader


def unpinned(dataset: Any, batch_size: int, num_workers: int, collate_fn: Any, device: Any) -> Any:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=False)  # fmt: skip


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="images")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    args = parser.parse_args()
    describe_machine(args)
    n, rounds = (300, 1) if args.quick else (args.n, args.rounds)
    data = synthetic_images(n)
    if args.device == "cuda":
        import timm

        model = timm.create_model("resnet18", num_classes=10).cuda()
    else:
        model = small_cnn()
    default_loader, default_chunk = collect.loader, collect._CHUNK_BYTES

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    def run(pin: bool, chunk: int, select: bool = False) -> float:
        collect.loader = pinned_loader if pin else unpinned  # type: ignore[assignment]
        collect._CHUNK_BYTES = chunk
        sync()
        start = time.perf_counter()
        try:
            if select:
                find_slow_learnable(model, data, progress=False)
            else:
                collect.collect_outputs(model, data, progress=False)
            sync()
        finally:
            collect.loader, collect._CHUNK_BYTES = default_loader, default_chunk
        return time.perf_counter() - start

    chunk = 32 * 2**20
    variants = {
        "plain eval loop": lambda: eval_pass(model, data, args.device, 256),
        "collect: pinned, chunked (1.0)": lambda: run(True, chunk),
        "collect: pinned, copy per batch (0.1)": lambda: run(True, 0),
        "collect: unpinned, chunked": lambda: run(False, chunk),
        "collect: unpinned, copy per batch": lambda: run(False, 0),
        "find_slow_learnable (1.0 defaults)": lambda: run(True, chunk, select=True),
    }
    for fn in variants.values():
        fn()  # warm-up: cuDNN, the allocator, first-call costs
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(variants[name]())
    base = statistics.median(times["plain eval loop"])
    rows = [
        [name, statistics.median(t), min(t), statistics.median(t) / base]
        for name, t in times.items()
    ]
    print_table(
        f"Selection vs a plain eval loop ({args.device}, N={n}, batch 256, {rounds} rounds)",
        ["variant", "median s", "min s", "median / plain eval loop"],
        rows,
    )
    print("\nTarget (GPU): find_slow_learnable / plain eval loop <= 1.05.")


if __name__ == "__main__":
    main()

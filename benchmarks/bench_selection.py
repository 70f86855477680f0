"""What USEFUL's extra step costs: selection vs one training epoch, clustering at scale, memory.

Sections (each prints a Markdown table of ratios against a baseline from the same run):

1. Selection cost: (output collection + per-class 2-means) / (one SGD epoch), same model and
   data. The floor is one forward pass, about 1/3 of an epoch. Also the clustering share, and
   the selection against a plain eval pass of the same model (a user's ``model(x)`` loop).
2. Scale: clustering alone on synthetic logits shaped like CIFAR-10 (50k x 10), CIFAR-100
   (50k x 100) and ImageNet-1k (1.28M x 1000), per backend, against scikit-learn.
3. Peak memory of output collection vs a naive list-of-batches + torch.cat baseline.
4. (``--sections epoch``, GPU) ImageNet-1k's clustering against one ImageNet-1k epoch of a
   timm ResNet-50 (bf16 autocast, channels_last, batch 256), the epoch extrapolated from the
   measured step time on synthetic 224x224 inputs already on the GPU (no data loading: the
   shortest such epoch can be, so the share is an upper bound).

Run: ``python benchmarks/bench_selection.py [--quick] [--device cuda]`` (see README.md here).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import base_parser, describe_machine, print_table

from useful_data._batches import default_batch_size
from useful_data._cluster import KMeans2, cuml_usable
from useful_data.collect import collect_outputs
from useful_data.slow_learnable import _select_from_logits as select_from_logits


def small_cnn(num_classes: int = 10) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def synthetic_images(n: int, num_classes: int = 10, seed: int = 0) -> TensorDataset:
    """32x32 images whose class shifts a colour channel, so one epoch learns something."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(num_classes, (n,), generator=g)
    images = torch.randn(n, 3, 32, 32, generator=g)
    images[torch.arange(n), targets % 3] += (targets.float() / num_classes)[:, None, None]
    data = TensorDataset(images, targets)
    data.targets = targets  # type: ignore[attr-defined]
    return data


@torch.inference_mode()
def eval_pass(model: nn.Module, data: TensorDataset, device: str, batch_size: int) -> float:
    """Seconds of a plain eval pass: the user's own ``model(x)`` loop over the data, in order,
    outputs kept on the device and concatenated (what a selection must not cost much more than)."""
    loader = DataLoader(data, batch_size=batch_size)
    model.eval()
    start = time.perf_counter()
    outputs = [model(x.to(device)) for x, _ in loader]
    torch.cat(outputs)
    if device == "cuda":
        torch.cuda.synchronize()
    model.train()
    return time.perf_counter() - start


def train_epoch(
    model: nn.Module,
    data: TensorDataset,
    device: str,
    max_batches: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> float:
    loader = DataLoader(
        data, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        x = x.to(device).contiguous(memory_format=memory_format)
        loss = nn.functional.cross_entropy(model(x), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@contextlib.contextmanager
def timed_kmeans(spent: list[float]):  # type: ignore[no-untyped-def]
    """Time the k-means proper (`KMeans2.fit_predict_many`) inside `select_from_logits`; the
    rest of ``cluster s`` is the loss, the per-class bookkeeping and the diagnostics."""
    original = KMeans2.fit_predict_many

    def timed(self, x, groups):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return original(self, x, groups)  # returns labels on the CPU: synchronised
        finally:
            spent.append(time.perf_counter() - start)

    KMeans2.fit_predict_many = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        KMeans2.fit_predict_many = original  # type: ignore[method-assign]


def section_selection_cost(args) -> None:
    n = 256 if args.quick else args.n
    data = synthetic_images(n)
    if args.device == "cuda":
        import timm

        model = timm.create_model("resnet18", num_classes=10).to(args.device)
        name = "timm resnet18"
    else:
        torch.manual_seed(0)
        model = small_cnn().to(args.device)
        name = "small CNN (3 conv + BN)"
    # The user's training loop: contiguous inputs, or (--train-channels-last) a channels_last
    # model fed channels_last inputs, as timm's train.py --channels-last does.
    memory_format = torch.channels_last if args.train_channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    train_epoch(model, data, args.device, max_batches=3, memory_format=memory_format)  # warm-up
    epoch_before = train_epoch(model, data, args.device, memory_format=memory_format)
    # (backend, channels_last, batch_size): the library's default call first, then the
    # inputs fed as they come, scikit-learn, cuML where usable, and the default call before
    # channels_last=None and the per-device batch size existed (256, as they come).
    batch = args.collect_batch
    variants = [("auto", None, batch), ("auto", False, batch), ("sklearn", None, batch)]
    if cuml_usable():
        variants.append(("cuml", None, batch))
    if batch is None and args.device == "cpu":
        variants.append(("auto", False, 256))
    for backend, channels_last, _ in variants:  # warm-up: first-call costs stay out
        select_from_logits(
            *collect_outputs(
                model, Subset(data, range(64)), progress=False, channels_last=channels_last
            ),
            backend=backend,
            device=args.device,
        )
    eval_pass(model, Subset(data, range(64)), args.device, 64)  # warm-up, not timed
    rows, evals = [], []
    for backend, channels_last, batch_size in variants:
        evals.append(
            eval_pass(model, data, args.device, batch_size or default_batch_size(args.device))
        )
        start = time.perf_counter()
        # exactly what find_slow_learnable(model, data, batch_size=...) runs, timed in two parts
        outputs, targets = collect_outputs(
            model,
            data,
            batch_size=batch_size,
            device=args.device,
            progress=False,
            channels_last=channels_last,
        )
        if args.device == "cuda":
            torch.cuda.synchronize()
        collect = time.perf_counter() - start
        start, kmeans = time.perf_counter(), []
        with timed_kmeans(kmeans):
            select_from_logits(outputs, targets, backend=backend, device=args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        cluster = time.perf_counter() - start
        layout = {None: "auto", False: "as they come", True: "channels_last"}[channels_last]
        batch_size = batch_size or default_batch_size(args.device)
        rows.append([backend, layout, batch_size, collect, cluster, sum(kmeans), evals[-1]])
    epoch_after = train_epoch(model, data, args.device, memory_format=memory_format)
    epoch = (epoch_before + epoch_after) / 2
    table = [
        [
            name,
            n,
            backend,
            layout,
            batch_size,
            epoch,
            collect,
            cluster,
            kmeans,
            (collect + cluster) / epoch,
            collect / epoch,
            cluster / (collect + cluster),
            (collect + cluster) / evaluation,
        ]
        for backend, layout, batch_size, collect, cluster, kmeans, evaluation in rows
    ]
    print_table(
        f"Selection cost vs one training epoch ({args.device}, N={n}, C=10, training inputs "
        f"{'channels_last' if args.train_channels_last else 'contiguous'})",
        [
            "model",
            "N",
            "backend",
            "channels_last",
            "batch",
            "epoch s",
            "collect s",
            "cluster s",
            "k-means s",
            "selection/epoch",
            "collect/epoch",
            "cluster share",
            "selection/eval pass",
        ],
        table,
    )
    print(
        f"\nepoch measured before and after the selections: {epoch_before:.3g} s, "
        f"{epoch_after:.3g} s; a plain eval pass at the row's batch size ran right before each "
        f"row's selection: {', '.join(f'{e:.3g}' for e in evals)} s. Targets: selection/epoch "
        "<= 0.40 (floor ~0.33, one forward); selection/eval pass <= 1.05 on a GPU."
    )


def class_block(label: int, n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Logits of one class: 70% learned (margin ~5), 30% slow (margin ~1), like early training."""
    rng = np.random.default_rng([seed, label])
    x = rng.standard_normal((n, num_classes), dtype=np.float32)
    learned = int(0.7 * n)
    x[:learned, label] += 5.0
    x[learned:, label] += 1.0
    return x[rng.permutation(n)]


GROUP = 200  # classes made and clustered per call (1 GB of float32 at ImageNet-1k's shape)


def time_clustering(fit_many, shape, classes_timed: int) -> tuple[float, float]:
    """Wall and process-CPU seconds of ``fit_many`` on ``classes_timed`` classes (given in
    groups of at most GROUP, as the library gets all classes at once), scaled to all."""
    n_total, num_classes = shape
    per_class = n_total // num_classes
    warm = class_block(0, min(per_class, 64), num_classes)
    fit_many(warm, [np.arange(len(warm))])  # one-time warm-up, not timed
    wall = cpu = 0.0
    for first in range(0, classes_timed, GROUP):
        blocks = [
            class_block(label, per_class, num_classes)
            for label in range(first, min(first + GROUP, classes_timed))
        ]
        x = np.concatenate(blocks)  # one class after another, as the library's (N, C) outputs
        del blocks
        groups = [np.arange(i * per_class, (i + 1) * per_class) for i in range(len(x) // per_class)]
        start, start_cpu = time.perf_counter(), time.process_time()
        fit_many(x, groups)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    scale = num_classes / classes_timed  # every class has the same size
    return wall * scale, cpu * scale


def one_thread(fit):
    """Run ``fit`` with one OpenMP thread for scikit-learn and one intra-op thread for torch."""

    def run(x, groups):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1, user_api="openmp"):
                return fit(x, groups)
        finally:
            torch.set_num_threads(threads)

    return run


def section_scale(args) -> None:
    shapes = {
        "CIFAR-10": (50_000, 10),
        "CIFAR-100": (50_000, 100),
        "ImageNet-1k": (1_280_000, 1000),
    }
    if args.quick:
        shapes = {"CIFAR-10": (50_000, 10), "CIFAR-100": (50_000, 100)}
    threads = torch.get_num_threads()
    rows = []
    for name, shape in shapes.items():
        num_classes = shape[1]
        few = min(num_classes, 1 if args.quick else args.sklearn_classes)
        every = 1 if args.quick else num_classes
        sklearn = KMeans2("sklearn", n_init=10, seed=0).fit_predict_many
        fast = KMeans2("torch", n_init=10, seed=0).fit_predict_many
        runs = [
            ("sklearn", f"sklearn, {threads} threads (baseline)", few, sklearn),
            ("sklearn", "sklearn, 1 thread", few, one_thread(sklearn)),
            ("torch-cpu", f"torch cpu (auto), {threads} threads", every, fast),
            ("torch-cpu", "torch cpu, 1 thread", every, one_thread(fast)),
        ]
        if args.device == "cuda":
            on_gpu = KMeans2("torch", n_init=10, seed=0, device="cuda").fit_predict_many
            runs.append(("torch-cuda", "torch cuda (auto)", every, on_gpu))
        if cuml_usable():
            cuml = KMeans2("cuml", n_init=10, seed=0).fit_predict_many
            runs.append(("cuml", "cuml", every, cuml))
        runs = [run[1:] for run in runs if run[0] in args.rows.split(",")]
        base = None
        for backend, timed, fit in runs:
            wall, cpu = time_clustering(fit, shape, timed)
            base = wall if base is None else base  # the first row run is the baseline
            rows.append(
                [
                    name,
                    f"{shape[0]} x {num_classes}",
                    backend,
                    f"{timed}/{num_classes}",
                    wall,
                    cpu,
                    wall / base,
                ]
            )
    print_table(
        "Clustering alone (2-means per class, n_init=10), seconds for all classes",
        [
            "data",
            "N x C",
            "backend",
            "classes timed",
            "wall s",
            "cpu s",
            "ratio vs sklearn" if args.rows.startswith("sklearn") else "ratio vs first row",
        ],
        rows,
    )
    print(
        "\nClasses have equal sizes, so a backend timed on k of C classes is extrapolated as "
        "time * C / k. cpu s = process CPU time (all threads). Target for ImageNet-1k: <= 60 s "
        "on the 2-core CPU, <= 10 s on one GPU."
    )


def resnet50_step_seconds(batch: int) -> float:
    """Median seconds of one SGD step of timm's resnet50 on 224x224 inputs already on the GPU
    (bf16 autocast, channels_last): the shortest an ImageNet-1k training step can be."""
    import timm

    model = timm.create_model("resnet50", num_classes=1000).to("cuda")
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, device="cuda", generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(1000, (batch,), device="cuda", generator=g)

    def steps(count: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / count

    steps(10)  # warm-up: cuDNN autotuning, allocator
    return statistics.median(steps(10) for _ in range(3))


def section_imagenet_epoch(args) -> None:
    if args.device != "cuda":
        print("\n(section epoch: needs --device cuda; skipped)")
        return
    n_images, batch = 1_281_167, 256
    step = resnet50_step_seconds(batch)
    epoch = step * math.ceil(n_images / batch)
    torch.cuda.empty_cache()
    on_gpu = KMeans2("torch", n_init=10, seed=0, device="cuda").fit_predict_many
    cluster, _ = time_clustering(on_gpu, (1_280_000, 1000), 1000)
    print_table(
        "ImageNet-1k: clustering vs one epoch (timm resnet50, bf16, channels_last, batch 256)",
        ["step s", "epoch s (extrapolated)", "clustering s (1.28M x 1000)", "clustering / epoch"],
        [[step, epoch, cluster, cluster / epoch]],
    )
    print(
        "\nThe epoch is step time x 5005 steps on inputs already on the GPU (no data loading, "
        "so the shortest an epoch can be). Target: clustering / epoch < 0.05."
    )


MEMORY_DIM = 16


def memory_child(mode: str, n: int, num_classes: int) -> None:
    """Run one collection in a fresh process and print its peak RSS growth in bytes."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, MEMORY_DIM, generator=g))
    model = nn.Linear(MEMORY_DIM, num_classes)
    collect_outputs(model, TensorDataset(torch.randn(600, MEMORY_DIM)), progress=False)  # warm
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS

    def rss(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    before = rss("VmRSS:")
    if mode == "library":
        outputs, _ = collect_outputs(model, data, batch_size=256, progress=False)
    else:  # the naive way: keep every batch, then concatenate (two copies at the peak)
        batches = []
        with torch.inference_mode():
            for (x,) in DataLoader(data, batch_size=256):
                batches.append(model(x).float())
            outputs = torch.cat(batches)
        del batches
    print(rss("VmHWM:") - before, outputs.shape[0])


def section_memory(args) -> None:
    n, num_classes = (5_000, 400) if args.quick else (100_000, 1000)
    expected = n * num_classes * 4
    peaks = {}
    for mode in ("naive", "library"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", mode, str(n), str(num_classes)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        peaks[mode] = int(out[0])
    rows = [
        [
            mode,
            f"{n} x {num_classes}",
            expected / 2**20,
            peak / 2**20,
            peak / expected,
            peak / peaks["naive"],
        ]
        for mode, peak in peaks.items()
    ]
    print_table(
        "Peak memory of output collection (RSS growth in a fresh process)",
        ["method", "N x C", "N*C*4 MiB", "peak MiB", "peak / (N*C*4)", "ratio vs naive"],
        rows,
    )
    print("\nnaive = list of batch outputs + torch.cat (two copies at the peak).")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="images in section 1")
    parser.add_argument(
        "--collect-batch",
        type=int,
        help="batch size of the output collection (default: the library's, 128 on a CPU, "
        "256 on a GPU)",
    )
    parser.add_argument(
        "--train-channels-last",
        action="store_true",
        help="section 1: train a channels_last model on channels_last inputs (the baseline epoch)",
    )
    parser.add_argument(
        "--sklearn-classes",
        type=int,
        default=20,
        help="classes timed with scikit-learn per shape (extrapolated to all classes)",
    )
    parser.add_argument(
        "--sections",
        default="cost,scale,memory",
        help="comma-separated: cost, scale, memory, epoch (GPU only)",
    )
    parser.add_argument(
        "--rows",
        default="sklearn,torch-cpu,torch-cuda,cuml",
        help="scale section: which backends to time (comma-separated); the first is the baseline",
    )
    args = parser.parse_args()
    describe_machine(args)
    os.environ.setdefault("TQDM_DISABLE", "1")
    sections = set(args.sections.split(","))
    if "cost" in sections:
        section_selection_cost(args)
    if "scale" in sections:
        section_scale(args)
    if "memory" in sections:
        section_memory(args)
    if "epoch" in sections:
        section_imagenet_epoch(args)


if __name__ == "__main__":
    main()

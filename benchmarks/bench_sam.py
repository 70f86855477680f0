"""Benchmark: cost of a SAM step relative to two SGD steps, ours vs a per-parameter loop.

One run, one model, one batch. Every method runs the same training step on the same data:

- ``SGD``: forward, backward, ``SGD.step``;
- ``SAM (ours)``: forward/backward, ``first_step``, forward/backward, ``second_step``;
- ``SAM (ours) + frozen_bn_stats``: the same, second pass inside ``frozen_bn_stats``;
- ``reference (per-parameter loop)``: SAM written the textbook way in this file, a Python
  loop with one small kernel per parameter per operation, same base SGD.

A SAM step does two forward/backward passes, so the floor is ``2 x SGD``; the ratio column is
``ms/step / (2 x SGD ms/step)``. Measurements are interleaved (each repeat times every method,
in a rotating order) and the median over repeats is reported. A second table isolates the
optimizer's own work (perturb + restore, no forward/backward, no base step), where the
foreach kernels matter, on the same CNN and on a ResNet-18-sized parameter list.

Usage::

    python benchmarks/bench_sam.py            # full run (docs/benchmarks_sam.md)
    python benchmarks/bench_sam.py --quick    # tiny smoke run
    python benchmarks/bench_sam.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from useful_data.sam import SAM, frozen_bn_stats

SGD_KWARGS = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
RHO = 0.1


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    """Two conv blocks (conv, BatchNorm, ReLU, pool) and a linear head: 3x32x32 inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, num_classes),
    )


class LoopSAM:
    """Reference SAM, the per-parameter way: loops of small kernels, one per tensor."""

    def __init__(self, params: list[nn.Parameter], rho: float, **sgd_kwargs: float) -> None:
        self.params = params
        self.rho = rho
        self.base_optimizer = torch.optim.SGD(params, **sgd_kwargs)
        self.saved: dict[Tensor, Tensor] = {}

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        with_grad = [p for p in self.params if p.grad is not None]
        norm = torch.stack([p.grad.norm() for p in with_grad]).norm()
        for p in with_grad:
            self.saved[p] = p.clone()
            p.add_(p.grad * (self.rho / (norm + 1e-12)))
        if zero_grad:
            self.base_optimizer.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        for p, w in self.saved.items():
            p.copy_(w)
        self.saved.clear()

    @torch.no_grad()
    def second_step(self) -> None:
        self.restore()
        self.base_optimizer.step()
        self.base_optimizer.zero_grad()


def make_steps(
    model: nn.Module, x: Tensor, y: Tensor
) -> tuple[dict[str, Callable[[], None]], dict[str, object]]:
    """One training-step function per method, each with its own optimizer on ``model``."""
    sgd = torch.optim.SGD(model.parameters(), **SGD_KWARGS)
    ours = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **SGD_KWARGS)
    ours_bn = SAM(model.parameters(), torch.optim.SGD, rho=RHO, **SGD_KWARGS)
    loop = LoopSAM(list(model.parameters()), RHO, **SGD_KWARGS)

    def loss() -> Tensor:
        return F.cross_entropy(model(x), y)

    def sgd_step() -> None:
        loss().backward()
        sgd.step()
        sgd.zero_grad()

    def ours_step() -> None:
        loss().backward()
        ours.first_step(zero_grad=True)
        loss().backward()
        ours.second_step(zero_grad=True)

    def ours_bn_step() -> None:
        loss().backward()
        ours_bn.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            loss().backward()
        ours_bn.second_step(zero_grad=True)

    def loop_step() -> None:
        loss().backward()
        loop.first_step(zero_grad=True)
        loss().backward()
        loop.second_step()

    steps = {
        "SGD": sgd_step,
        "SAM (ours)": ours_step,
        "SAM (ours) + frozen_bn_stats": ours_bn_step,
        "reference (per-parameter loop)": loop_step,
    }
    return steps, {"SAM (ours)": ours, "reference (per-parameter loop)": loop}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], None]],
    device: torch.device,
    repeats: int,
    iters: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Mean ms per call in each of ``repeats`` rounds; methods interleaved, order rotated."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = clock()
            for _ in range(iters):
                fns[name]()
            sync(device)
            samples[name].append((clock() - start) * 1e3 / iters)
    return {name: Timing(values) for name, values in samples.items()}


class Timing:
    """Milliseconds per call over the repeats: the median, and the spread between repeats."""

    def __init__(self, samples: list[float]) -> None:
        self.median = statistics.median(samples)
        self.p25, _, self.p75 = statistics.quantiles(samples, n=4, method="inclusive")


def cuda_peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


def state_bytes(state: dict[Tensor, dict[str, Tensor]] | dict[Tensor, Tensor]) -> int:
    total = 0
    for value in state.values():
        tensors = value.values() if isinstance(value, dict) else [value]
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))
    return total


def overhead_fns(params: list[nn.Parameter]) -> dict[str, Callable[[], None]]:
    """Perturb and restore only (no forward/backward, no base step), gradients kept."""
    ours = SAM(params, torch.optim.SGD, rho=RHO, **SGD_KWARGS)
    loop = LoopSAM(params, RHO, **SGD_KWARGS)

    def ours_fn() -> None:
        ours.first_step()
        ours.unperturb()

    def loop_fn() -> None:
        loop.first_step()
        loop.restore()

    return {"SAM (ours)": ours_fn, "reference (per-parameter loop)": loop_fn}


def params_with_grads(model: nn.Module, device: torch.device, seed: int) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = list(model.to(device).parameters())
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator).to(device)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, which other "
        "processes on a shared machine distort less (use with --threads 1 on CPU)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error(f"--clock cpu measures CPU work only, but got --device {args.device}")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    batch_size, warmup, repeats, iters = (8, 1, 2, 1) if args.quick else (128, 3, 15, 3)
    overhead_repeats, overhead_iters = (2, 1) if args.quick else (15, 3)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=generator).to(device)
    model = small_cnn().to(device)
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))

    print("# SAM step time: ours vs a per-parameter-loop reference\n")
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        f"model: small CNN (2 conv + BN + linear), {n_params:,} parameters in {n_tensors} tensors;"
        f" batch {batch_size}x3x32x32; SGD(lr=0.1, momentum=0.9, wd=5e-4), rho={RHO}"
    )
    print(
        f"{args.clock} clock; median of {repeats} interleaved repeats x {iters} steps, "
        f"after {warmup} warm-up"
    )
    print(f"load average at start: {load_average()} ({os.cpu_count()} CPUs)\n")

    steps, optimizers = make_steps(model, x, y)
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = time_interleaved(steps, device, repeats, iters, clock)
    floor = 2 * times["SGD"].median
    print("| method | ms/step | ratio vs 2x SGD | spread between repeats (p25-p75 ms) |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in times.items():
        print(f"| {name} | {t.median:.2f} | {t.median / floor:.3f} | {t.p25:.2f}-{t.p75:.2f} |")

    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    loop: LoopSAM = optimizers["reference (per-parameter loop)"]  # type: ignore[assignment]
    F.cross_entropy(model(x), y).backward()
    loop.first_step(zero_grad=True)
    loop_bytes = state_bytes(loop.saved)  # its copies of w exist from first to second step
    loop.restore()
    ours_bytes = state_bytes(optimizers["SAM (ours)"].state)  # type: ignore[attr-defined]
    print("\nextra memory of SAM's own buffers (beyond the base SGD's momentum):\n")
    print("| method | stores | bytes | x parameter bytes | lifetime |")
    print("| --- | --- | ---: | ---: | --- |")
    print(
        f"| SAM (ours) | copy of w + e(w) | {ours_bytes:,} | {ours_bytes / param_bytes:.2f} "
        "| allocated once, reused every step |"
    )
    print(
        f"| reference | copy of w | {loop_bytes:,} | {loop_bytes / param_bytes:.2f} "
        "| allocated each step, freed after it |"
    )
    if device.type == "cuda":
        print("\nCUDA peak memory allocated during one step:\n")
        print("| method | peak MiB | extra vs SGD MiB |")
        print("| --- | ---: | ---: |")
        peaks = {name: cuda_peak_bytes(fn, device) for name, fn in steps.items()}
        for name, peak in peaks.items():
            extra = (peak - peaks["SGD"]) / 2**20
            print(f"| {name} | {peak / 2**20:.1f} | {extra:.1f} |")
    final_loss = F.cross_entropy(model(x), y).item()
    if not torch.isfinite(torch.tensor(final_loss)):
        print(f"\nwarning: the model diverged during timing (loss {final_loss})")

    print("\noptimizer work alone (perturb + restore; no forward/backward, no base step):\n")
    models = {f"small CNN ({n_tensors} tensors)": small_cnn()}
    if not args.quick:
        import timm

        models["ResNet-18 parameters (62 tensors)"] = timm.create_model("resnet18", num_classes=10)
    print("| parameters | SAM (ours) µs | reference µs | reference / ours |")
    print("| --- | ---: | ---: | ---: |")
    for label, net in models.items():
        fns = overhead_fns(params_with_grads(net, device, seed=1))
        for fn in fns.values():
            fn()
        timings = time_interleaved(fns, device, overhead_repeats, overhead_iters, clock)
        ours_us = timings["SAM (ours)"].median * 1e3
        loop_us = timings["reference (per-parameter loop)"].median * 1e3
        print(f"| {label} | {ours_us:.0f} | {loop_us:.0f} | {loop_us / ours_us:.2f} |")
    print(f"\nload average at end: {load_average()}")


def load_average() -> str:
    """The 1-minute load average: other processes on the machine distort the timings."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


if __name__ == "__main__":
    main()

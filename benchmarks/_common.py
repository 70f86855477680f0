"""Shared bits of the benchmarks: timing against a baseline in the same run, and tables.

These machines are noisy (other processes share the cores), so every figure a benchmark
reports is a ratio against a baseline measured in the same run, interleaved with it, and
each time is the median of several repeats.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` (after none: callers warm up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(
    baseline: Callable[[], object], candidate: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds of every call of ``baseline`` and ``candidate``, ``repeats`` each, alternating
    which goes first (so drift and order effects hit both); reduce with `median_and_best`."""
    base, cand = [], []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            base.append(median_time(baseline, 1))
            cand.append(median_time(candidate, 1))
        else:
            cand.append(median_time(candidate, 1))
            base.append(median_time(baseline, 1))
    return base, cand


def median_and_best(base: list[float], cand: list[float]) -> tuple[float, float]:
    """Ratios candidate / baseline of the median times and of the best (smallest) times.

    The median is the typical cost; the best is the cost with the least interference from
    the rest of the machine, the steadier of the two on a noisy one.
    """
    return statistics.median(cand) / statistics.median(base), min(cand) / min(base)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (floats with 4 significant digits)."""

    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small CPU smoke run (seconds)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return parser


def describe_machine(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, GPU: {gpu}; torch {torch.__version__}; quick={args.quick}; "
        f"device={args.device}; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but no CUDA device is available")

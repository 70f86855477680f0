"""USEFUL over streams: `USEFULIterableDataset` vs the bare stream, and key lookup at scale.

1. Throughput: one pass over a stream wrapped in ``USEFULIterableDataset`` (30% of the keys
   selected, ``upsample_factor=2``) vs one pass over the bare stream, interleaved repeats in
   the same run, for three real streams: WebDataset tar shards of ``.npy`` 3x32x32 uint8
   images (decoded, turned into float tensors), a Hugging Face ``to_iterable_dataset()``
   with torch format, and a plain torch ``IterableDataset`` of in-memory uint8 images made
   float on access (the cheapest item a real pipeline has). ``pass ratio`` = wrapped /
   bare seconds per pass over the same examples (the wrapped pass also yields the copies,
   which cost no reading or decoding); ``per-item ratio`` = the same per item yielded.
   Target: pass ratio <= 1.05.
2. Scale: a `useful_data._keys.KeyTable` of 100M keys (``--keys``; the hashes of integer
   keys, built in chunks): its bytes per key, build time and the time of one lookup (half
   hits, half misses) from Python, and the bytes per example of a keyed `Selection`.

Run: ``python benchmarks/bench_streaming.py [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from statistics import median

import numpy as np
import torch
from torch.utils.data import IterableDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import base_parser, describe_machine, interleaved, median_and_best, print_table

from useful_data import Selection, USEFULIterableDataset
from useful_data._keys import KeyTable, hash_key, hash_keys


class Images(IterableDataset):
    """In-memory uint8 32x32 images made float on access, as dict items with a key."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 10, (n,), generator=g).tolist()
        self.keys = [f"img{i:08d}" for i in range(n)]

    def __iter__(self):
        for i, key in enumerate(self.keys):
            yield {"__key__": key, "x": self.data[i].float().div_(255), "label": self.labels[i]}


def webdataset_stream(folder: Path, images: Images, num_shards: int = 4):
    import webdataset as wds

    paths = []
    for s in range(num_shards):
        path = folder / f"shard-{s:03d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(s, len(images.keys), num_shards):
                x = images.data[i].numpy()
                sink.write({"__key__": images.keys[i], "x.npy": x, "cls": images.labels[i]})
        paths.append(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = wds.WebDataset(paths, shardshuffle=False, empty_check=False)
    return ds.decode().rename(x="x.npy", label="cls").map_dict(x=torch.from_numpy)


def hf_stream(images: Images):
    import datasets

    table = {"key": images.keys, "x": images.data.numpy(), "label": images.labels}
    return datasets.Dataset.from_dict(table).to_iterable_dataset(num_shards=4).with_format("torch")


def interleaved_cpu(
    baseline: Callable[[], object], candidate: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """`_common.interleaved` in CPU seconds of this process (`time.process_time`)."""
    base, cand = [], []
    for repeat in range(repeats):
        for fn, out in ((baseline, base), (candidate, cand))[:: 1 if repeat % 2 == 0 else -1]:
            start = time.process_time()
            fn()
            out.append(time.process_time() - start)
    return base, cand


def section_throughput(args) -> None:
    n = 400 if args.quick else 5_000
    images = Images(n)
    chosen = images.keys[: int(0.3 * n)]
    with tempfile.TemporaryDirectory() as tmp:
        streams = [
            ("WebDataset (.npy shards)", webdataset_stream(Path(tmp), images), "__key__"),
            ("HF to_iterable_dataset", hf_stream(images), "key"),
            ("torch IterableDataset", images, "__key__"),
        ]
        rows = []
        for name, stream, key in streams:
            wrapped = USEFULIterableDataset(stream, chosen, key=key, seed=0)
            counts = {"bare": 0, "wrapped": 0}

            def run(ds, which, counts=counts):
                counts[which] = sum(1 for _ in ds)

            def bare(stream=stream):
                run(stream, "bare")

            def upsampled(wrapped=wrapped):
                run(wrapped, "wrapped")

            bare(), upsampled()  # warm-up
            repeats = 3 if args.quick else 7
            base, cand = interleaved(bare, upsampled, repeats)
            wall, _ = median_and_best(base, cand)
            cpu_base, cpu_cand = interleaved_cpu(bare, upsampled, repeats)
            cpu, cpu_best = median_and_best(cpu_base, cpu_cand)
            items = counts["wrapped"] / counts["bare"]
            rows.append(
                [
                    name,
                    counts["bare"],
                    counts["wrapped"],
                    1e6 * median(cpu_base) / counts["bare"],
                    1e6 * (median(cpu_cand) - median(cpu_base)) / counts["bare"],
                    cpu,
                    cpu_best,
                    wall,
                    cpu / items,
                ]
            )
    print_table(
        f"One pass over a stream of {n} examples, 30% selected, upsample_factor=2",
        [
            "stream",
            "bare items",
            "wrapped items",
            "bare CPU µs/item",
            "added CPU µs/item",
            "pass ratio (CPU)",
            "of best",
            "pass ratio (wall)",
            "per-item ratio (CPU)",
        ],
        rows,
    )
    print(
        "\npass ratio (CPU) = this process's CPU seconds per pass, wrapped / bare (medians of "
        "interleaved repeats; CPU time, as wall time on a shared machine is mostly waiting "
        "for a core); of best = the same for the fastest repeat of each; pass ratio (wall) = "
        "the same in wall-clock seconds; added CPU µs/item = (wrapped - bare) CPU time per "
        "pass / bare items; per-item ratio = pass ratio / (wrapped items / bare items)."
    )


def section_scale(args) -> None:
    n = args.keys if not args.quick else 1_000_000
    chunk = 10_000_000
    tracemalloc.start()  # numpy reports its buffers to it: the build's peak, temporaries too
    table = KeyTable(n)
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        table.add(hash_keys(np.arange(lo, min(n, lo + chunk), dtype=np.int64)))
    build = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(table) == n
    rng = np.random.default_rng(0)
    probes = [hash_key(int(k)) for k in rng.integers(0, 2 * n, size=200_000)]  # half miss
    start = time.perf_counter()
    hits = sum(table.slot(h) >= 0 for h in probes)
    lookup = (time.perf_counter() - start) / len(probes)
    m = 1_000_000
    keyed = Selection(
        mask=np.zeros(m, dtype=bool),
        loss=np.zeros(m, dtype=np.float32),
        targets=np.zeros(m, dtype=np.int64),
        keys=np.arange(m),
    )
    per_example_int = sum(a.nbytes for a in (keyed.mask, keyed.loss, keyed.targets, keyed.keys))
    per_example_str = per_example_int - keyed.keys.nbytes + np.zeros(m, dtype="<U12").nbytes
    print_table(
        f"Key lookup at scale: {n} integer keys",
        [
            "keys",
            "table MiB",
            "bytes/key",
            "load factor",
            "build s",
            "build peak MiB",
            "lookup µs (Python)",
            "hits of probes",
            "Selection bytes/example (int keys)",
            "(12-char str keys)",
        ],
        [
            [
                n,
                table.nbytes / 2**20,
                table.nbytes / n,
                n / table.capacity,
                build,
                peak / 2**20,
                1e6 * lookup,
                f"{hits}/{len(probes)}",
                per_example_int / m,
                per_example_str / m,
            ]
        ],
    )
    print(
        "\nbytes/key: the table the wrapper holds for |S| selected keys (8-byte slots, at most "
        "half full); a saved Selection holds mask, loss, label and key of every example."
    )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000_000, help="keys in the scale table")
    parser.add_argument("--sections", default="throughput,scale")
    args = parser.parse_args()
    describe_machine(args)
    sections = set(args.sections.split(","))
    if "throughput" in sections:
        section_throughput(args)
    if "scale" in sections:
        section_scale(args)


if __name__ == "__main__":
    main()

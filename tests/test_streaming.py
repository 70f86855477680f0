"""USEFUL over streams: selection by key, USEFULIterableDataset, keyed Selection files.

Real components: WebDataset tar shards written here, Hugging Face ``datasets`` iterable
datasets built here, and a plain torch ``IterableDataset``; counted across 2 ranks x 2
DataLoader workers in one spawned gloo run.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import two_blob_logits
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

from useful_data import Selection, USEFULDataset, USEFULIterableDataset, find_slow_learnable
from useful_data._keys import (
    KeyTable,
    check_distinct,
    hash_key,
    hash_keys,
    keyed_fingerprint,
    keys_array,
    normalize_key,
)
from useful_data._streaming import collect_stream_outputs
from useful_data.cli import main

wds = pytest.importorskip("webdataset")
hf = pytest.importorskip("datasets")

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
KEYS = [f"ex{i:04d}" for i in range(120)]


def _rows(seed: int = 0):
    """(x, y, truth) of 3 classes x 40 examples: ``x`` are logits with a known slow blob."""
    return two_blob_logits(n_per_class=40, num_classes=3, seed=seed)


def _identity_model(num_classes: int = 3) -> torch.nn.Module:
    model = torch.nn.Linear(num_classes, num_classes)
    with torch.no_grad():
        model.weight.copy_(torch.eye(num_classes))
        model.bias.zero_()
    return model


def _split(n: int) -> range:
    """Indices of this rank and worker: ``range(n)`` cut by rank, then by worker."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return range(rank * workers + worker, n, world * workers)


class Rows(IterableDataset):
    """A plain torch stream of dict items that splits itself by rank and worker."""

    def __init__(self, x, y, keys, order=None, key_field="__key__", split=True):
        self.x, self.y, self.keys, self.key_field = x, y, list(keys), key_field
        self.split = split
        self.order = np.arange(len(self.keys)) if order is None else np.asarray(order)

    def __iter__(self):
        for j in _split(len(self.order)) if self.split else range(len(self.order)):
            i = int(self.order[j])
            yield {
                self.key_field: self.keys[i],
                "x": torch.from_numpy(self.x[i]),
                "label": int(self.y[i]),
            }


def write_shards(folder: Path, x, y, keys, num_shards: int = 4) -> list[str]:
    """WebDataset tar shards of ``(x.npy, cls)`` samples named by ``keys``."""
    paths = []
    for s in range(num_shards):
        path = folder / f"shard-{s:02d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(s, len(keys), num_shards):
                sink.write({"__key__": keys[i], "x.npy": x[i], "cls": int(y[i])})
        paths.append(str(path))
    return paths


def web_stream(paths, **kwargs):
    """A WebDataset over ``paths`` split by rank and worker, items {'__key__', 'x', 'label'}."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webdataset's own advice on shardshuffle
        ds = wds.WebDataset(
            paths, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False, **kwargs
        )
    return ds.decode().rename(x="x.npy", label="cls")


def hf_stream(x, y, ids, num_shards: int = 4):
    """A Hugging Face iterable dataset with an ``id`` column, tensors out."""
    table = {"id": list(ids), "x": x.tolist(), "label": y.tolist()}
    return (
        hf.Dataset.from_dict(table).to_iterable_dataset(num_shards=num_shards).with_format("torch")
    )


def _keys_of(batch, field="__key__"):
    keys = batch[field]
    return keys.tolist() if isinstance(keys, torch.Tensor) else list(keys)


def test_import_useful_data_loads_neither_streaming_framework():
    code = "import sys, useful_data; print(sorted({'webdataset', 'datasets'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"


# --- keys and their table -------------------------------------------------------------------------
def test_hashes_are_pinned_and_vectorized_ints_match():
    # pinned: a change of hash function would silently orphan every saved keyed selection
    assert hash_key("ex0000") == int.from_bytes(
        __import__("hashlib").blake2b(b"ex0000", digest_size=8).digest(), "little"
    )
    ints = np.array([0, 1, -1, 7, 2**63 - 1, -(2**63), 123456789], dtype=np.int64)
    assert hash_keys(ints).tolist() == [hash_key(int(k)) for k in ints]
    assert hash_key(0) == 0xE220A8397B1DCDAF  # SplitMix64's first output for state 0
    assert hash_key(5) != hash_key("5")
    strs = np.array(["a", "é", ""])
    assert hash_keys(strs).tolist() == [hash_key(k) for k in strs.tolist()]
    assert 0 not in hash_keys(np.arange(10_000)).tolist()


def test_normalize_key_accepts_str_and_ints_only():
    assert normalize_key(np.int32(4)) == 4 and type(normalize_key(np.int32(4))) is int
    assert normalize_key(torch.tensor(9)) == 9
    assert normalize_key(np.str_("a")) == "a"
    for bad in (True, 1.0, b"k", None, torch.tensor(1.5)):
        with pytest.raises(TypeError, match="string or an integer"):
            normalize_key(bad)
    with pytest.raises(ValueError, match="int64"):
        normalize_key(2**64)
    with pytest.raises(TypeError, match="all strings or all integers"):
        keys_array(["a", 1])
    assert keys_array(np.array([1, 2], dtype=np.uint16)).dtype == np.int64


@pytest.mark.parametrize("chunk", [1 << 20, 64])
def test_key_table_matches_a_set_and_grows(chunk, monkeypatch):
    monkeypatch.setattr("useful_data._keys._CHUNK", chunk)  # 64: batches span chunks
    rng = np.random.default_rng(0)
    table = KeyTable()
    reference: set[int] = set()
    for _ in range(20):
        batch = rng.integers(1, 3000, size=200).astype(np.uint64)  # many repeats
        repeated = table.add(batch)
        expected = []
        for h in batch.tolist():
            expected.append(h in reference)
            reference.add(h)
        assert repeated.tolist() == expected
    assert len(table) == len(reference) and table.capacity >= 2 * len(reference)
    for h in range(1, 3100):
        assert (table.slot(h) >= 0) == (h in reference)
    # adjacent hashes collide on slots: linear probing must still find every one
    crowded = KeyTable(100)
    crowded.add(np.arange(1, 101, dtype=np.uint64) * np.uint64(crowded.capacity))
    assert all(crowded.slot(h * crowded.capacity) >= 0 for h in range(1, 101))
    assert crowded.slot(101 * crowded.capacity) == -1


def test_duplicates_and_collisions_are_named():
    keys = np.array(["a", "b", "a"])
    with pytest.raises(ValueError, match="'a' appears more than once"):
        keyed_fingerprint(keys, np.zeros(3))
    fake = np.array([5, 9, 5], dtype=np.uint64)  # two distinct keys, one hash
    with pytest.raises(ValueError, match="'x' and 'z' have the same 64-bit hash"):
        check_distinct(np.array(["x", "y", "z"]), fake, np.argsort(fake, kind="stable"), "keys")


# --- keyed Selection ------------------------------------------------------------------------------
def _keyed(keys=("a", "b", "c", "d"), targets=(0, 0, 1, 1), mask=(True, False, False, True)):
    return Selection(
        mask=np.array(mask),
        loss=np.arange(len(keys), dtype=np.float32),
        targets=np.array(targets),
        keys=np.array(keys),
        params={"key": "__key__"},
    )


def test_keyed_selection_saves_loads_and_fingerprints_by_key_set(tmp_path):
    sel = _keyed()
    loaded = Selection.load(sel.save(tmp_path / "s.npz"))
    assert loaded.keys.tolist() == ["a", "b", "c", "d"] and not loaded.keys.flags.writeable
    assert loaded.mask.tolist() == sel.mask.tolist() and loaded.fingerprint == sel.fingerprint
    shuffled = _keyed(("d", "b", "a", "c"), (1, 0, 0, 1), (True, False, True, False))
    assert shuffled.fingerprint == sel.fingerprint  # same examples, other order
    assert _keyed(targets=(0, 1, 1, 1)).fingerprint != sel.fingerprint  # a label differs
    assert _keyed(keys=("a", "b", "c", "e")).fingerprint != sel.fingerprint
    ints = Selection(mask=np.array([True]), loss=np.ones(1), targets=np.zeros(1, int), keys=[7])
    assert Selection.load(ints.save(tmp_path / "i.npz")).keys.dtype == np.int64
    # a file whose keys were swapped for others no longer matches its fingerprint
    with np.load(tmp_path / "s.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["keys_utf8"] = np.frombuffer(b"abcx", dtype=np.uint8)  # keys: UTF-8 + offsets
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="corrupt"):
        Selection.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"keys should have shape \(4,\)"):
        Selection(mask=sel.mask, loss=sel.loss, targets=sel.targets, keys=["a"])


def test_keyed_selection_is_refused_by_position_and_read_by_inspect(tmp_path, capsys):
    sel = _keyed()
    with pytest.raises(ValueError, match=r"by key, not by position.*USEFULIterableDataset"):
        USEFULDataset(TensorDataset(torch.zeros(4)), sel)
    with pytest.raises(ValueError, match="by key, not by position"):  # plot, inspect --plot
        sel.check_fits(TensorDataset(torch.zeros(4)))
    path = sel.save(tmp_path / "s.npz")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "keys: 4 string keys (a stream" in out and "key=__key__" in out


# --- find_slow_learnable over a stream ------------------------------------------------------------
def test_stream_selection_equals_the_map_style_one_in_any_order():
    x, y, truth = _rows()
    model = _identity_model()
    by_index = find_slow_learnable(
        model,
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        progress=False,
        backend="sklearn",
    )
    assert np.array_equal(by_index.mask, truth)  # the data has a known answer
    stream = find_slow_learnable(
        model, Rows(x, y, KEYS), progress=False, backend="sklearn", batch_size=16
    )
    index = np.array([KEYS.index(k) for k in stream.keys])  # rows come in key-hash order
    assert sorted(index.tolist()) == list(range(len(KEYS)))
    assert np.all(np.diff(hash_keys(stream.keys).astype(np.float64)) > 0)
    assert np.array_equal(stream.mask, by_index.mask[index])
    np.testing.assert_array_equal(stream.loss, by_index.loss[index])
    assert stream.params["key"] == "__key__"
    # another order of the same examples: the very same rows, so the very same selection
    order = np.random.default_rng(1).permutation(len(KEYS))
    other = find_slow_learnable(
        model, Rows(x, y, KEYS, order=order), progress=False, backend="sklearn"
    )
    assert other.keys.tolist() == stream.keys.tolist()
    assert np.array_equal(other.mask, stream.mask) and other.fingerprint == stream.fingerprint


def test_webdataset_and_hf_streams_with_workers(tmp_path):
    x, y, truth = _rows()
    model = _identity_model()
    expected = {KEYS[i] for i in np.flatnonzero(truth)}
    paths = write_shards(tmp_path, x, y, KEYS)
    sel = find_slow_learnable(
        model, web_stream(paths), num_workers=2, batch_size=8, progress=False, backend="sklearn"
    )
    assert sorted(sel.keys.tolist()) == KEYS and set(sel.keys[sel.mask]) == expected
    ids = np.arange(1000, 1000 + len(KEYS))
    hsel = find_slow_learnable(
        model,
        hf_stream(x, y, ids),
        key="id",
        num_workers=2,
        batch_size=8,
        progress=False,
        backend="sklearn",
    )
    assert hsel.keys.dtype == np.int64 and sorted(hsel.keys.tolist()) == ids.tolist()
    assert set(hsel.keys[hsel.mask].tolist()) == set(ids[truth].tolist())
    assert hsel.params["key"] == "id"
    by_function = find_slow_learnable(
        model,
        hf_stream(x, y, ids),
        key=lambda item: f"h{int(item['id'])}",
        progress=False,
        backend="sklearn",
    )
    assert "h1000" in by_function.keys and by_function.params["key"].startswith("<function")


@pytest.mark.filterwarnings("ignore:.*were not split")  # the 4-item streams are not clusterable
def test_bad_streams_are_refused_with_what_to_do(tmp_path):
    x, y, _ = _rows()
    model = _identity_model()

    def select(stream, **kw):
        return find_slow_learnable(model, stream, progress=False, backend="sklearn", **kw)

    with pytest.raises(ValueError, match=r"'__key__'.*fields \['id', 'label', 'x'\]"):
        select(Rows(x, y, KEYS, key_field="id"))
    with pytest.raises(ValueError, match=r"'ex0003' appeared twice.*repeat"):
        select(Rows(x, y, KEYS, order=[0, 1, 2, 3, 3, 4]))
    paths = write_shards(tmp_path, x, y, KEYS)
    with pytest.raises(ValueError, match="resampled=True"):
        select(web_stream(paths, resampled=True))

    class Endless(IterableDataset):
        def __iter__(self):
            i = 0
            while True:
                yield {"__key__": i, "x": torch.zeros(3), "label": i % 3}
                i += 1

    with pytest.raises(ValueError, match="more than max_examples=50"):
        select(Endless(), max_examples=50)

    class Tuples(IterableDataset):
        def __iter__(self):
            yield from ((torch.full((3,), float(i)), i % 2, f"k{i}") for i in range(4))

    with pytest.raises(ValueError, match="key= a function item -> key"):
        select(Tuples())
    assert sorted(select(Tuples(), key=lambda item: item[2]).keys) == ["k0", "k1", "k2", "k3"]

    class NoLabels(IterableDataset):
        def __iter__(self):
            yield from ({"__key__": f"k{i}", "x": torch.zeros(3)} for i in range(4))

    with pytest.raises(ValueError, match="carry no labels"):
        select(NoLabels())
    with pytest.raises(ValueError, match="eval_dataset has no meaning for a stream"):
        select(Rows(x, y, KEYS), eval_dataset=Rows(x, y, KEYS))
    with pytest.raises(ValueError, match="targets= cannot be matched"):
        select(Rows(x, y, KEYS), targets=y)
    with pytest.raises(ValueError, match="at least one example"):
        select(Rows(x[:0], y[:0], []))
    with pytest.raises(TypeError, match="all strings or all integers"):
        select(Rows(x, y, [*KEYS[:60], *range(60)]), batch_size=30)
    with pytest.raises(TypeError, match="key should be a field name"):
        collect_stream_outputs(model, Rows(x, y, KEYS), key=3)  # type: ignore[arg-type]


# --- USEFULIterableDataset ------------------------------------------------------------------------
class Plain(IterableDataset):
    """A stream of dict items named by ``keys`` (no splitting)."""

    def __init__(self, keys):
        self.keys = list(keys)

    def __iter__(self):
        yield from ({"__key__": k, "x": i} for i, k in enumerate(self.keys))


@pytest.mark.parametrize("k", [2, 3])
def test_every_example_once_and_selected_ones_k_times_spread_out(k):
    keys = [f"k{i}" for i in range(500)]
    selected = set(keys[::4])
    ds = USEFULIterableDataset(Plain(keys), sorted(selected), upsample_factor=k, buffer_size=16)
    out = [item["__key__"] for item in ds]
    counts = collections.Counter(out)
    assert counts == {key: (k if key in selected else 1) for key in keys}
    originals = [key for i, key in enumerate(out) if key not in out[:i]]
    assert originals == keys  # the stream's own items come in the stream's order
    first: dict[str, int] = {}
    owed = 0
    for i, key in enumerate(out):
        if key not in first:
            first[key] = i
            owed += (k - 1) * (key in selected)
        else:
            assert i - first[key] >= 2  # a copy never directly follows its original
            owed -= 1
        assert owed <= 16  # at most buffer_size copies held
    gaps = [i - first[key] for i, key in enumerate(out) if first[key] != i]
    assert np.mean(gaps) > 5  # spread over the buffer, not bunched up


def test_buffer_bound_forces_copies_out_in_time():
    keys = [f"k{i}" for i in range(50)]
    out = [
        it["__key__"]
        for it in USEFULIterableDataset(Plain(keys), keys, upsample_factor=3, buffer_size=4)
    ]
    owed, seen = 0, set()
    for key in out:
        owed += 2 if key not in seen else -1
        seen.add(key)
        assert owed <= 4
    assert collections.Counter(out) == {key: 3 for key in keys}


def test_seeded_and_epoch_dependent():
    keys = [f"k{i}" for i in range(300)]

    def run(seed=0, epoch=0):
        ds = USEFULIterableDataset(Plain(keys), keys[::3], seed=seed, buffer_size=32)
        ds.set_epoch(epoch)
        return [item["__key__"] for item in ds]

    assert run() == run()
    assert run() != run(seed=1) and run() != run(epoch=1)
    assert sorted(run()) == sorted(run(epoch=1))

    class Epochs(Plain):
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    stream = Epochs(keys)
    USEFULIterableDataset(stream, keys[:2]).set_epoch(3)  # a HF stream reshuffles with it
    assert stream.epoch == 3


def test_selection_sources_defaults_and_transform(tmp_path):
    x, y, _ = _rows()
    sel = find_slow_learnable(
        _identity_model(),
        Rows(x, y, KEYS, key_field="name"),
        key="name",
        progress=False,
        backend="sklearn",
    )
    path = sel.save(tmp_path / "sel.npz")
    stream = Rows(x, y, KEYS, key_field="name")
    ds = USEFULIterableDataset(stream, path, transform=lambda item: item["name"])  # key from params
    out = list(ds)
    assert ds.upsample_factor == 2 and ds.num_slow_learnable == sel.num_slow_learnable
    assert len(out) == sel.upsampled_size
    expected = {k: 1 + bool(m) for k, m in zip(sel.keys, sel.mask, strict=True)}
    assert collections.Counter(out) == expected
    assert list(USEFULIterableDataset(Plain(["a", "b"]), [], buffer_size=1)) == [
        {"__key__": "a", "x": 0},
        {"__key__": "b", "x": 1},
    ]
    by_position = Selection(mask=np.array([True, False]), loss=np.ones(2), targets=np.zeros(2, int))
    with pytest.raises(TypeError, match=r"by position.*USEFULDataset"):
        USEFULIterableDataset(Plain(["a"]), by_position)
    with pytest.raises(ValueError, match="'a' appears twice"):
        USEFULIterableDataset(Plain(["a"]), ["a", "b", "a"])
    with pytest.raises(TypeError, match="selection should be"):
        USEFULIterableDataset(Plain(["a"]), 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer_size"):
        USEFULIterableDataset(Plain(["a"]), ["a"], buffer_size=0)
    fn = find_slow_learnable(
        _identity_model(),
        Rows(x, y, KEYS),
        key=lambda item: item["__key__"],
        progress=False,
        backend="sklearn",
    )
    with pytest.raises(TypeError, match="pass the same function as key="):
        USEFULIterableDataset(Rows(x, y, KEYS), fn)


def test_bad_streams_in_the_wrapper():
    with pytest.raises(ValueError, match=r"'__key__'.*fields \['id', 'x'\]"):
        list(USEFULIterableDataset([{"id": 1, "x": 0}], ["a"]))
    with pytest.raises(TypeError, match="holds str keys, but the stream's key is 5"):
        list(USEFULIterableDataset([{"__key__": 5}], ["a"]))
    with pytest.warns(RuntimeWarning, match="2 of 3 selected keys never appeared"):
        list(USEFULIterableDataset(Plain(["a", "x"]), ["a", "b", "c"]))
    with pytest.warns(RuntimeWarning, match="1 sighting"):
        out = list(USEFULIterableDataset(Plain(["a", "b", "a"]), ["a"]))
    assert [item["__key__"] for item in out].count("a") == 4


def test_wrapper_with_workers_webdataset_and_hf(tmp_path):
    x, y, truth = _rows()
    paths = write_shards(tmp_path, x, y, KEYS)
    chosen = [KEYS[i] for i in np.flatnonzero(truth)]
    ds = USEFULIterableDataset(web_stream(paths), chosen, buffer_size=8)
    seen = collections.Counter(
        k for b in DataLoader(ds, batch_size=8, num_workers=2) for k in _keys_of(b)
    )
    assert seen == {k: 1 + (k in chosen) for k in KEYS}
    ids = np.arange(len(KEYS))
    hds = USEFULIterableDataset(hf_stream(x, y, ids), ids[truth], key="id", upsample_factor=3)
    seen = collections.Counter(
        k for b in DataLoader(hds, batch_size=8, num_workers=2) for k in _keys_of(b, "id")
    )
    assert seen == {int(i): 1 + 2 * bool(t) for i, t in zip(ids, truth, strict=True)}


def test_every_key_kind_is_checked_not_only_the_first():
    """A later int key in a string selection would never be upsampled: it is refused."""
    items = [{"__key__": "a"}, {"__key__": "b"}, {"__key__": 7}]
    with pytest.raises(TypeError, match="holds str keys, but the stream's key is 7"):
        list(USEFULIterableDataset(items, ["a", "b"]))
    with pytest.raises(TypeError, match="holds int keys, but the stream's key is 'c'"):
        list(USEFULIterableDataset([{"__key__": 1}, {"__key__": "c"}], [1]))
    numpy_ints = [{"__key__": np.int64(i)} for i in range(4)]  # normalized, then looked up
    assert len(list(USEFULIterableDataset(numpy_ints, [1, 2]))) == 6


class EpochRows(IterableDataset):
    """A stream whose items carry the epoch its own ``set_epoch`` last received, split by
    worker (a Hugging Face stream reshuffles by that epoch)."""

    def __init__(self, keys):
        self.keys, self.epoch = list(keys), 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        for i in _split(len(self.keys)):
            yield {"__key__": self.keys[i], "epoch": self.epoch}


def _loader_epochs(ds, epochs, **loader_kwargs):
    """The keys (and epochs the stream saw) of each epoch, through one DataLoader."""
    loader = DataLoader(ds, batch_size=5, **loader_kwargs)
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        pairs = (zip(b["__key__"], b["epoch"], strict=True) for b in loader)
        out.append([(k, int(e)) for batch in pairs for k, e in batch])
    return out


def test_set_epoch_reaches_persistent_workers():
    keys = [f"k{i}" for i in range(60)]
    fresh = [
        _loader_epochs(USEFULIterableDataset(EpochRows(keys), keys[::4], buffer_size=8), [e],
                       num_workers=2)[0]
        for e in (0, 1, 2)
    ]  # fmt: skip
    ds = USEFULIterableDataset(EpochRows(keys), keys[::4], buffer_size=8)
    persistent = _loader_epochs(ds, [0, 1, 2], num_workers=2, persistent_workers=True)
    assert persistent == fresh  # the delays and the stream's own epoch, in every worker
    assert {e for _, e in persistent[2]} == {2} and persistent[1] != persistent[2]


def _passes(keys, chosen, count, **kwargs):
    """The items of ``count`` single passes, epochs 0, 1, ..., of one process."""
    out = []
    for epoch in range(count):
        ds = USEFULIterableDataset(Plain(keys), chosen, **kwargs)
        ds.set_epoch(epoch)
        out += [item["__key__"] for item in ds]
    return out


@pytest.mark.parametrize("epoch_length", [7, 25, 30, 64])
def test_epoch_length_continues_over_passes_exactly(epoch_length):
    """Each epoch yields exactly epoch_length items; over epochs, a process's items are its
    passes 0, 1, 2, ... back to back, each the upsampled multiset of its part."""
    keys = [f"k{i}" for i in range(20)]
    chosen = keys[::2]  # 20 + 10 = 30 items a pass
    ds = USEFULIterableDataset(Plain(keys), chosen, buffer_size=4, epoch_length=epoch_length)
    epochs = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        epochs.append([item["__key__"] for item in ds])
    assert [len(e) for e in epochs] == [epoch_length] * 6
    flat = [k for e in epochs for k in e]
    passes = _passes(keys, chosen, 13, buffer_size=4)
    assert flat == passes[: len(flat)]
    whole = len(flat) // 30 * 30
    assert collections.Counter(flat[:whole]) == collections.Counter(
        {k: (2 if k in chosen else 1) * (whole // 30) for k in keys}
    )


@pytest.mark.parametrize(
    "loader_kwargs",
    [{"num_workers": 0}, {"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}],
)
def test_epoch_length_is_per_rank_and_shared_by_its_workers(loader_kwargs):
    keys = [f"k{i}" for i in range(40)]
    ds = USEFULIterableDataset(
        EpochRows(keys), keys[:30:3], buffer_size=4, epoch_length=23
    )  # 40 + 10 a pass, not a multiple of 23
    epochs = _loader_epochs(ds, range(5), **loader_kwargs)
    assert [len(e) for e in epochs] == [23] * 5
    per_worker: dict[int, list[str]] = collections.defaultdict(list)
    workers = loader_kwargs["num_workers"] or 1
    for e in epochs:
        for k, _ in e:  # worker w's part: the keys k{i} with i % workers == w
            per_worker[int(k[1:]) % workers].append(k)
    # every worker continues its own passes over its own part, never restarting early
    for w, got in per_worker.items():
        part = [keys[i] for i in range(w, 40, workers)]
        chosen = [k for k in keys[:30:3] if k in part]
        complete = len(got) // (len(part) + len(chosen)) * (len(part) + len(chosen))
        assert complete > 0
        assert collections.Counter(got[:complete]) == collections.Counter(
            {k: (2 if k in chosen else 1) * complete // (len(part) + len(chosen)) for k in part}
        )


@pytest.mark.filterwarnings("ignore:.*never appeared:RuntimeWarning")
def test_epoch_length_refuses_a_process_without_a_part():
    ds = USEFULIterableDataset(Plain([]), ["a"], epoch_length=3)
    with pytest.raises(RuntimeError, match="every process needs a part of the stream"):
        list(ds)
    with pytest.raises(ValueError, match="epoch_length should be an integer >= 1"):
        USEFULIterableDataset(Plain(["a"]), ["a"], epoch_length=0)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("epoch_length", [None, 27])
def test_stateful_dataloader_resumes_mid_epoch_exactly(num_workers, epoch_length):
    from torchdata.stateful_dataloader import StatefulDataLoader

    keys = [f"k{i}" for i in range(40)]

    def make():
        ds = USEFULIterableDataset(
            EpochRows(keys), keys[::3], buffer_size=6, seed=1, epoch_length=epoch_length
        )
        return StatefulDataLoader(ds, batch_size=4, num_workers=num_workers), ds

    def keys_of(batches):
        return [k for b in batches for k in b["__key__"]]

    loader, ds = make()
    ds.set_epoch(0)
    first = keys_of(loader)  # epoch 0, whole
    ds.set_epoch(1)
    whole = keys_of(loader)  # epoch 1, whole: what the resumed run must reproduce

    loader, ds = make()
    ds.set_epoch(0)
    keys_of(loader)
    ds.set_epoch(1)
    it = iter(loader)
    head = keys_of(next(it) for _ in range(3))
    state = loader.state_dict()  # the job stops here
    resumed, ds = make()
    resumed.load_state_dict(state)
    tail = keys_of(resumed)
    assert head + tail == whole and whole != first
    if epoch_length is not None:
        assert len(whole) == epoch_length


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_stream_pass_of_a_cuda_model_selects_what_the_cpu_one_does():
    x, y, _ = _rows()
    kwargs = {"progress": False, "backend": "sklearn", "batch_size": 16}
    on_cpu = find_slow_learnable(_identity_model(), Rows(x, y, KEYS), **kwargs)
    on_gpu = find_slow_learnable(_identity_model().cuda(), Rows(x, y, KEYS), **kwargs)
    assert on_gpu.fingerprint == on_cpu.fingerprint
    assert np.array_equal(on_gpu.mask, on_cpu.mask) and np.array_equal(on_gpu.keys, on_cpu.keys)


# --- 2 ranks x 2 workers --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BadItem(Exception):
    """A user's own exception type, raised while reading the stream."""


class FailsOnRank1(IterableDataset):
    """Rows, except that on rank 1 the third item raises ``error`` (rank 1 stays alive)."""

    def __init__(self, rows: Rows, error: Exception) -> None:
        self.rows, self.error = rows, error

    def __iter__(self):
        for n, item in enumerate(self.rows):
            if n == 2 and int(os.environ["RANK"]) == 1:
                raise self.error
            yield item


def _check_stream_failures(rank: int, x, y) -> None:
    for error in (
        ValueError("item 3 is bad"),
        TypeError("item 3 is bad"),
        RuntimeError("item 3 is bad"),
        BadItem("item 3 is bad"),
    ):
        start = time.monotonic()
        with pytest.raises(type(error), match="item 3 is bad") as raised:
            find_slow_learnable(
                _identity_model(), FailsOnRank1(Rows(x, y, KEYS), error), progress=False
            )
        assert time.monotonic() - start < 30  # not the process group's timeout
        if rank == 0:
            assert f"failed on rank 1 with {type(error).__name__}" in str(raised.value)


def _check_ddp_epochs(x, y) -> None:
    """A DDP-wrapped model trained 3 epochs on a stream whose selected keys all lie in rank
    0's part: a pass is 120 items there and 60 on rank 1, so one pass per epoch would hang
    DDP; with epoch_length both ranks run the same steps, and stay in sync."""
    chosen = [k for i, k in enumerate(KEYS) if i % 4 < 2]  # rank 0's part (2 workers)
    plain = USEFULIterableDataset(Rows(x, y, KEYS), chosen)
    sizes = _gathered(sum(len(b["label"]) for b in DataLoader(plain, 8, num_workers=2)))
    assert sizes == [120, 60]  # what would make the ranks' step counts differ
    selection_size = len(KEYS) + len(chosen)  # N + |S| over both ranks
    ds = USEFULIterableDataset(
        Rows(x, y, KEYS), chosen, epoch_length=selection_size // 2, buffer_size=16
    )
    loader = DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps, items = 0, collections.Counter()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch["x"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()  # an all-reduce: a rank with a step more would wait forever
            optimizer.step()
            steps += 1
            items.update(batch["__key__"])
    assert _gathered(steps) == [steps, steps] and sum(items.values()) == 3 * 90
    weights = _gathered(model.module.weight.detach().numpy().tobytes())
    assert weights[0] == weights[1]
    # each worker yielded 135 items: complete passes of its part (60 items a pass on rank 0,
    # 30 on rank 1), then a prefix of the next one
    passes = 2 if dist.get_rank() == 0 else 4
    assert len(items) == 60  # every key of the rank's part
    for key, count in items.items():
        copies = 2 if key in chosen else 1
        assert passes * copies <= count <= (passes + 1) * copies


def _gathered(value):
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", OMP_NUM_THREADS="1")  # as torchrun sets
    mp.set_start_method("fork", force=True)  # DataLoader workers: fork, not a fresh interpreter
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),  # a hang fails the test, not stalls it
    )
    from datasets.distributed import split_dataset_by_node

    try:
        x, y, truth = _rows()
        _check_stream_failures(rank, x, y)
        _check_ddp_epochs(x, y)
        paths = sorted(str(p) for p in Path(folder).glob("shard-*.tar"))
        chosen = [KEYS[i] for i in np.flatnonzero(truth)]
        ids = np.arange(len(KEYS))
        streams = {
            "webdataset": (USEFULIterableDataset(web_stream(paths), chosen), "__key__"),
            "hf": (
                USEFULIterableDataset(
                    split_dataset_by_node(hf_stream(x, y, ids), rank=rank, world_size=2),
                    ids[truth],
                    key="id",
                ),
                "id",
            ),
            "torch": (
                USEFULIterableDataset(Rows(x, y, KEYS), chosen, upsample_factor=3),
                "__key__",
            ),
        }
        result = {}
        for name, (ds, field) in streams.items():
            loader = DataLoader(ds, batch_size=4, num_workers=2)
            result[name] = [k for batch in loader for k in _keys_of(batch, field)]
        sel = find_slow_learnable(
            _identity_model(),
            web_stream(paths),
            num_workers=2,
            batch_size=4,
            progress=False,
            backend="sklearn",
        )
        result["selected"] = sorted(sel.keys[sel.mask].tolist())
        result["fingerprint"] = sel.fingerprint
        repeats_on_rank1 = Rows(x, y, KEYS, order=[0, 1, 2, 3, 4, 1])  # rank 1: 1, 3, 1
        with pytest.raises(ValueError, match="key 'ex0001' appeared twice"):
            find_slow_learnable(_identity_model(), repeats_on_rank1, progress=False)  # no hang
        with pytest.raises(ValueError, match="seen by more than one rank"):
            find_slow_learnable(_identity_model(), Rows(x, y, KEYS, split=False), progress=False)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_ranks_two_workers_count_every_key(tmp_path):
    x, y, truth = _rows()
    write_shards(tmp_path, x, y, KEYS)
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    chosen = {KEYS[i] for i in np.flatnonzero(truth)}
    for name, k, universe in (("webdataset", 2, KEYS), ("torch", 3, KEYS)):
        both = collections.Counter(ranks[0][name] + ranks[1][name])
        assert both == {key: (k if key in chosen else 1) for key in universe}, name
        assert ranks[0][name] and ranks[1][name]  # each rank got its own part
        assert not set(ranks[0][name]) & set(ranks[1][name])
    both = collections.Counter(ranks[0]["hf"] + ranks[1]["hf"])
    assert both == {i: 1 + bool(t) for i, t in enumerate(truth)}
    single = find_slow_learnable(
        _identity_model(), Rows(x, y, KEYS), progress=False, backend="sklearn"
    )
    for result in ranks:  # the gathered pass selects what one process selects
        assert result["selected"] == sorted(single.keys[single.mask].tolist())
        assert result["fingerprint"] == single.fingerprint


def test_a_factor_whose_copies_would_not_fit_in_memory_is_refused():
    """Issue #25 (sizes): the k - 1 copies of a selected item wait in the buffer at once, so a
    factor whose copies exceed memory is refused when the wrapper is built, not while the
    first selected item is pushed; with nothing selected the factor costs nothing."""
    items = [{"__key__": "a"}, {"__key__": "b"}]
    with pytest.raises(ValueError, match=r"upsample_factor=1000000000000 holds the"):
        USEFULIterableDataset(items, ["a"], upsample_factor=10**12)
    assert len(list(USEFULIterableDataset(items, [], upsample_factor=10**12))) == 2


def test_epochs_beyond_int64_are_named():
    stream = USEFULIterableDataset([], ["a"])
    with pytest.raises(ValueError, match=r"epoch should be an integer in \[0, "):
        stream.set_epoch(2**64)
    with pytest.raises(ValueError, match=r"state\['epoch'\] should be an integer in \[0, "):
        stream.load_state_dict({"epoch": 2**64, "pass": 0, "offset": 0, "taken": 0})


def test_a_state_past_the_end_of_its_pass_is_refused_not_an_empty_epoch():
    """A restored offset beyond the stream's part (another stream or split) would silently
    yield nothing; it is refused when the pass is rebuilt. The pass's own length is fine."""
    items = [{"__key__": f"k{i}"} for i in range(10)]
    stream = USEFULIterableDataset(items, ["k1"])  # a pass: 11 items
    stream.load_state_dict({"epoch": 0, "pass": 0, "offset": 12, "taken": 12})
    with pytest.raises(ValueError, match=r"offset=12 items of pass 0, but .* has 11: the st"):
        list(stream)
    stream.load_state_dict({"epoch": 0, "pass": 0, "offset": 11, "taken": 11})
    assert list(stream) == []  # saved at the pass's end: nothing left of it

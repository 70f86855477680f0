"""timm integration: checkpoint loading, eval datasets, and the two-line train.py patch."""

from __future__ import annotations

import argparse
import contextlib
import types

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from torch.utils.data import TensorDataset

from useful_data._targets import dataset_targets

timm = pytest.importorskip("timm")
from timm.data import create_dataset, create_loader  # noqa: E402

from useful_data import Selection, USEFULDataset  # noqa: E402
from useful_data.timm import (  # noqa: E402
    _checkpoint_data_config,
    _create_eval_dataset,
    _create_timm_model,
    _extract_state_dict,
    load_timm_checkpoint,
)

NUM_CLASSES = 3
PER_CLASS = 10  # make_image_folder's defaults
MODEL = "resnet10t"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _create_timm_model(MODEL, num_classes=NUM_CLASSES)


def save_timm_style(model, path, *, prefix="module.", ema=None):
    """A checkpoint shaped like timm's CheckpointSaver writes it (args Namespace included)."""
    state = {
        "epoch": 4,
        "arch": MODEL,
        "state_dict": {prefix + k: v for k, v in model.state_dict().items()},
        "args": argparse.Namespace(model=MODEL, num_classes=NUM_CLASSES),
        "version": 2,
    }
    if ema is not None:
        state["state_dict_ema"] = ema
    torch.save(state, path)
    return path


def test_load_timm_checkpoint_strips_prefixes_and_reads_ema(model, tmp_path):
    shifted = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = save_timm_style(model, tmp_path / "checkpoint-4.pth.tar", ema=shifted)
    fresh = timm.create_model(MODEL, num_classes=NUM_CLASSES)
    load_timm_checkpoint(fresh, path)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    load_timm_checkpoint(fresh, path, use_ema=True)
    name = "fc.weight"
    assert torch.equal(fresh.state_dict()[name], shifted[name])


def test_load_bare_state_dict_with_compile_prefix(model, tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"_orig_mod.module." + k: v for k, v in model.state_dict().items()}, path)
    fresh = _create_timm_model(MODEL, num_classes=NUM_CLASSES, checkpoint=path)
    assert torch.equal(fresh.state_dict()["fc.bias"], model.state_dict()["fc.bias"])


def test_checkpoint_errors(model, tmp_path):
    path = save_timm_style(model, tmp_path / "c.pth.tar")
    with pytest.raises(ValueError, match="classifier with 3 classes but the model has 5"):
        _create_timm_model(MODEL, num_classes=5, checkpoint=path)
    with pytest.raises(ValueError, match=r"does not fit the model.*missing key"):
        _create_timm_model("resnet18", num_classes=NUM_CLASSES, checkpoint=path)
    with pytest.raises(ValueError, match="no EMA weights"):
        _create_timm_model(MODEL, num_classes=NUM_CLASSES, checkpoint=path, use_ema=True)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        _create_timm_model(MODEL, num_classes=NUM_CLASSES, checkpoint=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="not a timm model name"):
        _create_timm_model("resnet_does_not_exist", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="no model weights"):
        _extract_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}})


def test_eval_dataset_uses_eval_transforms_and_timm_order(image_root, model):
    ds = _create_eval_dataset("", image_root, model=model, input_size=32)
    assert len(ds) == NUM_CLASSES * PER_CLASS
    assert "RandomResizedCrop" not in repr(ds.transform)
    assert "CenterCrop" in repr(ds.transform)
    x, y = ds[0]
    assert tuple(x.shape) == (3, 32, 32)
    targets = dataset_targets(ds)
    assert targets.tolist() == np.repeat(np.arange(NUM_CLASSES), PER_CLASS).tolist()
    # the same order as timm's train.py builds dataset_train
    train = create_dataset("", root=str(image_root), split="train", is_training=True)
    assert [train.filename(i) for i in range(len(train))] == [
        ds.filename(i) for i in range(len(ds))
    ]
    assert y == targets[0]


def test_eval_dataset_errors(tmp_path, model):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"could not build dataset|holds no examples"):
        _create_eval_dataset("", tmp_path / "empty", model=model)
    with pytest.raises(ValueError, match="is not a folder"):
        _create_eval_dataset("", tmp_path / "missing", model=model)


@contextlib.contextmanager
def _process_group(tmp_path, distributed):
    """A one-rank gloo group while ``distributed`` (timm's create_loader then shards)."""
    initialised = False
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
        )
        initialised = True
    try:
        yield
    finally:
        if initialised:
            torch.distributed.destroy_process_group()


def _create_loader(dataset, *, distributed, batch_size, **kwargs):
    return create_loader(
        dataset,
        input_size=(3, 32, 32),
        batch_size=batch_size,
        is_training=True,
        num_workers=0,
        distributed=distributed,
        device=torch.device("cpu"),
        persistent_workers=False,
        **kwargs,
    )


def _selection_for(dataset):
    targets = dataset_targets(dataset)
    mask = np.zeros(len(targets), dtype=bool)
    mask[::3] = True  # a third of the examples are slow-learnable
    return Selection(mask=mask, loss=mask.astype(float), targets=targets)


@pytest.mark.parametrize("distributed", [False, True])
def test_train_py_patch_works_with_create_loader(image_root, tmp_path, distributed):
    """The two lines added to timm's train.py, then timm's own create_loader."""
    dataset_train = create_dataset("", root=str(image_root), split="train", is_training=True)
    path = _selection_for(dataset_train).save(tmp_path / "sel.npz")
    num_slow = int(Selection.load(path).num_slow_learnable)
    batch_size = 3
    before = len(dataset_train)

    # --- the patch ---
    from useful_data import USEFULDataset as _USEFULDataset

    dataset_train = _USEFULDataset(dataset_train, str(path))
    # -----------------
    assert len(dataset_train) == before + num_slow

    with _process_group(tmp_path, distributed):
        loader = _create_loader(
            dataset_train, distributed=distributed, batch_size=batch_size, use_prefetcher=False
        )
        assert loader.dataset is dataset_train
        # create_loader set the training transform through the wrapper, on the wrapped dataset
        assert dataset_train.dataset.transform is not None
        assert "RandomResizedCrop" in repr(dataset_train.dataset.transform)
        total = before + num_slow
        expected = total // batch_size if loader.drop_last else -(-total // batch_size)
        assert len(loader) == expected
        seen = 0
        for x, y in loader:
            assert x.shape[1:] == (3, 32, 32)
            assert y.max() < NUM_CLASSES
            seen += x.shape[0]
        assert seen == (expected * batch_size if loader.drop_last else total)


@pytest.mark.parametrize(
    ("distributed", "prefetcher", "multi_epochs"),
    [(False, False, False), (True, False, False), (False, True, False), (False, False, True)],
)
def test_equal_length_patch_puts_the_sampler_into_create_loader(
    image_root, tmp_path, distributed, prefetcher, multi_epochs
):
    """The equal-length recipe: create_loader, then with_sampler, then set_epoch per epoch."""
    dataset_train = create_dataset("", root=str(image_root), split="train", is_training=True)
    path = _selection_for(dataset_train).save(tmp_path / "sel.npz")
    targets = dataset_targets(dataset_train)
    n, batch_size = len(dataset_train), 4
    with _process_group(tmp_path, distributed):
        loader_train = _create_loader(
            dataset_train,
            distributed=distributed,
            batch_size=batch_size,
            use_prefetcher=prefetcher,
            use_multi_epochs_loader=multi_epochs,
        )
        kind = type(loader_train)
        # --- the patch ---
        from useful_data import UpsampleSampler
        from useful_data.timm import with_sampler

        sampler = UpsampleSampler(str(path), n, seed=3, epoch_size=n)
        loader_train = with_sampler(loader_train, sampler)
        # -----------------
        assert type(loader_train) is kind
        assert loader_train.dataset is dataset_train
        assert len(loader_train) == n // batch_size  # SGD's updates_per_epoch (drop_last)
        if multi_epochs:
            return  # it iterates the sampler in its own background passes
        for epoch in range(3):
            loader_train.sampler.set_epoch(epoch)  # the patched line of train.py's epoch loop
            labels = [int(v) for _, y in loader_train for v in y]
            drawn = list(sampler)[: len(loader_train) * batch_size]
            assert labels == [int(targets[i]) for i in drawn]


def test_with_sampler_refuses_what_it_cannot_rebuild():
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from useful_data.timm import with_sampler

    data = TensorDataset(torch.arange(6))
    sampler = SequentialSampler(data)
    with pytest.raises(TypeError, match="DataLoader or a timm PrefetchLoader"):
        with_sampler([1, 2], sampler)
    custom = DataLoader(data, batch_sampler=BatchSampler(sampler, 2, drop_last=False))
    with pytest.raises(ValueError, match="fixed batch_size only"):
        with_sampler(custom, sampler)


def test_usefuldataset_from_saved_selection_matches_fingerprint(image_root, tmp_path):
    train = create_dataset("", root=str(image_root), split="train", is_training=True)
    sel = _selection_for(train)
    wrapped = USEFULDataset(train, sel.save(tmp_path / "s.npz"))
    assert wrapped.index_map[len(train) :].tolist() == sel.indices.tolist()


def test_timm_folder_labels_are_read_and_checked_without_loading_images(image_root, model):
    ds = _create_eval_dataset("", image_root, model=model, input_size=32)
    selection = _selection_for(ds)
    assert len(USEFULDataset(ds, selection)) == len(ds) + selection.num_slow_learnable
    other = Selection(mask=selection.mask, loss=selection.loss, targets=selection.targets[::-1])
    with pytest.raises(ValueError, match="fingerprint"):
        USEFULDataset(ds, other)


def test_checkpoint_data_config_and_eval_normalization(image_root, model, tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    args = argparse.Namespace(input_size=[3, 24, 24], img_size=None, mean=(0.5, 0.4, 0.3))
    args.std, args.crop_pct, args.interpolation = (0.2, 0.2, 0.2), 0.9, "bilinear"
    torch.save({"state_dict": model.state_dict(), "args": args}, path)
    config = _checkpoint_data_config(path)
    assert config == {"input_size": (3, 24, 24), "crop_pct": 0.9, "mean": (0.5, 0.4, 0.3),
                      "std": (0.2, 0.2, 0.2), "interpolation": "bilinear"}  # fmt: skip
    ds = _create_eval_dataset("", image_root, model=model, **config)
    assert tuple(ds[0][0].shape) == (3, 24, 24)
    normalize = ds.transform.transforms[-1]
    assert tuple(normalize.mean.tolist()) == pytest.approx((0.5, 0.4, 0.3))
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # no arguments saved
    assert _checkpoint_data_config(tmp_path / "bare.pth") == {}
    with pytest.raises(ValueError, match="one value per input channel"):
        _create_eval_dataset("", image_root, model=model, mean=(0.5, 0.5))


def test_inspect_plot_passes_class_names_and_defaults(monkeypatch, tmp_path):
    """--plot with --data-dir: class names from the dataset, 6 per class, 10 classes, seed 0."""
    import timm.data

    from useful_data.cli import main

    seen = {}
    fake = types.SimpleNamespace(reader=types.SimpleNamespace(class_to_idx={"cat": 0, "dog": 1}))
    monkeypatch.setattr(timm.data, "create_dataset", lambda *a, **k: fake)
    monkeypatch.setattr("useful_data.plot.plot_selection", lambda *a, **k: seen.update(k))
    sel = Selection(mask=np.array([True, False]), loss=np.ones(2), targets=np.array([0, 1]))
    path = str(sel.save(tmp_path / "s.npz"))
    argv = ["inspect", path, "--plot", str(tmp_path / "p.png"), "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    assert seen["class_names"] == ["cat", "dog"]
    assert (seen["num_per_class"], seen["max_classes"], seen["seed"]) == (6, 10, 0)


def test_create_timm_model_returns_eval_mode(model):
    """As documented: the model comes back in eval mode (BatchNorm uses running stats)."""
    assert not model.training


def test_extract_state_dict_reads_every_documented_key():
    """``model``/``model_ema`` too; ``state_dict`` wins over ``model``."""
    from useful_data.timm import _extract_state_dict

    a, b = torch.zeros(1), torch.ones(1)
    assert list(_extract_state_dict({"model": {"module.w": a}, "epoch": 1})) == ["w"]
    assert list(_extract_state_dict({"model_ema": {"w": a}}, use_ema=True)) == ["w"]
    both = _extract_state_dict({"state_dict": {"w": a}, "model": {"w": b}})
    assert torch.equal(both["w"], a)


def test_checkpoint_that_does_not_fit_is_a_value_error(model, tmp_path):
    """Only unexpected keys, or a missing classifier, are ValueErrors naming the keys."""
    from useful_data.timm import load_timm_checkpoint

    extra = dict(model.state_dict(), **{"extra.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected key"):
        load_timm_checkpoint(model, tmp_path / "extra.pth")
    missing = {k: v for k, v in model.state_dict().items() if k != "fc.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing key"):
        load_timm_checkpoint(model, tmp_path / "missing.pth")


def test_checkpoint_data_config_sizes_and_unset_values(model, tmp_path):
    """in_chans is used with img_size; input_size wins over img_size; unset args are left out."""
    from useful_data.timm import _checkpoint_data_config

    path = tmp_path / "a.pth.tar"
    args = argparse.Namespace(img_size=24, in_chans=1, input_size=None, crop_pct=None,
                              mean=None, std=None, interpolation="")  # fmt: skip
    torch.save({"state_dict": {}, "args": args}, path)
    assert _checkpoint_data_config(path) == {"input_size": (1, 24, 24)}
    args = argparse.Namespace(img_size=32, input_size=[3, 20, 20])
    torch.save({"state_dict": {}, "args": args}, path)
    assert _checkpoint_data_config(path) == {"input_size": (3, 20, 20)}


def test_eval_dataset_uses_crop_pct_interpolation_and_checks_input_size(model, image_root):
    """crop_pct and interpolation reach the eval transform; input_size must be (C, H, W)."""
    from useful_data.timm import _create_eval_dataset

    ds = _create_eval_dataset("", image_root, model=model, input_size=32, crop_pct=0.5,
                             interpolation="bilinear")  # fmt: skip
    resize = ds.transform.transforms[0]  # 32 / crop_pct 0.5: resize to 64, crop the center 32
    assert resize.size in (64, [64], (64, 64))
    assert resize.interpolation.value == "bilinear"
    with pytest.raises(ValueError, match=r"input_size should be \(C, H, W\)"):
        _create_eval_dataset("", image_root, model=model, input_size=(32, 32))


def test_eval_dataset_builds_torch_datasets_for_download_without_the_folder(
    model, tmp_path, monkeypatch
):
    """torch/ names with download=True may start from a missing folder; is_training=False."""
    import timm.data

    from useful_data.timm import _create_eval_dataset

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs)
        return TensorDataset(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))

    monkeypatch.setattr(timm.data, "create_dataset", fake)
    _create_eval_dataset("torch/cifar10", tmp_path / "new", model=model, download=True)
    assert seen["is_training"] is False and seen["download"] is True

"""timm integration: a model from a timm checkpoint and an eval-transform view of its training set.

USEFUL's selection step needs the model at the separating epoch and the training set seen
without training augmentation. With timm's ``train.py`` that is a checkpoint file
(``checkpoint-<epoch>.pth.tar``) and a dataset name understood by ``timm.data.create_dataset``.
This module turns both into what `find_slow_learnable` takes; ``useful-data select`` is the
command line over it.

The other half, training on the upsampled data, is two lines in timm's ``train.py`` right
after ``dataset_train = create_dataset(...)``::

    from useful_data import USEFULDataset
    dataset_train = USEFULDataset(dataset_train, args.useful_selection)

For USEFUL at the original epoch length instead (``UpsampleSampler(..., epoch_size=N)``),
`with_sampler` puts the sampler into the loader ``create_loader`` built, which takes none.

Paper: Nguyen et al., "Changing the Training Data Distribution to Reduce Simplicity Bias
Improves In-distribution Generalization", NeurIPS 2024, Algorithm 1.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from useful_data._deprecation import moved_names

__all__ = ["load_timm_checkpoint", "with_sampler"]

#: Keys under which timm (and most training scripts) store weights, in the order tried.
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model")
#: Keys under which timm stores the EMA weights (``--model-ema``).
EMA_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema")
#: The resize interpolations timm's eval transform takes (``--interpolation``).
_INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
#: Split names timm treats as the training split: with no such subfolder, an image folder
#: dataset is read from the data folder itself (as timm's ``train.py`` reads it).
_TRAIN_SPLITS = ("train", "training")
_EVAL_SPLITS = ("val", "valid", "validation", "eval", "evaluation")
#: Dataset name prefixes that are not read from a folder of images (no split subfolder).
_NOT_FOLDERS = ("hfds", "hfids", "tfds", "wds")
#: Prefixes added by DistributedDataParallel and ``torch.compile``, stripped on load.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def _read_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> Any:
    """``torch.load`` of a timm checkpoint (or ``safetensors``), on the CPU; ``mmap=True``
    maps the tensors of a zip-format file instead of reading them (for its metadata)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint={str(path)!r} is not a file")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # timm's CheckpointSaver stores its argparse.Namespace next to the weights.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            mapped = mmap and zipfile.is_zipfile(path)  # torch's default format since 1.6
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
        except Exception as err:
            raise ValueError(
                f"checkpoint={str(path)!r} could not be read as a PyTorch checkpoint "
                f"(torch.load with weights_only=True failed: {err})"
            ) from err


def _strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def _extract_state_dict(checkpoint: Any, *, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Pick the model weights out of a loaded checkpoint, the way timm saves them.

    Args:
        checkpoint: What ``torch.load`` returned: a bare state dict, or a dict holding one
            under ``state_dict``/``model`` (and the EMA weights under ``state_dict_ema``/
            ``model_ema``).
        use_ema: Take the EMA weights (an error if the checkpoint has none).

    Returns:
        The state dict with ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes
        removed.

    Raises:
        ValueError: if no state dict is found, or ``use_ema`` and there are no EMA weights.

    Example:
        >>> import torch
        >>> ckpt = {"epoch": 9, "state_dict": {"module.fc.weight": torch.zeros(2, 3)}}
        >>> list(_extract_state_dict(ckpt))
        ['fc.weight']
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"checkpoint should be a dict (a state dict or timm's checkpoint dict), but got "
            f"{type(checkpoint).__name__}"
        )
    keys = EMA_KEYS if use_ema else STATE_DICT_KEYS
    found = next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)
    if found is not None:
        state = checkpoint[found]
    elif use_ema:
        raise ValueError(
            f"use_ema=True but the checkpoint has no EMA weights under {list(EMA_KEYS)}; "
            f"its keys are {sorted(map(str, checkpoint))[:10]}"
        )
    elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = checkpoint  # a bare state dict
    else:
        raise ValueError(
            f"the checkpoint holds no model weights under {list(STATE_DICT_KEYS)} and is not a "
            f"bare state dict; its keys are {sorted(map(str, checkpoint))[:10]}"
        )
    return _strip_prefixes(state)


def load_timm_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, use_ema: bool = False
) -> nn.Module:
    """Load a checkpoint saved by timm's ``train.py`` (or a bare state dict) into ``model``.

    Args:
        model: The freshly built model (``timm.create_model(name, num_classes=...)``).
        path: ``checkpoint-<epoch>.pth.tar``, ``last.pth.tar``, a ``.pth`` state dict or a
            ``.safetensors`` file.
        use_ema: Load the EMA weights instead of the raw ones (USEFUL clusters the raw model).

    Returns:
        ``model``, with the weights loaded (strictly: every key must match).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: if the weights do not fit the model: a different class count, missing or
            unexpected keys, or other shape mismatches (each named in the message).
    """
    state = _extract_state_dict(_read_checkpoint(path), use_ema=use_ema)
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def _check_fits(model: nn.Module, state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    own = model.state_dict()
    name = type(model).__name__
    classifier = _classifier_weight_key(model)
    if classifier is not None and classifier in state and classifier in own:
        have, want = state[classifier].shape[0], own[classifier].shape[0]
        if have != want:
            raise ValueError(
                f"checkpoint={str(path)!r} has a classifier with {have} classes but the model "
                f"has {want} (num_classes={want}); pass num_classes={have} (--num-classes {have})"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}")
        raise ValueError(
            f"checkpoint={str(path)!r} does not fit the model ({name}): {'; '.join(parts)}. "
            "Is the model name the architecture the checkpoint was trained with?"
        )


def _classifier_weight_key(model: nn.Module) -> str | None:
    get_classifier = getattr(model, "get_classifier", None)
    if not callable(get_classifier):
        return None
    head = get_classifier()
    for prefix, module in model.named_modules():
        if module is head and isinstance(getattr(module, "weight", None), torch.Tensor):
            return f"{prefix}.weight" if prefix else "weight"
    return None


def _import_timm() -> Any:
    """The ``timm`` module, or an `ImportError` that names the extra to install."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            "this part of useful_data.timm needs timm: pip install 'useful-data[timm]'"
        ) from err
    return timm


def _check_model_name(name: str) -> None:
    """Raise a `ValueError` (with similar names) if ``name`` is not a timm model name."""
    timm = _import_timm()

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise ValueError(
            f"model={name!r} is not a timm model name; similar names: {close}"
            if close
            else f"model={name!r} is not a timm model name (see timm.list_models())"
        )


def _create_timm_model(
    name: str,
    *,
    num_classes: int,
    checkpoint: str | os.PathLike[str] | None = None,
    use_ema: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, num_classes=..., pretrained=False)``, then the checkpoint.

    Args:
        name: A timm model name (see ``timm.list_models()``).
        num_classes: Outputs of the classifier; must match the checkpoint.
        checkpoint: A file for `load_timm_checkpoint`; ``None`` keeps the random init.
        use_ema: Load the checkpoint's EMA weights.
        **kwargs: Passed to ``timm.create_model`` (e.g. ``in_chans``, ``drop_rate``).

    Returns:
        The model, in eval mode.

    Raises:
        ValueError: for an unknown model name or a checkpoint that does not fit.

    Example:
        >>> model = _create_timm_model("resnet10t", num_classes=3)
        >>> model.get_classifier().out_features
        3
    """
    timm = _import_timm()

    _check_model_name(name)
    model = timm.create_model(name, num_classes=num_classes, pretrained=False, **kwargs)
    if checkpoint is not None:
        load_timm_checkpoint(model, checkpoint, use_ema=use_ema)
    return model.eval()


def _checkpoint_data_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The eval data settings of the training run that saved ``path``, where timm kept them.

    timm's ``train.py`` (its ``CheckpointSaver``) stores the run's arguments in every
    checkpoint; the ones that shape the eval transform are returned under
    `_create_eval_dataset`'s names, so the selection sees the images as training did.

    Args:
        path: A checkpoint file (see `load_timm_checkpoint`).

    Returns:
        A dict with any of ``input_size`` (``(C, H, W)``, from ``--input-size`` or
        ``--img-size`` and ``--in-chans``), ``crop_pct``, ``mean``, ``std`` and
        ``interpolation`` that the run set; empty for a checkpoint without arguments (a bare
        state dict, a ``.safetensors`` file) or a run that left them at the model's defaults.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: if it cannot be read as a checkpoint.
    """
    checkpoint = _read_checkpoint(path, mmap=True)  # the weights are not needed here
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        return {}
    config: dict[str, Any] = {}
    if args.get("input_size"):
        config["input_size"] = tuple(int(v) for v in args["input_size"])
    elif args.get("img_size"):
        size = int(args["img_size"])
        config["input_size"] = (int(args.get("in_chans") or 3), size, size)
    for key in ("crop_pct", "mean", "std", "interpolation"):
        if args.get(key):  # timm's defaults: None, or "" for interpolation
            value = args[key]
            config[key] = tuple(float(v) for v in value) if key in ("mean", "std") else value
    return config


def _check_split(name: str, root: str | os.PathLike[str], split: str) -> None:
    """Raise a `ValueError` if ``split`` names no folder of an image-folder dataset.

    timm's ``create_dataset`` reads an image folder's split from ``root/split`` (or a synonym:
    ``train``/``training``, ``val``/``validation``/...) and, where none exists, from
    ``root`` itself. That fallback is kept for a training split (``--data-dir`` pointing at
    the training images, as timm's ``train.py`` reads them) and refused for any other split
    name, which would otherwise silently be the training images. Datasets that are not image
    folders (``torch/cifar10``, ``hfds/...``) are not checked here.

    Example:
        >>> import tempfile
        >>> _check_split("", tempfile.gettempdir(), "train")  # falls back to the folder
        >>> _check_split("", tempfile.gettempdir(), "no-such-split")
        Traceback (most recent call last):
        ...
        ValueError: split='no-such-split' names no subfolder of ...
    """
    prefix, sep, rest = name.partition("/")
    prefix = prefix.lower() if sep else ""
    folder = prefix not in (*_NOT_FOLDERS, "torch") or rest.lower() in ("image_folder", "folder")
    if not folder or not os.path.isdir(root):
        return
    base = split.split("[")[0]
    names = [base]
    for synonyms in (_TRAIN_SPLITS, _EVAL_SPLITS):
        if base in synonyms:
            names += synonyms
    if base in _TRAIN_SPLITS or any(os.path.exists(os.path.join(root, n)) for n in names):
        return
    raise ValueError(
        f"split={split!r} names no subfolder of data_dir={str(root)!r} (tried "
        f"{', '.join(dict.fromkeys(names))}); only a training split falls back to the folder "
        "itself, so pass the split the images are in, or point the data folder at them"
    )


def _create_eval_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    model: nn.Module,
    split: str = "train",
    input_size: Sequence[int] | int | None = None,
    crop_pct: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    download: bool = False,
    class_map: str = "",
) -> Dataset[Any]:
    """The training set as ``timm.data.create_dataset`` builds it, with timm's EVAL transforms.

    The examples come in the same order as in timm's ``train.py`` (same ``name``, ``root``,
    ``split``), so a selection computed on this view fits ``dataset_train`` there. Its transform
    is ``create_transform(**resolve_data_config(..., model=model), is_training=False)``: resize,
    center crop, normalise; no training augmentation.

    Args:
        name: timm dataset name: ``""`` for an image folder, or ``"torch/cifar10"`` etc.
        root: ``--data-dir`` of timm (the folder, or where torchvision keeps the files).
        model: The model, for its default data config (input size, mean, std, crop).
        split: The split the model was trained on (timm's ``--train-split``).
        input_size: ``(C, H, W)`` or an int image size; defaults to the model's.
        crop_pct: Center-crop fraction of the eval transform; defaults to the model's.
        mean: Normalization mean per channel (timm's ``--mean``); defaults to the model's.
        std: Normalization std per channel (timm's ``--std``); defaults to the model's.
        interpolation: Resize interpolation (timm's ``--interpolation``, e.g. ``"bicubic"``);
            defaults to the model's. `_checkpoint_data_config` reads all of these from the
            training run's arguments, which timm saves in its checkpoints.
        download: Let torchvision datasets download (``torch/...`` names only).
        class_map: timm's ``--class-map`` file, if training used one.

    Returns:
        The dataset, with ``.transform`` set to the eval transform.

    Raises:
        ValueError: if the dataset cannot be built or holds no examples, or ``split`` names
            no folder of an image folder (see `_check_split`).
    """
    _import_timm()
    from timm.data import create_dataset, create_transform, resolve_data_config

    if not os.path.isdir(root) and not (download and name.lower().startswith("torch/")):
        raise ValueError(f"data_dir={str(root)!r} is not a folder")
    _check_split(name, root, split)
    try:
        dataset = create_dataset(
            name,
            root=str(root),
            split=split,
            is_training=False,
            download=download,
            class_map=class_map,  # type: ignore[arg-type]  # timm takes a file name too
        )
    except (RuntimeError, AssertionError, FileNotFoundError) as err:
        raise ValueError(
            f"could not build dataset={name!r} from data_dir={str(root)!r}, split={split!r}: {err}"
        ) from err
    if len(dataset) == 0:
        raise ValueError(
            f"dataset={name!r} at data_dir={str(root)!r}, split={split!r} holds no examples; "
            "an image folder needs one subfolder of images per class"
        )
    args: dict[str, Any] = {}
    if input_size is not None:
        size = tuple(input_size) if not isinstance(input_size, int) else (3, input_size, input_size)
        if len(size) != 3:
            raise ValueError(f"input_size should be (C, H, W) or an int, but got {input_size}")
        args["input_size"] = size
    if crop_pct is not None:
        args["crop_pct"] = crop_pct
    channels = (args.get("input_size") or resolve_data_config({}, model=model)["input_size"])[0]
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            if len(value) != channels:
                raise ValueError(
                    f"{key} should have one value per input channel, but got {key}={value}"
                )
            args[key] = tuple(float(v) for v in value)
    if interpolation:
        args["interpolation"] = interpolation
    config = resolve_data_config(args, model=model)
    dataset.transform = create_transform(**config, is_training=False)
    return dataset


def with_sampler(loader: Any, sampler: Sampler[int]) -> Any:
    """The training loader timm's ``create_loader`` built, drawing its examples with ``sampler``.

    ``create_loader`` chooses its own sampler (a shuffle, or a ``DistributedSampler`` with
    ``distributed=True``) and takes none, so an `UpsampleSampler`
    (``epoch_size=N`` for USEFUL at the original epoch length) goes in afterwards: the inner
    ``DataLoader`` is rebuilt with the same dataset, batch size, ``drop_last``, workers, collate
    function (``fast_collate``, mixup), ``pin_memory``, worker seeding and persistent workers,
    around ``sampler``, and put back into timm's ``PrefetchLoader`` if there is one (its
    normalisation and random erasing stay). A ``MultiEpochsDataLoader`` stays one. Call this
    before ``len(loader_train)`` sizes the LR schedule, as timm's ``train.py`` does right
    after building the loaders.

    Args:
        loader: What ``timm.data.create_loader`` returned (or any ``DataLoader`` with a
            ``batch_size``).
        sampler: The sampler to draw with; it shards itself (an `UpsampleSampler`
            reads the process group).

    Returns:
        ``loader`` with the new inner loader if it was a ``PrefetchLoader``, else the new
        ``DataLoader``.

    Raises:
        TypeError: if ``loader`` is not a ``DataLoader`` or a ``PrefetchLoader`` around one.
        ValueError: if it batches with a custom batch sampler (timm's scheduled batching),
            which has no single batch size to keep.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from useful_data import UpsampleSampler
        >>> loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=4, shuffle=True)
        >>> sampler = UpsampleSampler([0, 1, 2, 3, 4], num_examples=10, epoch_size=10)
        >>> loader = with_sampler(loader, sampler)
        >>> loader.sampler is sampler, len(loader)
        (True, 3)
    """
    inner = getattr(loader, "loader", loader)  # timm's PrefetchLoader keeps it as .loader
    if not isinstance(inner, DataLoader):
        raise TypeError(
            "loader should be a DataLoader or a timm PrefetchLoader around one, but got "
            f"{type(loader).__name__}"
        )
    batch_sampler = inner.batch_sampler
    if not isinstance(batch_sampler, BatchSampler):  # MultiEpochsDataLoader's _RepeatSampler
        batch_sampler = getattr(batch_sampler, "sampler", batch_sampler)
    if inner.batch_size is None or type(batch_sampler) is not BatchSampler:
        raise ValueError(
            f"loader batches with {type(inner.batch_sampler).__name__}, not a plain batch "
            "size (timm's scheduled batching?); with_sampler keeps a fixed batch_size only"
        )
    rebuilt = type(inner)(
        inner.dataset,
        batch_size=inner.batch_size,
        sampler=sampler,
        drop_last=inner.drop_last,
        num_workers=inner.num_workers,
        collate_fn=inner.collate_fn,
        pin_memory=inner.pin_memory,
        timeout=inner.timeout,
        worker_init_fn=inner.worker_init_fn,
        multiprocessing_context=inner.multiprocessing_context,
        generator=inner.generator,
        prefetch_factor=inner.prefetch_factor,
        persistent_workers=inner.persistent_workers,
        pin_memory_device=inner.pin_memory_device,
    )
    if inner is loader:
        return rebuilt
    loader.loader = rebuilt
    return loader


# Private since 1.0: the helpers of ``useful-data select``.
__getattr__ = moved_names(
    __name__,
    {
        "INTERPOLATIONS": "useful_data.timm:_INTERPOLATIONS",
        "check_model_name": "useful_data.timm:_check_model_name",
        "check_split": "useful_data.timm:_check_split",
        "checkpoint_data_config": "useful_data.timm:_checkpoint_data_config",
        "create_eval_dataset": "useful_data.timm:_create_eval_dataset",
        "create_timm_model": "useful_data.timm:_create_timm_model",
        "extract_state_dict": "useful_data.timm:_extract_state_dict",
    },
)

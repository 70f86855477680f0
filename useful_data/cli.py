"""The ``useful-data`` command line.

``useful-data --version`` prints the version; ``useful-data select`` computes a selection from a
timm checkpoint taken at the separating epoch; ``useful-data inspect SELECTION`` prints a
per-class summary of a saved `Selection` and, with ``--plot``, draws it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from useful_data._checks import check_destination
from useful_data._deprecation import moved_names
from useful_data._keys import is_string_keys
from useful_data._targets import dataset_targets
from useful_data._version import __version__
from useful_data.selection import Selection
from useful_data.timm import _INTERPOLATIONS

__all__ = ["main"]


def _fmt_loss(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _fmt_separation(selection: Selection) -> str:
    sep = selection.separation
    if sep.num_classes_split == 0:
        return "separation: no class has examples on both sides (weak)"
    return (
        f"separation: loss auc {sep.auc:.3f}   loss gap {sep.loss_gap:.4f}   "
        f"over {sep.num_classes_split} split classes"
    )


def _fmt_diagnosis(selection: Selection) -> list[str]:
    """``check: ok``, or one ``warning:`` line per finding of `Selection.diagnose`."""
    found = selection.diagnose()
    return [f"warning: {message}" for message in found] if found else ["check: ok"]


def _format_summary(selection: Selection) -> str:
    """Render a selection's per-class summary as a plain-text table.

    ``auc`` is the ROC-AUC of the loss for membership in the slow-learnable cluster within a
    class (0.5: the split ignores the loss, like random upsampling; 1.0: perfectly separated)
    and ``gap`` the mean loss of the slow-learnable cluster minus the rest. The ``separation``
    line averages both over the split classes, weighted by class size; then ``check: ok``,
    or a ``warning:`` line for each thing `Selection.diagnose` finds (a phase-1 model that
    has not learned, a selected share far from the paper's, a weak split).
    """
    rows = [("class", "examples", "slow", "slow %", "loss slow", "loss fast", "auc", "gap", "note")]
    for c in selection.class_summary():
        share = 100.0 * c.num_slow_learnable / c.num_examples if c.num_examples else 0.0
        rows.append(
            (
                str(c.label),
                str(c.num_examples),
                str(c.num_slow_learnable),
                f"{share:.1f}",
                _fmt_loss(c.mean_loss_slow),
                _fmt_loss(c.mean_loss_fast),
                "-" if math.isnan(c.loss_auc) else f"{c.loss_auc:.3f}",
                _fmt_loss(c.loss_gap),
                c.note,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    n, s = selection.num_examples, selection.num_slow_learnable
    head = [
        f"examples: {n}   slow-learnable: {s} ({100.0 * s / max(n, 1):.1f}%)   "
        f"upsample_factor: {selection.upsample_factor}   "
        f"upsampled size: {selection.upsampled_size} ({selection.upsampled_size / max(n, 1):.2f}x)",
        "params: " + ", ".join(f"{k}={v}" for k, v in sorted(selection.params.items())),
        _fmt_separation(selection),
        *_fmt_diagnosis(selection),
        "",
    ]
    if selection.keys is not None:  # computed on a stream: addressed by key
        kind = "string" if is_string_keys(selection.keys) else "integer"
        head.insert(2, f"keys: {n} {kind} keys (a stream; upsample with USEFULIterableDataset)")
    return "\n".join(head + lines)


def _format_cost(
    selection: Selection,
    *,
    separating_epoch: int | None = None,
    total_epochs: int | None = None,
    epoch_size: int | None = None,
) -> str:
    """One line on the compute of phase 2 (and of the whole run) relative to plain training.

    Without ``separating_epoch`` and ``total_epochs`` only the per-epoch ratio of phase 2 is
    known; with them the total, ``t/T + (N + (k - 1)|S|)/N`` or ``t/T + M/N`` with
    ``epoch_size = M`` (see `Selection.relative_cost`).

    Raises:
        ValueError: if exactly one of ``separating_epoch`` and ``total_epochs`` is given, or
            `Selection.relative_cost` rejects the numbers.
    """
    if (separating_epoch is None) != (total_epochs is None):
        raise ValueError(
            "--separating-epoch and --epochs go together: give both for the total cost "
            f"(got separating_epoch={separating_epoch}, epochs={total_epochs})"
        )
    n = selection.num_examples
    size = selection.upsampled_size if epoch_size is None else epoch_size
    kind = "M" if epoch_size is not None else "N + (k-1)|S|"
    phase2 = f"{kind} = {size} per epoch / N = {n}"
    if separating_epoch is None or total_epochs is None:
        per_epoch = selection.relative_cost(separating_epoch=0, total_epochs=1, epoch_size=size)
        return (
            f"cost: phase 2 {per_epoch:.2f}x SGD per epoch ({phase2}); "
            "pass --separating-epoch and --epochs for the total"
        )
    total = selection.relative_cost(
        separating_epoch=separating_epoch, total_epochs=total_epochs, epoch_size=size
    )
    return (
        f"cost: {total:.2f}x SGD = t/T ({separating_epoch}/{total_epochs} = "
        f"{separating_epoch / total_epochs:.2f}) + {size / max(n, 1):.2f} ({phase2})"
    )


def _int_at_least(minimum: int) -> Any:
    """An argparse ``type``: an integer ``>= minimum``, rejected before any work is done."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"should be an integer, but got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"should be an integer >= {minimum}, but got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


_POSITIVE, _NON_NEGATIVE = _int_at_least(1), _int_at_least(0)


def _finite(text: str) -> float:
    """An argparse ``type``: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be a number, but got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"should be a finite number, but got {text}")
    return value


def _positive_at_most(high: float) -> Any:
    """An argparse ``type``: a finite number in ``(0, high]``."""

    def parse(text: str) -> float:
        value = _finite(text)
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"should be a number in (0, {high:g}], but got {text}")
        return value

    parse.__name__ = f"number in (0, {high:g}]"
    return parse


class _Parser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``useful-data`` (its subcommands are added here)."""
    parser = _Parser(
        prog="useful-data",
        description="USEFUL: upsample slow-learnable examples to reduce simplicity bias.",
    )
    parser.add_argument("--version", action="version", version=f"useful-data {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_select(sub)
    inspect = sub.add_parser(
        "inspect",
        help="print a per-class summary of a saved selection (and draw it with --plot)",
        description="Print a per-class summary of a saved selection. With --plot, draw a "
        "per-class bar chart, and with --data-dir also a grid of random slow- vs "
        "fast-learnable images per class (the paper's Figure 1). Needs matplotlib: "
        "pip install 'useful-data[plot]'.",
    )
    inspect.add_argument(
        "selection", metavar="SELECTION_FILE", help="file written by Selection.save"
    )
    inspect.add_argument("--plot", metavar="OUT.png", help="draw the selection into this file")
    inspect.add_argument(
        "--data-dir", help="the training images, for the grid (same as for select)"
    )
    inspect.add_argument(
        "--dataset", default="", help="timm dataset name ('' = image folder, torch/cifar10, ...)"
    )
    inspect.add_argument("--split", default="train", help="dataset split (default: train)")
    inspect.add_argument(
        "--num-per-class", type=_POSITIVE, default=6, help="images per group and class"
    )
    inspect.add_argument("--max-classes", type=_POSITIVE, default=10, help="classes in the grid")
    inspect.add_argument("--seed", type=_NON_NEGATIVE, default=0, help="seed of the random images")
    inspect.add_argument(
        "--separating-epoch",
        type=_NON_NEGATIVE,
        help="t, the epochs of phase 1 (with --epochs: the total cost relative to SGD)",
    )
    inspect.add_argument(
        "--epochs", type=_POSITIVE, help="T, the epochs of the original schedule and of phase 2"
    )
    inspect.add_argument(
        "--epoch-size",
        type=_POSITIVE,
        help="M, examples per phase-2 epoch with equal-length epochs "
        "(UpsampleSampler(epoch_size=M)); default: the whole upsampled set",
    )
    return parser


def _add_select(sub: Any) -> None:
    select = sub.add_parser(
        "select",
        help="compute a selection from a timm checkpoint at the separating epoch",
        description="Load a timm checkpoint saved at the separating epoch, run the model over "
        "the training set with timm's EVAL transforms (no augmentation), cluster its outputs "
        "class by class, and save the slow-learnable examples. Then train with "
        "USEFULDataset(dataset_train, SELECTION_FILE). The eval transform's size, crop, "
        "mean, std and interpolation default to what the training run used (timm saves its "
        "arguments in the checkpoint), else to the model's.",
    )
    select.add_argument("--model", required=True, help="timm model name, e.g. resnet18")
    select.add_argument("--checkpoint", required=True, help="checkpoint-<epoch>.pth.tar of timm")
    select.add_argument("--num-classes", type=_POSITIVE, required=True, help="classifier outputs")
    select.add_argument("--data-dir", required=True, help="dataset root (timm's --data-dir)")
    select.add_argument(
        "--dataset", default="", help="timm dataset name ('' = image folder, torch/cifar10, ...)"
    )
    select.add_argument("--split", default="train", help="the training split (default: train)")
    select.add_argument("--class-map", default="", help="timm's --class-map file, if used")
    select.add_argument("--download", action="store_true", help="download torch/ datasets")
    # Each eval-transform flag defaults to the training run's value saved in the checkpoint,
    # then to the model's (see _select); the help says so once per flag.
    run = "(default: the training run's, saved in the checkpoint, else the model's)"
    size = select.add_mutually_exclusive_group()
    size.add_argument("--img-size", type=_POSITIVE, help=f"input image size {run}")
    size.add_argument(
        "--input-size",
        type=_POSITIVE,
        nargs=3,
        metavar=("C", "H", "W"),
        help=f"input size C H W {run}",
    )
    select.add_argument(
        "--crop-pct",
        type=_positive_at_most(1.0),
        help=f"eval center-crop fraction, in (0, 1] {run}",
    )
    select.add_argument(
        "--mean", type=_finite, nargs="+", metavar="MEAN", help=f"normalization mean {run}"
    )
    select.add_argument(
        "--std",
        type=_positive_at_most(math.inf),
        nargs="+",
        metavar="STD",
        help=f"normalization std {run}",
    )
    select.add_argument(
        "--interpolation", choices=_INTERPOLATIONS, help=f"resize interpolation {run}"
    )
    select.add_argument("--use-ema", action="store_true", help="cluster the EMA weights")
    select.add_argument(
        "--batch-size",
        type=_POSITIVE,
        help="forward batch size (default: 128 on a CPU, 256 on a GPU)",
    )
    select.add_argument(
        "--workers", type=_NON_NEGATIVE, default=4, help="data loader workers (default: 4)"
    )
    select.add_argument("--device", help="default: cuda if available, else cpu")
    select.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="feed images in channels_last (default: on a CPU when the model's first batch "
        "gives the same logits both ways)",
    )
    select.add_argument(
        "--backend",
        choices=("auto", "cuml", "sklearn", "torch"),
        default="auto",
        help="k-means backend (auto: cuML where usable, else torch)",
    )
    select.add_argument("--seed", type=_NON_NEGATIVE, default=0, help="k-means seed (default: 0)")
    select.add_argument(
        "--upsample-factor",
        type=_POSITIVE,
        default=2,
        help="times a slow example appears (paper: 2)",
    )
    select.add_argument("--no-progress", action="store_true", help="no progress bar")
    select.add_argument("-o", "--output", required=True, help="where to write the selection")


def _device(name: str | None) -> str:
    """``--device``, checked: a device torch knows and, for CUDA, one that is available."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device should be a torch device such as cpu, cuda or cuda:1, but got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return name


def _check_select_args(args: argparse.Namespace) -> None:
    """Every ``select`` argument that can be checked without reading a file."""
    from useful_data._cluster import check_backend
    from useful_data.timm import _check_model_name

    _device(args.device)
    check_destination("--output", args.output)
    check_backend(args.backend)  # an unusable cuML fails here, not after the forward pass
    try:
        _check_model_name(args.model)
    except ValueError as err:
        raise ValueError(f"--model: {err}") from None
    if args.class_map and not os.path.isfile(args.class_map):
        raise FileNotFoundError(f"--class-map should be a file, but {args.class_map!r} is not one")
    _check_data_dir(args, remote=args.download and args.dataset.lower().startswith("torch/"))


def _input_channels(args: argparse.Namespace, run: dict[str, Any]) -> int:
    """The model's input channels (the training run's, else timm's default 3), with
    ``--input-size``, ``--mean`` and ``--std`` checked against them."""
    channels = int(run["input_size"][0]) if "input_size" in run else 3
    if args.input_size and args.input_size[0] != channels:
        raise ValueError(
            f"--input-size C H W should have C={channels}, the model's input channels (the "
            f"training run's, else timm's default 3), but got C={args.input_size[0]}"
        )
    for flag, values in (("--mean", args.mean), ("--std", args.std)):
        if values is not None and len(values) != channels:
            raise ValueError(
                f"{flag} should have one value per input channel ({channels}), but got "
                f"{len(values)}: {' '.join(map(str, values))}"
            )
    return channels


def _check_data_dir(args: argparse.Namespace, *, remote: bool = False) -> None:
    """``--data-dir`` is a folder (unless torchvision downloads it) and ``--split`` names a
    split of it (see `useful_data.timm._check_split`)."""
    from useful_data.timm import _check_split

    if not remote and not os.path.isdir(args.data_dir):
        raise FileNotFoundError(f"--data-dir should be a folder, but {args.data_dir!r} is not one")
    try:
        _check_split(args.dataset, args.data_dir, args.split)
    except ValueError as err:
        raise ValueError(f"--split: {err}") from None


def _select(args: argparse.Namespace) -> Selection:
    from useful_data.slow_learnable import find_slow_learnable
    from useful_data.timm import _checkpoint_data_config, _create_eval_dataset, _create_timm_model

    _check_select_args(args)  # before any work: loading, inference, k-means
    device = _device(args.device)
    run = _checkpoint_data_config(args.checkpoint)  # the run's arguments, not its weights
    channels = _input_channels(args, run)
    model = _create_timm_model(
        args.model,
        num_classes=args.num_classes,
        checkpoint=args.checkpoint,
        use_ema=args.use_ema,
        **({"in_chans": channels} if channels != 3 else {}),
    ).to(device)
    given = {
        "input_size": args.input_size or args.img_size,
        "crop_pct": args.crop_pct,
        "mean": args.mean,
        "std": args.std,
        "interpolation": args.interpolation,
    }
    from_run = {k: v for k, v in run.items() if not given[k]}
    if from_run:
        listed = ", ".join(f"{k}={v}" for k, v in from_run.items())
        print(f"eval data config from the checkpoint's training arguments: {listed}")
    dataset = _create_eval_dataset(
        args.dataset,
        args.data_dir,
        model=model,
        split=args.split,
        **{**given, **from_run},
        download=args.download,
        class_map=args.class_map,
    )
    targets = dataset_targets(dataset)
    if targets is not None and targets.size and int(targets.max()) >= args.num_classes:
        raise ValueError(
            f"the dataset has labels up to {int(targets.max())} but --num-classes is "
            f"{args.num_classes}; pass the class count the model was trained with"
        )
    return find_slow_learnable(
        model,
        dataset,
        targets=targets,
        seed=args.seed,
        backend=args.backend,
        upsample_factor=args.upsample_factor,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=device,
        channels_last=args.channels_last,
        progress=not args.no_progress,
    )


def _plot(args: argparse.Namespace, selection: Selection) -> None:
    from useful_data.plot import plot_selection

    dataset = None
    class_names = None
    if args.data_dir:
        from useful_data.timm import _import_timm

        _import_timm()
        from timm.data import create_dataset

        dataset = create_dataset(args.dataset, root=args.data_dir, split=args.split)
        reader = getattr(dataset, "reader", None)
        class_to_idx = getattr(reader, "class_to_idx", None) or getattr(
            dataset, "class_to_idx", None
        )
        if isinstance(class_to_idx, dict):
            names = {int(i): str(n) for n, i in class_to_idx.items()}
            class_names = [names.get(i, str(i)) for i in range(max(names) + 1)]
    plot_selection(
        selection,
        dataset,
        args.plot,
        num_per_class=args.num_per_class,
        max_classes=args.max_classes,
        class_names=class_names,
        seed=args.seed,
    )


def _one_line(command: str, err: BaseException) -> str:
    """An error as the one line ``useful-data COMMAND: error: ...`` (a `KeyError`'s message is
    its key's repr; other unexpected types are named)."""
    text = str(err) if not isinstance(err, KeyError) else f"no such key {err}"
    if not isinstance(err, OSError | ValueError | TypeError | ImportError):
        text = f"{type(err).__name__}: {text}"
    return f"useful-data {command}: error: {' '.join(text.split())}"


def _run(args: argparse.Namespace) -> int:
    if args.command == "select":
        selection = _select(args)
        path = selection.save(args.output)
        print(_format_summary(selection))
        print(f"\nwrote {path}")
        return 0
    selection = Selection.load(args.selection)
    if args.plot:
        check_destination("--plot", args.plot)
    if args.data_dir:
        _check_data_dir(args)
    cost = _format_cost(
        selection,
        separating_epoch=args.separating_epoch,
        total_epochs=args.epochs,
        epoch_size=args.epoch_size,
    )
    print(_format_summary(selection))
    print(cost)
    if args.plot:
        _plot(args, selection)
        print(f"\nwrote {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``useful-data`` console script; returns the exit code.

    Every error is one line on stderr, ``useful-data COMMAND: error: ...``, with exit code 1
    (2 for a malformed command line); every ``select`` flag is checked before the model or
    the data are loaded.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _run(args)
    except Exception as err:  # every failure is one line, never a traceback
        print(_one_line(args.command, err), file=sys.stderr)
        return 1


__getattr__ = moved_names(
    __name__,
    {
        "build_parser": "useful_data.cli:_build_parser",
        "format_summary": "useful_data.cli:_format_summary",
        "format_cost": "useful_data.cli:_format_cost",
    },
)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

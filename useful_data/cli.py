"""The ``useful-data`` command line.

``useful-data --version`` prints the version; ``useful-data inspect SELECTION`` prints a
per-class summary of a saved `Selection`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from useful_data._version import __version__
from useful_data.selection import WEAK_SEPARATION_AUC, Selection

__all__ = ["build_parser", "main"]


def _fmt_loss(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _fmt_separation(selection: Selection) -> str:
    sep = selection.separation
    if sep.num_classes_split == 0:
        return "separation: no class has examples on both sides (weak)"
    verdict = (
        f"weak (auc < {WEAK_SEPARATION_AUC}): close to random upsampling; "
        "try another separating epoch"
        if sep.weak
        else "ok"
    )
    return (
        f"separation: loss auc {sep.auc:.3f}   loss gap {sep.loss_gap:.4f}   "
        f"over {sep.num_classes_split} split classes   {verdict}"
    )


def format_summary(selection: Selection) -> str:
    """Render a selection's per-class summary as a plain-text table.

    ``auc`` is the ROC-AUC of the loss for membership in the slow-learnable cluster within a
    class (0.5: the split ignores the loss, like random upsampling; 1.0: perfectly separated)
    and ``gap`` the mean loss of the slow-learnable cluster minus the rest. The ``separation``
    line averages both over the split classes, weighted by class size, and says when the
    split is weak (see `useful_data.selection.WEAK_SEPARATION_AUC`).
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
        "",
    ]
    return "\n".join(head + lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``useful-data`` (its subcommands are added here)."""
    parser = argparse.ArgumentParser(
        prog="useful-data",
        description="USEFUL: upsample slow-learnable examples to reduce simplicity bias.",
    )
    parser.add_argument("--version", action="version", version=f"useful-data {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    inspect = sub.add_parser("inspect", help="print a per-class summary of a saved selection")
    inspect.add_argument(
        "selection", metavar="SELECTION_FILE", help="file written by Selection.save"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``useful-data`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "inspect":
        try:
            selection = Selection.load(args.selection)
        except (FileNotFoundError, ValueError) as err:
            print(f"useful-data inspect: error: {err}", file=sys.stderr)
            return 1
        print(format_summary(selection))
        return 0
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse guards
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

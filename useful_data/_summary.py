"""The short summary lines the integrations print after a selection (the full per-class table
is ``useful-data inspect``'s)."""

from __future__ import annotations

from useful_data.selection import Selection

__all__ = ["CLASSES_SHOWN", "selected_per_class"]

#: Classes named one by one in a summary; past them, only their number.
CLASSES_SHOWN = 10


def selected_per_class(selection: Selection, *, notes: bool = False) -> str:
    """``"label: selected/examples"`` for the first `CLASSES_SHOWN` classes, then how many
    there are; with ``notes``, why a class was left unsplit."""
    classes = selection.class_summary()
    shown = ", ".join(
        f"{c.label}: {c.num_slow_learnable}/{c.num_examples}"
        + (f" (not split: {c.note})" if notes and c.note else "")
        for c in classes[:CLASSES_SHOWN]
    )
    if len(classes) > CLASSES_SHOWN:
        shown += f", ... ({len(classes)} classes)"
    return shown

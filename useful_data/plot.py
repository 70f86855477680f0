"""Pictures of a selection: slow- vs fast-learnable examples per class, and per-class counts.

The image grid is the paper's Figure 1: for a few classes, random examples that USEFUL found
slow-learnable next to random examples of the fast-learnable rest. The bar chart shows, per
class, how many examples were selected. Needs matplotlib: ``pip install 'useful-data[plot]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from useful_data._checks import check_positive_int
from useful_data._deprecation import moved_names
from useful_data._targets import INPUT_KEYS
from useful_data.selection import Selection

__all__ = ["plot_selection"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'useful-data[plot]'") from err
    return plt


def _to_image_array(image: Any) -> np.ndarray:
    """Turn a PIL image, an ``(H, W[, C])`` array or a ``(C, H, W)`` tensor into ``(H, W, 3)``.

    Values end in ``[0, 1]``: integer images (PIL, uint8) are divided by 255, float images
    already in ``[0, 1]`` are kept (so a dark image stays dark), and others, e.g.
    normalised tensors, are rescaled min-max per image.

    Example:
        >>> import torch
        >>> _to_image_array(torch.zeros(3, 4, 5)).shape
        (4, 5, 3)
    """
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().float().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)
        elif array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[0] < array.shape[-1]:
            array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
        array = array / 255.0 if array.dtype.kind in "uib" else array.astype(np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"image should be 2-D or 3-D, but got shape {array.shape}")
    array = array[:, :, :3]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    low, high = float(array.min()), float(array.max())
    if 0.0 <= low and high <= 1.0:
        return array
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def _image_of(item: Any) -> Any:
    if isinstance(item, dict):
        key = next((k for k in INPUT_KEYS if k in item), None)
        if key is None:
            raise TypeError(f"dataset items are dicts without an image key of {INPUT_KEYS}")
        return item[key]
    return item[0] if isinstance(item, tuple | list) else item


def plot_selection(
    selection: Selection,
    dataset: Dataset[Any] | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    num_per_class: int = 4,
    classes: Sequence[int] | None = None,
    max_classes: int = 10,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> Any:
    """Draw the selection; with an image ``dataset``, the paper's Figure 1 grid too.

    Args:
        selection: The `Selection` to draw.
        dataset: The dataset it was computed on (same order), whose items are
            ``(image, label)``; images may be PIL images, arrays or tensors. ``None`` draws only
            the per-class bar chart.
        path: Save the figure here (PNG, PDF, ...); ``None`` only returns it.
        num_per_class: Examples drawn per class and group (slow / fast).
        classes: Labels to show in the grid; defaults to the first ``max_classes`` labels.
        max_classes: Cap on the classes in the grid when ``classes`` is ``None``.
        class_names: Names for the labels (index = label), for axis titles.
        seed: Seed of the random choice of examples.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ImportError: if matplotlib is not installed.
        TypeError: if ``selection`` is not a `Selection`.
        ValueError: if ``dataset`` is not the one the selection was computed on (its length,
            or its labels where it exposes them: see
            `Selection.check_fits`), or ``class_names`` has too few
            names.

    Example:
        >>> import numpy as np
        >>> sel = Selection(mask=np.array([True, False, False, True]), loss=np.ones(4),
        ...                 targets=np.array([0, 0, 1, 1]))
        >>> fig = plot_selection(sel)
        >>> len(fig.axes)
        1
    """
    num_per_class = check_positive_int("num_per_class", num_per_class)
    if not isinstance(selection, Selection):
        raise TypeError(
            f"selection should be a Selection (find_slow_learnable's result or "
            f"Selection.load(path)), but got {type(selection).__name__}"
        )
    plt = _pyplot()
    summary = selection.class_summary()
    labels = [c.label for c in summary]
    if class_names is not None and labels and len(class_names) <= max(labels):
        raise ValueError(
            f"class_names should name every label (index = label), but it has "
            f"{len(class_names)} names and the selection has labels up to {max(labels)}"
        )
    if dataset is not None:
        selection.check_fits(dataset)
    if dataset is None:
        grid_labels: list[int] = []
    elif classes is None:
        grid_labels = labels[: check_positive_int("max_classes", max_classes)]
    else:
        grid_labels = [int(c) for c in classes]

    def name(label: int) -> str:
        return class_names[label] if class_names is not None else str(label)

    rows = len(grid_labels)
    cols = 2 * num_per_class
    fig = plt.figure(figsize=(max(6.0, 0.9 * cols + 1.0), 1.0 * rows + 3.0), layout="constrained")
    if rows:
        grid_fig, bar_fig = fig.subfigures(2, 1, height_ratios=[rows, 2.5])
    else:
        grid_fig, bar_fig = None, fig

    ax = bar_fig.subplots()
    x = np.arange(len(summary))
    ax.bar(x, [c.num_examples - c.num_slow_learnable for c in summary], label="fast-learnable")
    ax.bar(
        x,
        [c.num_slow_learnable for c in summary],
        bottom=[c.num_examples - c.num_slow_learnable for c in summary],
        label="slow-learnable (upsampled)",
    )
    ax.set_xticks(x, [name(c) for c in labels], rotation=90 if len(labels) > 12 else 0)
    ax.set_ylabel("examples")
    ax.set_title(
        f"{selection.num_slow_learnable} of {selection.num_examples} examples slow-learnable"
    )
    ax.legend(loc="lower right", fontsize="small")

    if grid_fig is not None and dataset is not None:  # rows only exist with a dataset
        rng = np.random.default_rng(seed)
        groups = grid_fig.subfigures(1, 2, wspace=0.05)
        groups[0].suptitle("slow-learnable (upsampled)")
        groups[1].suptitle("fast-learnable")
        axes = [np.atleast_2d(g.subplots(rows, num_per_class, squeeze=False)) for g in groups]
        for r, label in enumerate(grid_labels):
            in_class = selection.targets == label
            for g, members in enumerate((selection.mask & in_class, ~selection.mask & in_class)):
                index = np.flatnonzero(members)
                picked = rng.choice(index, size=min(num_per_class, index.size), replace=False)
                for j in range(num_per_class):
                    axis = axes[g][r, j]
                    axis.set_xticks([])
                    axis.set_yticks([])
                    for spine in axis.spines.values():
                        spine.set_visible(False)
                    if j < picked.size:
                        axis.imshow(_to_image_array(_image_of(dataset[int(picked[j])])))
            axes[0][r, 0].set_ylabel(name(label), rotation=0, ha="right", va="center")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


__getattr__ = moved_names(__name__, {"to_image_array": "useful_data.plot:_to_image_array"})

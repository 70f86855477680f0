"""Generate the figure of the "How it works" page from the paper's synthetic data.

The figure has two panels, both computed here with `useful_data.synthetic`:

1. Feature alignment ``max_j <w_j, v>`` of the fast-learnable feature ``v_e`` (``G_e``) and of
   the slow-learnable feature ``v_d`` (``G_d``) over full-batch GD iterations, on the original
   data and after USEFUL (restarted from the same initial weights on the upsampled data).
2. The selection at the separating iteration:
   the model's margin ``y f(x)`` split by the planted truth (examples with and without the
   fast-learnable feature), and the examples USEFUL selected.

Run from the repository root::

    python docs/scripts/make_figures.py            # writes docs/assets/alignment.png
    python docs/scripts/make_figures.py --quick    # small and fast (used by the tests)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn import functional as F

from useful_data import USEFULDataset, find_slow_learnable
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "alignment.png"


def train_with_alignment(
    model: ToyCNN,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    v_e: torch.Tensor,
    v_d: torch.Tensor,
    steps: int,
    lr: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch GD on the logistic loss; returns ``G_e`` and ``G_d`` at every iteration."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g_e = np.empty(steps + 1)
    g_d = np.empty(steps + 1)
    g_e[0], g_d[0] = model.feature_alignment(v_e), model.feature_alignment(v_d)
    for t in range(1, steps + 1):
        loss = F.cross_entropy(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        g_e[t], g_d[t] = model.feature_alignment(v_e), model.feature_alignment(v_d)
    return g_e, g_d


def accuracy(model: ToyCNN, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of ``inputs`` the model classifies correctly."""
    with torch.no_grad():
        return float((model(inputs).argmax(1) == targets).float().mean())


def make_figure(
    out: Path, *, num_examples: int, separating_step: int, steps: int, seed: int
) -> dict[str, float]:
    """Train, select, retrain, and save the two-panel figure to ``out``; return the numbers."""
    data = make_simplicity_bias_data(num_examples, seed=seed)
    x, y = data.inputs, data.targets

    # Phase 1: GD on the original data; the early model at the separating step is kept.
    early = ToyCNN(seed=seed)
    train_with_alignment(early, x, y, data.v_e, data.v_d, separating_step)
    selection = find_slow_learnable(early, data, progress=False, backend="sklearn")
    truth = ~data.has_fast_feature.numpy()
    hits = int((selection.mask & truth).sum())
    precision = hits / max(selection.num_slow_learnable, 1)
    recall = hits / max(int(truth.sum()), 1)

    # Phase 2: the whole run, from the same initial weights, on the original and upsampled data.
    plain, useful = ToyCNN(seed=seed), ToyCNN(seed=seed)
    ge_gd, gd_gd = train_with_alignment(plain, x, y, data.v_e, data.v_d, steps)
    index = torch.tensor(USEFULDataset(data, selection).index_map)
    ge_us, gd_us = train_with_alignment(useful, x[index], y[index], data.v_e, data.v_d, steps)

    test = make_simplicity_bias_data(num_examples, seed=seed + 1000)
    acc_gd, acc_us = (accuracy(m, test.inputs, test.targets) for m in (plain, useful))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.0), dpi=110)
    it = np.arange(steps + 1)
    runs = (
        ("GD", "tab:blue", ge_gd, gd_gd, acc_gd),
        ("GD+USEFUL", "tab:green", ge_us, gd_us, acc_us),
    )
    for name, color, g_e, g_d, acc in runs:
        label_e = rf"{name}: $G_e$ (fast feature), test acc {acc:.3f}"
        ax1.plot(it, g_e, color=color, ls=":", lw=2, label=label_e)
        ax1.plot(it, g_d, color=color, ls="--", lw=2, label=rf"{name}: $G_d$ (slow feature)")
    ax1.axvline(separating_step, color="grey", lw=1)
    ax1.text(  # x in data units, y in axes units: halfway up, left of the line
        separating_step - 6,
        0.5,
        "separating\niteration",
        transform=ax1.get_xaxis_transform(),
        ha="right",
        va="center",
        fontsize=8,
        color="grey",
    )
    ax1.set_xlabel("GD iteration")
    ax1.set_ylabel(r"alignment $\max_j \langle w_j, v \rangle$ (log scale)")
    ax1.set_yscale("log")
    ax1.set_title("Feature learning on the synthetic data (Def. 3.1)")
    ax1.legend(fontsize=8, loc="upper left")

    with torch.no_grad():
        margin = (early.score(x) * (2 * y - 1)).numpy()  # y f(x): > 0 means correct
    bins = np.linspace(float(margin.min()), float(margin.max()), 50)
    ax2.hist(margin[~truth], bins=bins, color="tab:blue", alpha=0.6, label="has fast feature")
    ax2.hist(margin[truth], bins=bins, color="tab:orange", alpha=0.6, label="no fast feature")
    picked = margin[selection.mask]
    ax2.hist(picked, bins=bins, histtype="step", color="black", lw=1.5, label="selected by USEFUL")
    ax2.set_xlabel(f"margin $y f(x)$ at iteration {separating_step}")
    ax2.set_ylabel("examples")
    ax2.set_title(f"Selection: precision {precision:.2f}, recall {recall:.2f}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return {
        "precision": precision,
        "recall": recall,
        "selected": float(selection.num_slow_learnable),
        "test_acc_gd": acc_gd,
        "test_acc_useful": acc_us,
        "G_d_final_gd": float(gd_gd[-1]),
        "G_d_final_useful": float(gd_us[-1]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="small data and few steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to a busy CPU
    if args.quick:
        sizes = {"num_examples": 200, "separating_step": 20, "steps": 40}
    else:
        sizes = {"num_examples": 2000, "separating_step": 250, "steps": 600}
    numbers = make_figure(args.out, seed=args.seed, **sizes)
    summary = "  ".join(f"{k}={v:.3f}" for k, v in numbers.items())
    print(f"wrote {os.path.relpath(args.out)}  {summary}")  # no machine-specific path


if __name__ == "__main__":
    main()

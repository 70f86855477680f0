"""Selecting from training dynamics versus USEFUL's one-snapshot k-means, against planted truth.

Two measurements, on data where the slow-learnable examples are known:

1. **The paper's synthetic distribution** (Definition 3.1, its two-layer cubic CNN, full-batch
   GD as in Section 5.1). The truth is the examples without the fast feature. For a grid of
   separating points ``t``, the precision and recall of every selection against that truth:
   USEFUL's k-means on the outputs at ``t`` (the snapshot), and every strategy of
   `useful_data.experimental.select_from_dynamics` on the outputs recorded at every GD step up to
   ``t`` (the same information, plus its history). Mean over seeds.
2. **scikit-learn digits with a planted shortcut.** The 8x8 images are padded to 10x10; in a
   random 80 % of the training set (stratified), the top border pixel of column ``label`` is
   set to 3 (ink is in [0, 1]): a one-pixel shortcut, learned within the first epoch. The
   truth is the 20 % without it; the test set has no shortcut, so test accuracy is the
   accuracy on examples without the shortcut. A small CNN is trained with mini-batch SGD
   while `TrainingDynamics` records every batch (phase 1, once per seed); after ``t`` epochs,
   for a grid of ``t``, every strategy selects (precision / recall as above). At the
   ``t_accuracy`` points, training restarts from the same initialisation, on the same base
   data order, with the selection upsampled twice (`UpsampleSampler`), for k-means and for
   the chosen dynamics strategies, each against its random counterpart (its own per-class
   counts drawn at random), plus SGD (no upsampling) and the oracle (the truth upsampled).
   Paired differences over seeds.

Run: ``python benchmarks/bench_dynamics.py`` (about 4 CPU-minutes on one thread) or
``--quick`` (a smoke run of seconds; its numbers mean nothing). ``--sections synthetic`` or
``digits`` runs one part; ``--no-accuracy`` skips the retraining on digits.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from useful_data import UpsampleSampler, find_slow_learnable
from useful_data._baselines import select_random_like
from useful_data.experimental import TrainingDynamics, select_from_dynamics
from useful_data.experimental.dynamics import _STRATEGIES as DYNAMICS_STRATEGIES
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data

STRATEGIES = ("kmeans", *DYNAMICS_STRATEGIES)


def _kmeans(logits: torch.Tensor, targets: torch.Tensor, seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # weak split: measured, not warned
        sel = find_slow_learnable(logits=logits, targets=targets, backend="sklearn", seed=seed)
    return sel.mask


def _dynamics(dynamics: TrainingDynamics, strategy: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class with equal scores
        return select_from_dynamics(dynamics, strategy=strategy).mask  # type: ignore[arg-type]


def _precision_recall(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hit = int((mask & truth).sum())
    precision = hit / mask.sum() if mask.any() else float("nan")
    return precision, hit / max(int(truth.sum()), 1)


def _mean_std(values: list[float]) -> str:
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"


def _paired(values: list[float], base: list[float]) -> str:
    diff = np.asarray(values) - np.asarray(base)
    better, worse = int((diff > 0).sum()), int((diff < 0).sum())
    return f"{100 * diff.mean():+.2f} ± {100 * diff.std():.2f} ({better}/{worse})"


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


# --- 1. the paper's synthetic distribution -----------------------------------------------------
def bench_synthetic(cfg: dict, seeds: list[int]) -> None:
    """Precision / recall against the examples without the fast feature, per ``t``."""
    ts = cfg["t"]
    found = {(s, t): {"p": [], "r": [], "n": []} for s in STRATEGIES for t in ts}
    for seed in seeds:
        train = make_simplicity_bias_data(cfg["N"], beta_d=cfg["beta_d"], seed=seed)
        truth = ~train.has_fast_feature.numpy()
        model = ToyCNN(seed=seed)
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
        dynamics = TrainingDynamics(cfg["N"])
        everyone = torch.arange(cfg["N"])
        for step in range(max(ts) + 1):
            logits = model(train.inputs)  # the full-batch forward GD runs anyway
            dynamics.update(logits, train.targets, everyone)
            dynamics.end_epoch()  # one GD step is one "epoch" of the record
            if step in ts:  # the record holds the outputs at steps 0..t, the snapshot is step t
                masks = {"kmeans": _kmeans(logits.detach(), train.targets, seed)}
                masks.update({s: _dynamics(dynamics, s) for s in DYNAMICS_STRATEGIES})
                for strategy, mask in masks.items():
                    p, r = _precision_recall(mask, truth)
                    cell = found[strategy, step]
                    cell["p"].append(p)
                    cell["r"].append(r)
                    cell["n"].append(int(mask.sum()))
            if step == max(ts):
                break
            opt.zero_grad()
            F.cross_entropy(logits, train.targets).backward()
            opt.step()
    _selection_table(
        f"{cfg['title']}; precision / recall (selected) vs the examples without the fast "
        f"feature (10 % of N in expectation), mean over {len(seeds)} seeds",
        found,
        ts,
        STRATEGIES,
    )


# --- 2. digits with a planted shortcut ---------------------------------------------------------
def _planted_digits(seed: int, fraction: float, train_size: int, strength: float):
    """Digits padded to 10x10; the top-border pixel at column ``label`` set to ``strength``
    (ink is in [0, 1]) in ``fraction`` of the training set (stratified, seeded).
    Returns x, y, truth (no shortcut), x_test, y_test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = F.pad(torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0, (1, 1, 1, 1))
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = np.random.default_rng(0).permutation(len(y))  # one fixed split, as bench_accuracy
    test, train = perm[:600], perm[600 : 600 + train_size]
    x_train, y_train = x[train].clone(), y[train]
    rng = np.random.default_rng(seed)
    truth = np.ones(len(train), dtype=bool)
    for label in range(10):
        members = np.flatnonzero(y_train.numpy() == label)
        planted = rng.choice(members, round(fraction * len(members)), replace=False)
        truth[planted] = False
        x_train[planted, 0, 0, label] = strength  # the shortcut: one lit border pixel
    return x_train, y_train, truth, x[test], y[test]


def _digits_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # benchmark script, not library code: seeds nn's default init
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 25, 10),
    )  # fmt: skip


def _sgd(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=5e-4)


def _train_epoch(model, opt, x, y, mask, epoch, cfg, seed, dynamics=None) -> None:
    """One epoch of mini-batch SGD over `UpsampleSampler(mask)`, feeding ``dynamics``."""
    sampler = UpsampleSampler(mask, len(y), upsample_factor=2, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    for batch in torch.tensor(list(sampler)).split(cfg["batch_size"]):
        logits = model(x[batch])
        loss = F.cross_entropy(logits, y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dynamics is not None:  # the outputs of the training forward pass, no extra pass
            dynamics.update(logits, y[batch], batch)
    if dynamics is not None:
        dynamics.end_epoch()


def _selection_table(title: str, found: dict, ts: list[int], strategies: tuple[str, ...]) -> None:
    header = ["strategy", *[f"t={t}: P / R (selected)" for t in ts]]
    rows = []
    for strategy in strategies:
        cells = []
        for t in ts:
            cell = found[strategy, t]
            cells.append(
                f"{np.nanmean(cell['p']):.2f} / {np.nanmean(cell['r']):.2f} "
                f"({np.mean(cell['n']):.0f})"
            )
        rows.append([strategy, *cells])
    _table(title, header, rows)


def _select_all(snapshot, y, dynamics, seed) -> dict[str, np.ndarray]:
    masks = {"kmeans": _kmeans(snapshot, y, seed)}
    masks.update({s: _dynamics(dynamics, s) for s in DYNAMICS_STRATEGIES})
    return masks


def bench_digits(cfg: dict, seeds: list[int]) -> None:
    """Selection quality per ``t``, then test accuracy after upsampling, at ``t_accuracy``."""
    ts, t_acc = cfg["t"], cfg["t_accuracy"]
    found = {(s, t): {"p": [], "r": [], "n": []} for s in STRATEGIES for t in ts}
    methods = ["SGD", "oracle"]
    for t in t_acc:
        for base in ("kmeans", *cfg["strategies"]):
            methods += [f"{base}@{t}", f"random({base})@{t}"]
    acc: dict[str, list[float]] = {m: [] for m in methods}
    sel_p, sel_r, sel_n = ({m: [] for m in methods} for _ in range(3))
    early_acc = {t: [] for t in ts}
    for seed in seeds:
        x, y, truth, xt, yt = _planted_digits(
            seed, cfg["fraction"], cfg["train_size"], cfg["strength"]
        )
        none = np.zeros(len(y), dtype=bool)
        masks = {"SGD": none, "oracle": truth}
        # phase 1, once per seed: SGD on the original data, recording every batch; the
        # selections at each t read the snapshot after epoch t and the record of epochs < t
        dynamics = TrainingDynamics(len(y))
        model = _digits_cnn(seed)
        opt = _sgd(model, cfg)
        for epoch in range(max(ts)):
            _train_epoch(model, opt, x, y, none, epoch, cfg, seed, dynamics)
            if epoch + 1 not in ts:
                continue
            t = epoch + 1
            with torch.no_grad():
                snapshot = model(x)
                early_acc[t].append(float((model(xt).argmax(1) == yt).float().mean()))
            selected = _select_all(snapshot, y, dynamics, seed)
            for strategy, mask in selected.items():
                p, r = _precision_recall(mask, truth)
                found[strategy, t]["p"].append(p)
                found[strategy, t]["r"].append(r)
                found[strategy, t]["n"].append(int(mask.sum()))
            if t in t_acc:
                for base in ("kmeans", *cfg["strategies"]):
                    masks[f"{base}@{t}"] = selected[base]
                    masks[f"random({base})@{t}"] = select_random_like(
                        selected[base], y.numpy(), seed=seed
                    )
        # phase 2: every method restarts from the same initialisation and base data order
        for method in methods:
            mask = masks[method]
            if method != "SGD":
                p, r = _precision_recall(mask, truth)
                sel_p[method].append(p)
                sel_r[method].append(r)
                sel_n[method].append(int(mask.sum()))
            model = _digits_cnn(seed)
            opt = _sgd(model, cfg)
            for epoch in range(cfg["epochs"]):
                _train_epoch(model, opt, x, y, mask, epoch, cfg, seed)
            with torch.no_grad():
                acc[method].append(float((model(xt).argmax(1) == yt).float().mean()))
    setting = (
        f"a border pixel at {cfg['strength']} in {round(100 * cfg['fraction'])} % of "
        f"{cfg['train_size']} training images, none in the 600 test images; small CNN, SGD "
        f"momentum 0.9, lr {cfg['lr']}, batch {cfg['batch_size']}"
    )
    _selection_table(
        f"Digits with a planted shortcut ({setting}): precision / recall (selected) vs the "
        f"{round(100 * (1 - cfg['fraction']))} % without the shortcut, after t epochs; "
        f"mean over {len(seeds)} seeds",
        found,
        ts,
        STRATEGIES,
    )
    print(
        "\ntest accuracy of the phase-1 model after t epochs: "
        + ", ".join(f"t={t}: {np.mean(v):.3f}" for t, v in early_acc.items())
    )
    if not t_acc:
        return
    header = [
        "method", "test acc", "Δ vs SGD, points", "Δ vs kmeans (same t), points",
        "Δ vs its random, points", "precision", "recall", "selected",
    ]  # fmt: skip
    rows = []
    for method in methods:
        base, _, t = method.partition("@")
        twin, kmeans = f"random({base})@{t}", f"kmeans@{t}"
        rows.append(
            [
                method,
                _mean_std(acc[method]),
                "-" if method == "SGD" else _paired(acc[method], acc["SGD"]),
                _paired(acc[method], acc[kmeans]) if kmeans in acc and kmeans != method else "-",
                _paired(acc[method], acc[twin]) if twin in acc else "-",
                _mean_std(sel_p[method]) if sel_p[method] else "-",
                _mean_std(sel_r[method]) if sel_r[method] else "-",
                f"{np.mean(sel_n[method]):.0f}" if sel_n[method] else "-",
            ]
        )
    _table(
        f"Digits with a planted shortcut: test accuracy (the test set has no shortcut) after "
        f"{cfg['epochs']} epochs on the upsampled data, selection at t = "
        f"{' and '.join(map(str, t_acc))} (method@t); {len(seeds)} seeds",
        header,
        rows,
    )
    print(
        "\nΔ: paired difference in accuracy points, mean ± std over seeds (seeds better / "
        "worse). random(x): x's per-class counts drawn at random. oracle: the examples "
        "without the shortcut upsampled."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (seconds), no meaning")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per benchmark")
    parser.add_argument(
        "--sections", default="synthetic,digits", help="comma-separated: synthetic,digits"
    )
    parser.add_argument(
        "--no-accuracy", action="store_true", help="digits: selection quality only, no phase 2"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    quick = args.quick
    n_seeds = args.seeds or (2 if quick else 10)
    seeds = list(range(n_seeds))
    synthetic = [
        {
            "title": "Synthetic, beta_d=0.4, N=500, GD lr=1.0 (bench_accuracy's first setting)",
            "N": 500, "beta_d": 0.4, "lr": 1.0, "t": [10, 25, 50, 100, 200, 400],
        },
        {
            "title": "Synthetic, the paper's toy setting (beta_d=0.2, N=2000, GD lr=0.1)",
            "N": 2000, "beta_d": 0.2, "lr": 0.1, "t": [50, 100, 250, 400, 600],
        },
    ]  # fmt: skip
    digits = {
        "fraction": 0.8, "strength": 3.0, "train_size": 1197, "t": [1, 2, 3, 4, 6, 8, 16],
        "t_accuracy": [2, 6], "epochs": 10, "lr": 0.05, "batch_size": 64,
        "strategies": ["learned_epoch", "confidence"],
    }  # fmt: skip
    if quick:
        synthetic = [{**cfg, "N": 200, "t": [5, 10]} for cfg in synthetic]
        digits.update(train_size=200, epochs=2, t=[1, 2], t_accuracy=[2])
    sections = set(args.sections.split(","))
    start = time.perf_counter()
    print(f"# bench_dynamics ({'quick' if quick else 'full'}): seeds {seeds}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if "synthetic" in sections:
        for cfg in synthetic:
            bench_synthetic(cfg, seeds)
    if args.no_accuracy:
        digits["t_accuracy"] = []
    if "digits" in sections:
        bench_digits(digits, seeds)
    print(f"\nelapsed: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy benchmark: does upsampling the slow-learnable examples change what is learned?

Compares, over several seeds, on CPU-sized data that needs no download:

* the paper's synthetic distribution (Definition 3.1) with its two-layer cubic CNN, trained
  with full-batch GD as in Section 5.1, once at a setting where USEFUL changes what GD learns
  within the step budget and once at the paper's own toy setting (beta_d = 0.2);
* scikit-learn's 8x8 digits with a small CNN and mini-batch SGD (momentum 0.9), where the
  separating epoch is chosen by `SeparatingEpoch`;
* the synthetic distribution again with mini-batch SGD, for USEFUL at SGD's step count
  (``UpsampleSampler(..., epoch_size=N)``) against USEFUL's longer epochs, each with random
  upsampling of the same per-class counts (at the same length) as its control. Full-batch GD
  cannot tell the two apart: there an epoch is one step however long the upsampled set is.

Methods: SGD, SGD+USEFUL (k-means), SGD+random (k-means' per-class count, drawn at random),
SGD+misclassified (JTT-style), SAM, SAM+USEFUL; on digits also SGD+loss_quantile and
SGD+upweight (the loss doubled instead of upsampling, paper Table 5). On full-batch GD,
upweighting by 2 and upsampling by 2 are the same objective, so it is not run there.

Protocol, per seed: one dataset draw (synthetic) or one train/test split (digits, fixed), one
initialisation and, for mini-batch training, one base data order, shared by every method. A
method first trains from that initialisation to the separating point with its own base
optimizer (SGD or SAM), selects, then restarts from the *same* initialisation on the changed
distribution. Reported: test accuracy mean +- std over seeds; on the synthetic data also the
accuracy on the test examples that lack the fast-learnable feature (the slow-only subgroup, where
the effect should show), and the precision / recall of the selection against the planted
truth; the paired difference to the baseline (SGD, or SAM for SAM+USEFUL) as mean +- std over
seeds with the number of seeds where the method was better / worse.

SAM is implemented inline here (``_sam_step``: ``e = rho g / ||g||``, gradient at ``w + e``,
base step at ``w``), since the library's optimizer lives on another branch.

Run: ``python benchmarks/bench_accuracy.py`` (about 25 min on 2 shared CPU cores),
``--equal-length-only`` (the last comparison alone, a few minutes) or ``--quick`` (a smoke run
of a few seconds; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from useful_data import UpsampleSampler, find_slow_learnable
from useful_data.separating_epoch import SeparatingEpoch
from useful_data.strategies import loss_weights
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data

# (name, base optimizer, selection strategy or None, how the selection is used)
SYNTHETIC_METHODS = [
    ("SGD", "sgd", None, "upsample"),
    ("SGD+USEFUL", "sgd", "kmeans", "upsample"),
    ("SGD+random", "sgd", "random", "upsample"),
    ("SGD+misclassified", "sgd", "misclassified", "upsample"),
    ("SAM", "sam", None, "upsample"),
    ("SAM+USEFUL", "sam", "kmeans", "upsample"),
]
DIGITS_METHODS = [
    *SYNTHETIC_METHODS[:4],
    ("SGD+loss_quantile", "sgd", "loss_quantile", "upsample"),
    ("SGD+upweight", "sgd", "kmeans", "upweight"),
    *SYNTHETIC_METHODS[4:],
]


@dataclass
class Result:
    acc: list[float] = field(default_factory=list)
    acc_slow: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    auc: list[float] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    separating: list[int] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)  # compute relative to SGD (relative_cost)
    steps: list[int] = field(default_factory=list)  # optimizer steps of the final run


def _sam_step(
    params: list[nn.Parameter],
    closure: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    rho: float,
) -> None:
    """One SAM step: ascend to ``w + rho g / ||g||``, take the gradient there, step from ``w``."""
    optimizer.zero_grad()
    closure().backward()
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    with torch.no_grad():
        eps = [rho * p.grad / (norm + 1e-12) if p.grad is not None else None for p in params]
        for p, e in zip(params, eps, strict=True):
            if e is not None:
                p.add_(e)  # climb to the local maximum w + e(w)
    optimizer.zero_grad()
    closure().backward()
    with torch.no_grad():
        for p, e in zip(params, eps, strict=True):
            if e is not None:
                p.sub_(e)  # back to w, keep the gradient taken at w + e(w)
    optimizer.step()


def _select(logits: torch.Tensor, targets: torch.Tensor, strategy: str, seed: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # weak-split warning: reported instead
        return find_slow_learnable(
            logits=logits, targets=targets, strategy=strategy, backend="sklearn", seed=seed
        )


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def _paired(values: list[float], base: list[float]) -> str:
    diff = np.asarray(values) - np.asarray(base)
    better, worse = int((diff > 0).sum()), int((diff < 0).sum())
    return f"{diff.mean():+.4f} ± {diff.std():.4f} ({better}/{worse})"


def _print_table(title: str, results: dict[str, Result], with_truth: bool) -> None:
    print(f"\n### {title}\n")
    head = ["method", "test acc", "Δ acc (better/worse)"]
    if with_truth:
        head += ["slow-only acc", "Δ slow-only (better/worse)", "precision", "recall"]
    head += ["selected", "sel. loss AUC"]
    with_cost = any(r.cost for r in results.values())
    if with_cost:
        head += ["cost (x SGD)", "steps"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, r in results.items():
        base = results["SAM" if name.startswith("SAM") else "SGD"]
        is_base = name in ("SGD", "SAM")
        row = [name, _summary(r.acc), "-" if is_base else _paired(r.acc, base.acc)]
        if with_truth:
            row += [
                _summary(r.acc_slow),
                "-" if is_base else _paired(r.acc_slow, base.acc_slow),
                _summary(r.precision),
                _summary(r.recall),
            ]
        row += [
            f"{np.mean(r.selected):.1f}" if r.selected else "-",
            _summary(r.auc),
        ]
        if with_cost:
            row += [f"{np.mean(r.cost):.3f}", f"{np.mean(r.steps):.0f}"]
        print("| " + " | ".join(row) + " |")


# --- the paper's synthetic distribution ---------------------------------------------------------
def _train_toy(model, inputs, targets, weights, steps, lr, optimizer, rho):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    params = list(model.parameters())

    # Full batch: upsampling by k equals weighting the loss by k (same mean over the new set).
    def closure():
        loss = F.cross_entropy(model(inputs), targets, reduction="none")
        return (loss * weights).sum() / weights.sum()

    for _ in range(steps):
        if optimizer == "sam":
            _sam_step(params, closure, opt, rho)
        else:
            opt.zero_grad()
            closure().backward()
            opt.step()
    return model


def bench_synthetic(cfg: dict, seeds: list[int]) -> dict[str, Result]:
    results = {name: Result() for name, *_ in SYNTHETIC_METHODS}
    for seed in seeds:
        train = make_simplicity_bias_data(cfg["N"], beta_d=cfg["beta_d"], seed=seed)
        test = make_simplicity_bias_data(4000, beta_d=cfg["beta_d"], seed=10_000 + seed)
        truth = ~train.has_fast_feature.numpy()
        slow_test = ~test.has_fast_feature
        ones = torch.ones(cfg["N"])
        early: dict[str, torch.Tensor] = {}
        for name, optimizer, strategy, _ in SYNTHETIC_METHODS:
            r = results[name]
            weights = ones
            if strategy is not None:
                if optimizer not in early:  # train to the separating iteration t, once
                    model = _train_toy(
                        ToyCNN(seed=seed), train.inputs, train.targets, ones,
                        cfg["t"], cfg["lr"], optimizer, cfg["rho"],
                    )  # fmt: skip
                    with torch.no_grad():
                        early[optimizer] = model(train.inputs)
                sel = _select(early[optimizer], train.targets, strategy, seed)
                hit = int((sel.mask & truth).sum())
                r.precision.append(hit / max(sel.num_slow_learnable, 1))
                r.recall.append(hit / max(int(truth.sum()), 1))
                r.selected.append(sel.num_slow_learnable)
                r.auc.append(sel.separation.auc)
                weights = torch.from_numpy(loss_weights(sel))
            model = _train_toy(
                ToyCNN(seed=seed), train.inputs, train.targets, weights,
                cfg["steps"], cfg["lr"], optimizer, cfg["rho"],
            )  # fmt: skip
            with torch.no_grad():
                correct = model(test.inputs).argmax(1) == test.targets
            r.acc.append(float(correct.float().mean()))
            r.acc_slow.append(float(correct[slow_test].float().mean()))
    return results


# --- scikit-learn digits -----------------------------------------------------------------------
def _digits(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = np.random.default_rng(seed).permutation(len(y))
    test, train = perm[:600], perm[600:]
    return x[train], y[train], x[test], y[test]


def _digits_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # benchmark script, not library code: seeds nn's default init
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 10),
    )  # fmt: skip


def _train_digits(model, x, y, *, mask, weights, epochs, cfg, optimizer, seed, detector=None):
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=5e-4)
    params = list(model.parameters())
    sampler = UpsampleSampler(mask, len(y), upsample_factor=2, shuffle=True, seed=seed)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        wrong = 0
        model.train()
        for batch in order.split(cfg["batch_size"]):
            xb, yb, wb = x[batch], y[batch], weights[batch]

            def closure(xb=xb, yb=yb, wb=wb):
                return (F.cross_entropy(model(xb), yb, reduction="none") * wb).mean()

            if optimizer == "sam":
                _sam_step(params, closure, opt, cfg["rho"])
            else:
                opt.zero_grad()
                closure().backward()
                opt.step()
            with torch.no_grad():
                wrong += int((model(xb).argmax(1) != yb).sum())
        if detector is not None and detector.update(wrong / len(order)):
            break
    model.eval()
    return model


def bench_digits(cfg: dict, seeds: list[int]) -> dict[str, Result]:
    x, y, xt, yt = _digits()
    x, y = x[: cfg["train_size"]], y[: cfg["train_size"]]
    results = {name: Result() for name, *_ in DIGITS_METHODS}
    none = np.zeros(len(y), dtype=bool)
    ones = torch.ones(len(y))
    for seed in seeds:
        early: dict[str, tuple[torch.Tensor, int]] = {}
        for name, optimizer, strategy, use in DIGITS_METHODS:
            r = results[name]
            mask, weights = none, ones
            if strategy is not None:
                if optimizer not in early:
                    detector = SeparatingEpoch(
                        cfg["epochs"], max_fraction=0.3, min_epochs=min(3, cfg["epochs"])
                    )
                    model = _train_digits(
                        _digits_cnn(seed), x, y, mask=none, weights=ones, epochs=cfg["epochs"],
                        cfg=cfg, optimizer=optimizer, seed=seed, detector=detector,
                    )  # fmt: skip
                    with torch.no_grad():
                        early[optimizer] = (model(x), int(detector.epoch or cfg["epochs"]))
                logits, separating = early[optimizer]
                sel = _select(logits, y, strategy, seed)
                r.selected.append(sel.num_slow_learnable)
                r.auc.append(sel.separation.auc)
                r.separating.append(separating)
                if use == "upweight":
                    weights = torch.from_numpy(loss_weights(sel))
                else:
                    mask = sel.mask
            model = _train_digits(
                _digits_cnn(seed), x, y, mask=mask, weights=weights, epochs=cfg["epochs"],
                cfg=cfg, optimizer=optimizer, seed=seed,
            )  # fmt: skip
            with torch.no_grad():
                r.acc.append(float((model(xt).argmax(1) == yt).float().mean()))
    return results


# --- the synthetic distribution with mini-batch SGD: USEFUL at SGD's step count ----------------
EQUAL_LENGTH = "equal length"
MINIBATCH_METHODS = [  # (name, selection strategy or None, epochs of N items instead of longer)
    ("SGD", None, False),
    ("SGD+USEFUL", "kmeans", False),
    ("SGD+random", "random", False),
    (f"SGD+USEFUL, {EQUAL_LENGTH}", "kmeans", True),
    (f"SGD+random, {EQUAL_LENGTH}", "random", True),
]


def _train_toy_minibatch(data, mask, cfg, seed, *, epochs, epoch_size=None):
    """Plain SGD on shuffled mini-batches drawn by `UpsampleSampler`; returns (model, steps)."""
    model = ToyCNN(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    sampler = UpsampleSampler(mask, len(data), upsample_factor=2, seed=seed, epoch_size=epoch_size)
    steps = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in torch.tensor(list(sampler)).split(cfg["batch_size"]):
            loss = F.cross_entropy(model(data.inputs[batch]), data.targets[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    return model, steps


def bench_minibatch(cfg: dict, seeds: list[int]) -> dict[str, Result]:
    results = {name: Result() for name, *_ in MINIBATCH_METHODS}
    n, t, epochs = cfg["N"], cfg["t"], cfg["epochs"]
    for seed in seeds:
        shape = {"beta_d": cfg["beta_d"], "alpha": cfg["alpha"]}
        train = make_simplicity_bias_data(n, **shape, seed=seed)
        test = make_simplicity_bias_data(4000, **shape, seed=10_000 + seed)
        truth = ~train.has_fast_feature.numpy()
        slow_test = ~test.has_fast_feature
        none = np.zeros(n, dtype=bool)
        early, _ = _train_toy_minibatch(train, none, cfg, seed, epochs=t)  # to epoch t, once
        with torch.no_grad():
            logits = early(train.inputs)
        for name, strategy, equal_length in MINIBATCH_METHODS:
            r = results[name]
            mask, epoch_size, cost = none, None, 1.0
            if strategy is not None:
                sel = _select(logits, train.targets, strategy, seed)
                hit = int((sel.mask & truth).sum())
                r.precision.append(hit / max(sel.num_slow_learnable, 1))
                r.recall.append(hit / max(int(truth.sum()), 1))
                r.selected.append(sel.num_slow_learnable)
                r.auc.append(sel.separation.auc)
                mask, epoch_size = sel.mask, n if equal_length else None
                cost = sel.relative_cost(
                    separating_epoch=t, total_epochs=epochs, epoch_size=epoch_size
                )
            model, steps = _train_toy_minibatch(
                train, mask, cfg, seed, epochs=epochs, epoch_size=epoch_size
            )
            with torch.no_grad():
                correct = model(test.inputs).argmax(1) == test.targets
            r.acc.append(float(correct.float().mean()))
            r.acc_slow.append(float(correct[slow_test].float().mean()))
            r.cost.append(cost)
            r.steps.append(steps)
    return results


def _print_equal_length_summary(results: dict[str, Result]) -> None:
    """The paired comparisons the table's Δ columns (all against SGD) do not show."""
    useful, equal = results["SGD+USEFUL"], results[f"SGD+USEFUL, {EQUAL_LENGTH}"]
    control = results[f"SGD+random, {EQUAL_LENGTH}"]
    sgd = results["SGD"]
    print("\nslow-only accuracy, paired over seeds (mean ± std, seeds better/worse):")
    vs_control = _paired(equal.acc_slow, control.acc_slow)
    print(f"- USEFUL at equal length − random at equal length: {vs_control}")
    print(f"- USEFUL at equal length − USEFUL: {_paired(equal.acc_slow, useful.acc_slow)}")
    gain = np.mean(useful.acc_slow) - np.mean(sgd.acc_slow)
    kept = np.mean(equal.acc_slow) - np.mean(sgd.acc_slow)
    share = f"{kept / gain:.0%}" if abs(gain) > 1e-12 else "- (USEFUL has no gain here)"
    print(f"- share of USEFUL's mean gain over SGD kept at equal length: {share}")


def _bench_the_rest(synthetic: list, digits_cfg: dict, seeds: list[int]) -> None:
    for i, (title, cfg) in enumerate(synthetic):
        bench_seeds = seeds if i == 0 else seeds[:5]  # the paper's setting is 4x slower
        _print_table(f"{title}; {len(bench_seeds)} seeds", bench_synthetic(cfg, bench_seeds), True)
    digits_seeds = seeds[:5]
    results = bench_digits(digits_cfg, digits_seeds)
    _print_table(
        f"Digits (sklearn, {digits_cfg['train_size']} train / 600 test), small CNN, "
        f"SGD momentum 0.9, lr {digits_cfg['lr']}, batch {digits_cfg['batch_size']}, "
        f"{digits_cfg['epochs']} epochs, "
        f"separating epoch by SeparatingEpoch; {len(digits_seeds)} seeds",
        results,
        False,
    )
    sep = results["SGD+USEFUL"].separating
    print(f"\nseparating epoch chosen on digits (SGD runs): {sep}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (seconds), no meaning")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per benchmark")
    parser.add_argument(
        "--equal-length-only",
        action="store_true",
        help="run only the mini-batch comparison of equal-length epochs (a few minutes)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    quick = args.quick
    n_seeds = args.seeds or (2 if quick else 10)
    seeds = list(range(n_seeds))
    synthetic = [
        (
            "Synthetic, USEFUL changes what GD learns in budget (beta_d=0.4, N=500, lr=1.0, "
            "t=100, 1000 GD steps)",
            {"N": 500, "beta_d": 0.4, "lr": 1.0, "t": 100, "steps": 1000, "rho": 0.02},
        ),
        (
            "Synthetic, the paper's toy setting (beta_d=0.2, N=2000, lr=0.1, t=250, 600 GD steps)",
            {"N": 2000, "beta_d": 0.2, "lr": 0.1, "t": 250, "steps": 600, "rho": 0.02},
        ),
    ]
    digits_cfg = {"epochs": 15, "lr": 0.05, "batch_size": 64, "rho": 0.05, "train_size": 1197}
    sgd_cfg = {"N": 500, "lr": 1.0, "batch_size": 50, "t": 10}
    minibatch = [
        (
            "Synthetic, mini-batch SGD (beta_d=0.4, alpha=0.9: ~10 % without the fast feature, "
            "N=500, lr=1.0, batch 50, separating epoch 10 of 100)",
            {**sgd_cfg, "beta_d": 0.4, "alpha": 0.9, "epochs": 100},
        ),
        (
            "Synthetic, mini-batch SGD, ~30 % without the fast feature (beta_d=0.25, "
            "alpha=0.7, N=500, lr=1.0, batch 50, separating epoch 10 of 100)",
            {**sgd_cfg, "beta_d": 0.25, "alpha": 0.7, "epochs": 100},
        ),
        (
            "Synthetic, mini-batch SGD, 3x the budget (beta_d=0.4, alpha=0.9, N=500, lr=1.0, "
            "batch 50, separating epoch 10 of 300)",
            {**sgd_cfg, "beta_d": 0.4, "alpha": 0.9, "epochs": 300},
        ),
    ]
    if quick:
        synthetic = [(title, {**cfg, "N": 200, "t": 20, "steps": 40}) for title, cfg in synthetic]
        digits_cfg.update(epochs=3, train_size=300)
        minibatch = [
            (title, {**cfg, "N": 200, "t": 2, "epochs": 4}) for title, cfg in minibatch[:1]
        ]
    start = time.perf_counter()
    what = "equal-length comparison only" if args.equal_length_only else "all"
    print(f"# bench_accuracy ({'quick' if quick else 'full'}, {what}): seeds {seeds}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("# Δ: paired difference to SGD (SAM for SAM+USEFUL), mean ± std over seeds,")
    print("#    (seeds better / seeds worse). SAM: inline toy step, rho in the config.")
    if not args.equal_length_only:
        _bench_the_rest(synthetic, digits_cfg, seeds)
    print("# cost: Selection.relative_cost, t/T + (N + (k-1)|S|)/N, or t/T + M/N at equal length")
    for i, (title, cfg) in enumerate(minibatch):
        bench_seeds = seeds if i < 2 else seeds[:5]  # the longer budget is 3x slower
        results = bench_minibatch(cfg, bench_seeds)
        _print_table(f"{title}; {len(bench_seeds)} seeds", results, True)
        _print_equal_length_summary(results)
    print(f"\nelapsed: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

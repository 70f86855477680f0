"""Quickstart: USEFUL end to end on the paper's synthetic data, on a CPU, in about 20 s.

For every seed:

1. Train the paper's two-layer CNN with full-batch GD for a few early steps (the separating
   point), then find the slow-learnable examples with ``find_slow_learnable``.
2. Restart from the SAME initial weights three times and train for the same number of steps on
   (a) the original data (GD), (b) the data with as many RANDOM examples duplicated as USEFUL
   selects (a baseline of the same size), (c) ``USEFULDataset`` (GD + USEFUL).
3. Measure test accuracy, overall and on the test examples that lack the fast-learnable
   feature: those can only be classified through the slow-learnable feature.

The data (Definition 3.1) plants the truth: the slow-learnable examples are the ones without
the fast-learnable feature, so the script also reports how well the selection recovers them.
The slow feature is made stronger than in the paper (``beta_d=0.5`` instead of 0.2) so that it
can be learned within the step budget at all; at ``--beta-d 0.2`` neither GD nor GD + USEFUL
learns it in 1000 steps and the three rows come out equal.

Run: ``python examples/quickstart.py`` (``--plot quickstart.png`` needs matplotlib).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.nn import functional as F

from useful_data import USEFULDataset, find_slow_learnable
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data


def train(model: ToyCNN, inputs: torch.Tensor, targets: torch.Tensor, steps: int, lr: float):
    """Full-batch gradient descent with the logistic loss (the paper's toy setting)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def accuracy(model: ToyCNN, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((model(inputs).argmax(1) == targets).float().mean())


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    data = dict(beta_d=args.beta_d, alpha=args.alpha)
    train_set = make_simplicity_bias_data(args.num_examples, seed=seed, **data)
    test_set = make_simplicity_bias_data(args.num_test, seed=seed + 10_000, **data)
    no_fast = ~test_set.has_fast_feature  # classifiable only through the slow feature

    # 1. early training to the separating step, then the selection
    early = train(ToyCNN(seed=seed), train_set.inputs, train_set.targets, args.sep_step, args.lr)
    selection = find_slow_learnable(early, train_set, progress=False)
    truth = ~train_set.has_fast_feature.numpy()
    hits = int((selection.mask & truth).sum())

    # 2. three restarts from the same initial weights (ToyCNN(seed=seed))
    rng = np.random.default_rng(seed)
    random_extra = rng.choice(len(train_set), selection.num_slow_learnable, replace=False)
    index_maps = {
        "GD": np.arange(len(train_set)),
        "GD + random upsampling": np.concatenate([np.arange(len(train_set)), random_extra]),
        "GD + USEFUL": USEFULDataset(train_set, selection).index_map,
    }
    result = {
        "precision": hits / max(selection.num_slow_learnable, 1),
        "recall": hits / max(int(truth.sum()), 1),
        "selected": selection.num_slow_learnable,
        "selection": selection,
        "truth": truth,
    }
    for name, index_map in index_maps.items():
        index = torch.tensor(index_map)
        x, y = train_set.inputs[index], train_set.targets[index]
        model = train(ToyCNN(seed=seed), x, y, args.steps, args.lr)
        result[name] = (
            accuracy(model, test_set.inputs, test_set.targets),
            accuracy(model, test_set.inputs[no_fast], test_set.targets[no_fast]),
        )
    return result


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):6.2f} ± {100 * spread:4.2f}"


def plot(path: str, results: list[dict], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0]
    sel, truth = first["selection"], first["truth"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    bins = np.linspace(float(sel.loss.min()), float(sel.loss.max()), 40)  # early: all near log 2
    left.hist(sel.loss[~truth], bins=bins, alpha=0.6, label="has the fast feature")
    left.hist(sel.loss[truth], bins=bins, alpha=0.6, label="lacks it (planted slow-learnable)")
    threshold = float(sel.loss[sel.mask].min())
    left.axvline(threshold, color="k", ls="--", label="lowest loss among the selected")
    left.set(xlabel="loss at the separating step", ylabel="training examples", yscale="log")
    left.set_title(f"what USEFUL selected (seed 0): {sel.num_slow_learnable} examples")
    left.legend(fontsize="small")
    for column, label in ((0, "all test examples"), (1, "test examples without fast feature")):
        values = [[100 * r[m][column] for r in results] for m in methods]
        x = np.arange(len(methods)) + (0.2 if column else -0.2)
        right.bar(
            x,
            [np.mean(v) for v in values],
            0.4,
            yerr=[np.std(v) for v in values],
            label=label,
            capsize=3,
        )
    right.set_xticks(np.arange(len(methods)), methods)
    right.set(ylabel="test accuracy (%)", ylim=(40, 101))
    right.set_title(f"mean ± std over {len(results)} seeds")
    right.legend(fontsize="small", loc="lower right")
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=4000)
    parser.add_argument("--beta-d", type=float, default=0.5, help="slow feature strength")
    parser.add_argument("--alpha", type=float, default=0.9, help="share with the fast feature")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--sep-step", type=int, default=50, help="the separating step")
    parser.add_argument("--steps", type=int, default=1000, help="steps of every restart")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot", default="quickstart.png", help="'' to skip the picture")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    methods = ["GD", "GD + random upsampling", "GD + USEFUL"]
    results = []
    for seed in range(args.seeds):
        results.append(run_seed(args, seed))
        r = results[-1]
        print(
            f"seed {seed}: selected {r['selected']} of {args.num_examples} examples, "
            f"precision {r['precision']:.3f}, recall {r['recall']:.3f} vs the planted truth"
        )

    print(f"\ntest accuracy (%), mean ± std over {args.seeds} seeds, {args.steps} GD steps each")
    print(f"{'method':<24}  {'all test examples':>17}  {'without fast feature':>20}")
    for m in methods:
        overall = mean_std([r[m][0] for r in results])
        hard = mean_std([r[m][1] for r in results])
        print(f"{m:<24}  {overall:>17}  {hard:>20}")
    gain = [r["GD + USEFUL"][1] - r["GD"][1] for r in results]
    print(
        f"\nGD + USEFUL minus GD, on the examples without the fast feature: "
        f"{mean_std(gain).strip()} points ({sum(g > 0 for g in gain)} of {len(gain)} seeds better)"
    )
    if args.plot:
        try:
            plot(args.plot, results, methods)
            print(f"wrote {args.plot}")
        except ImportError:
            print("matplotlib is not installed: no picture (pip install 'useful-data[plot]')")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

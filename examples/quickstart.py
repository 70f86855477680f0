"""Quickstart: USEFUL end to end on the paper's synthetic data, on a CPU, in seconds.

1. Train the two-layer CNN of the paper for a few early GD steps (the separating point).
2. Find the slow-learnable examples with ``find_slow_learnable``.
3. Restart from the same initial weights on ``USEFULDataset`` (slow-learnable examples twice).

The synthetic data (Definition 3.1) plants the truth: the slow-learnable examples are the ones
without the fast-learnable feature, so the script can say how well the selection recovers them.

Run: ``python examples/quickstart.py``
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from useful_data import USEFULDataset, find_slow_learnable
from useful_data.synthetic import ToyCNN, make_simplicity_bias_data


def train(model: ToyCNN, inputs: torch.Tensor, targets: torch.Tensor, steps: int) -> ToyCNN:
    """Full-batch gradient descent with the logistic loss (the paper's toy setting)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def accuracy(model: ToyCNN, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(inputs).argmax(1) == targets).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=4000)
    parser.add_argument("--separating-step", type=int, default=250)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train_set = make_simplicity_bias_data(args.num_examples, seed=args.seed)
    test_set = make_simplicity_bias_data(args.num_examples, seed=args.seed + 1000)

    # 1-2. early training, then the selection step
    early = train(ToyCNN(seed=args.seed), train_set.inputs, train_set.targets, args.separating_step)
    selection = find_slow_learnable(early, train_set, progress=False)
    truth = ~train_set.has_fast_feature.numpy()
    hits = int((selection.mask & truth).sum())
    print(f"selected {selection.num_slow_learnable} of {selection.num_examples} examples")
    print(
        f"precision {hits / max(selection.num_slow_learnable, 1):.3f}  "
        f"recall {hits / max(int(truth.sum()), 1):.3f}  (vs. the planted truth)"
    )

    # 3. restart from the same initial weights on the upsampled data
    upsampled = USEFULDataset(train_set, selection)
    index = torch.tensor(upsampled.index_map)
    x_up = train_set.inputs[index]
    y_up = train_set.targets[index]
    plain = train(ToyCNN(seed=args.seed), train_set.inputs, train_set.targets, args.steps)
    useful = train(ToyCNN(seed=args.seed), x_up, y_up, args.steps)
    print(
        f"test accuracy  GD: {accuracy(plain, test_set.inputs, test_set.targets):.4f}  "
        f"GD+USEFUL: {accuracy(useful, test_set.inputs, test_set.targets):.4f}"
    )


if __name__ == "__main__":
    main()

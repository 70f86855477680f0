"""The paper's toy study (Section 5.1): simplicity bias of GD vs SAM, and what USEFUL changes.

Data: Definition 3.1 (d=50, P=3, beta_e=1, alpha=0.9, noise 0.125, shuffled patches). Model:
the two-layer cubic CNN of Eq. (1) with J=40 filters, full-batch GD with lr 0.1, SAM with the
same base GD and rho=0.02, 600 iterations (the paper's settings).

The script prints

* the feature alignment ``max_j <w_j, v>`` of the fast-learnable (``v_e``) and slow-learnable
  (``v_d``) features during training, for GD and SAM (the paper's Figure 3);
* the precision / recall of USEFUL's selection at the separating step against the planted
  truth (the examples without the fast-learnable feature);
* the test accuracy of GD, SAM, GD + USEFUL and SAM + USEFUL (each restarts from the same
  initial weights; "+ USEFUL" trains on the data with the selected examples twice).

SAM comes from ``useful_data.SAM`` (``--methods gd,gd+useful`` runs without it).
Run: ``python examples/toy_simplicity_bias.py`` (``--beta-d 0.2`` for the paper's harder case).
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from useful_data import USEFULDataset, find_slow_learnable
from useful_data.synthetic import SimplicityBiasData, ToyCNN, make_simplicity_bias_data

METHODS = ("gd", "sam", "gd+useful", "sam+useful")


def make_optimizer(params, method: str, lr: float, rho: float) -> torch.optim.Optimizer:
    if method.startswith("sam"):
        from useful_data import SAM  # the SAM optimizer of useful-data (davda54/sam's shape)

        return SAM(params, torch.optim.SGD, rho=rho, lr=lr)
    return torch.optim.SGD(params, lr=lr)


def train(
    data: SimplicityBiasData,
    index: torch.Tensor,
    method: str,
    args: argparse.Namespace,
    steps: int,
    curve: list | None = None,
) -> ToyCNN:
    """Full-batch GD or SAM on ``data[index]`` from the fixed initial weights."""
    model = ToyCNN(seed=args.seed)
    x, y = data.inputs[index], data.targets[index]
    opt = make_optimizer(model.parameters(), method, args.lr, args.rho)

    sam = method.startswith("sam")
    for step in range(steps + 1):
        if curve is not None and step % args.log_every == 0:
            curve.append(
                (step, model.feature_alignment(data.v_e), model.feature_alignment(data.v_d))
            )
        if step == steps:
            break
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if sam:
            opt.first_step(zero_grad=True)  # climb to w + e(w), e(w) = rho g / ||g||
            F.cross_entropy(model(x), y).backward()  # the gradient there ...
            opt.second_step()  # ... applied by plain GD at w
        else:
            opt.step()
    return model


@torch.no_grad()
def accuracy(model: ToyCNN, data: SimplicityBiasData) -> float:
    return float((model(data.inputs).argmax(1) == data.targets).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-examples", type=int, default=10_000, help="train and test size")
    parser.add_argument("--beta-d", type=float, default=0.4, help="paper: 0.2 and 0.4")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--rho", type=float, default=0.02, help="SAM radius")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--sep-step", type=int, default=250, help="the separating step")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {METHODS}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")

    train_set = make_simplicity_bias_data(args.num_examples, beta_d=args.beta_d, seed=args.seed)
    test_set = make_simplicity_bias_data(args.num_examples, beta_d=args.beta_d, seed=args.seed + 1)
    everything = torch.arange(len(train_set))
    truth = ~train_set.has_fast_feature.numpy()
    print(f"{int(truth.sum())} of {len(truth)} training examples lack the fast feature")

    # 1. Figure 3: feature alignment during plain GD / SAM training
    curves, accuracies = {}, {}
    for base in ("gd", "sam"):
        if base in methods:
            curves[base] = []
            model = train(train_set, everything, base, args, args.steps, curves[base])
            accuracies[base] = accuracy(model, test_set)
    print("\nfeature alignment max_j <w_j, v> (Figure 3)")
    print("  step  " + "  ".join(f"{b.upper()} v_e  {b.upper()} v_d" for b in curves))
    for rows in zip(*curves.values(), strict=True):
        cells = "  ".join(f"{e:>6.3f}  {d:>6.3f}" for _, e, d in rows)
        print(f"{rows[0][0]:>6}  {cells}")

    # 2. USEFUL: the same optimizer to the separating step, select, restart on upsampled data
    print(f"\nselection at step {args.sep_step} vs the planted truth")
    for base in ("gd", "sam"):
        if f"{base}+useful" not in methods:
            continue
        early = train(train_set, everything, base, args, args.sep_step)
        selection = find_slow_learnable(early, train_set, progress=False)
        hits = int((selection.mask & truth).sum())
        print(
            f"  {base.upper():<4} selected {selection.num_slow_learnable:>5}  "
            f"precision {hits / max(selection.num_slow_learnable, 1):.3f}  "
            f"recall {hits / max(int(truth.sum()), 1):.3f}"
        )
        index = torch.tensor(USEFULDataset(train_set, selection).index_map)
        accuracies[f"{base}+useful"] = accuracy(
            train(train_set, index, base, args, args.steps), test_set
        )

    print(f"\ntest accuracy after {args.steps} steps (beta_d={args.beta_d}, seed {args.seed})")
    for method in METHODS:
        if method in accuracies:
            print(f"  {method.upper():<11} {100 * accuracies[method]:6.2f}%")


if __name__ == "__main__":
    main()

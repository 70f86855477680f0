"""The paper's CIFAR recipe with timm models: SGD / SAM, with or without USEFUL.

Recipe (Section 5 and Appendix C of the paper): SGD with momentum 0.9, weight decay 5e-4,
batch 128, lr 0.1 decayed x0.1 at 50% and 75% of 200 epochs, SAM with rho 0.1, random crop and
flip (plus TrivialAugment with ``--trivial-augment``). With USEFUL (``--method sgd+useful`` or
``sam+useful``):

1. phase 1: train from the initial weights to the separating epoch (``--separating-epoch``;
   read it off the per-epoch train error of a plain run: the epoch where it stops dropping
   fast, about 5-10% of the schedule; the paper uses 8 for CIFAR-10 with ResNet18; or
   ``--separating-epoch auto`` to let ``SeparatingEpoch`` decide from that curve),
2. select the slow-learnable examples on the training set seen with eval transforms,
3. phase 2: restart from the SAME initial weights on ``USEFULDataset`` for the full schedule;
   with ``--equal-length``, on the original dataset through
   ``UpsampleSampler(..., epoch_size=N)`` instead, so every epoch keeps SGD's length and step
   count (the paper's recipe is the default, longer epochs). The cost relative to SGD is
   printed after the selection.

``--model`` takes any timm name; ResNets get a CIFAR stem (3x3 conv, stride 1, no max-pool);
``preact_resnet18`` is the paper's PreAct-ResNet18 (timm's ``resnetv2_18`` with a CIFAR stem).
SAM methods need ``useful_data.SAM``. ``--bf16`` trains, tests and selects under
``torch.autocast(bfloat16)``, ``--channels-last`` keeps the model and its 4-D inputs in
``torch.channels_last`` (the usual GPU settings, as timm's ``train.py --amp-dtype bfloat16
--channels-last``). Every epoch writes ``OUT/last.pt``; ``--resume`` goes on from it.

Run: ``python examples/train_cifar.py --data-dir data --download --method sgd+useful
--separating-epoch 8 --out runs/sgd_useful``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from useful_data import Selection, UpsampleSampler, USEFULDataset, find_slow_learnable
from useful_data.separating_epoch import SeparatingEpoch

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
METHODS = ("sgd", "sam", "sgd+useful", "sam+useful")


def build_model(name: str, num_classes: int) -> nn.Module:
    """A timm model; ResNets get the usual CIFAR stem for 32x32 inputs."""
    timm_name = "resnetv2_18" if name == "preact_resnet18" else name
    model = timm.create_model(timm_name, num_classes=num_classes, pretrained=False)
    if timm_name.startswith("resnetv2"):  # pre-activation: the stem is a bare conv
        out = model.stem.conv.out_channels
        model.stem = nn.Sequential(nn.Conv2d(3, out, 3, stride=1, padding=1, bias=False))
    elif timm_name.startswith("resnet") or timm_name == "test_resnet":
        model.conv1 = nn.Conv2d(3, model.bn1.num_features, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def build_data(args: argparse.Namespace):
    """(train set with augmentation, the same train set with eval transforms, test set)."""
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    if args.trivial_augment:
        augment.append(transforms.TrivialAugmentWide())
    to_tensor = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    train_tf, eval_tf = transforms.Compose(augment + to_tensor), transforms.Compose(to_tensor)
    if args.fake_data:  # CIFAR-shaped random images for smoke tests
        num_classes = 10

        def fake(size, tf, offset):
            return datasets.FakeData(size, (3, 32, 32), num_classes, tf, random_offset=offset)

        sets = fake(args.fake_data, train_tf, 0), fake(args.fake_data, eval_tf, 0)
        # FakeData exposes no .targets (CIFAR10 does): set them, so that find_slow_learnable
        # can check that the eval view holds the training set's examples in the same order
        labels = [int(label) for _, label in fake(args.fake_data, None, 0)]
        for fake_set in sets:
            fake_set.targets = labels
        return (*sets, fake(max(args.fake_data // 4, 1), eval_tf, 10**6), num_classes)
    cls = datasets.CIFAR10 if args.dataset == "cifar10" else datasets.CIFAR100

    def cifar(train, tf):
        return cls(args.data_dir, train=train, transform=tf, download=args.download)

    train = cifar(True, train_tf)
    return train, cifar(True, eval_tf), cifar(False, eval_tf), len(train.classes)


def make_optimizer(model: nn.Module, args: argparse.Namespace):
    kwargs = dict(lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    if args.method.startswith("sam"):
        from useful_data import SAM  # needs the SAM optimizer of useful-data

        opt = SAM(model.parameters(), torch.optim.SGD, rho=args.rho, **kwargs)
    else:
        opt = torch.optim.SGD(model.parameters(), **kwargs)
    milestones = [args.epochs // 2, args.epochs * 3 // 4]
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)


def precision(device: torch.device, bf16: bool):
    """The autocast context of every forward pass: bfloat16 with ``--bf16``, else none."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def train_epoch(
    model, loader, opt, sam: bool, device, bf16: bool = False, channels_last: bool = False
) -> float:
    """One epoch; returns the train error (%) of the predictions made while training."""
    model.train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    wrong = seen = 0
    for x, y in loader:
        x, y = x.to(device, memory_format=layout), y.to(device)
        with precision(device, bf16):
            out = model(x)
            loss = F.cross_entropy(out, y)
        loss.backward()
        if sam:
            opt.first_step(zero_grad=True)  # climb to w + e(w)
            with precision(device, bf16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.second_step(zero_grad=True)  # SGD step at w with the gradient from w + e(w)
        else:
            opt.step()
            opt.zero_grad()
        wrong += int((out.argmax(1) != y).sum())
        seen += len(y)
    return 100.0 * wrong / seen


@torch.no_grad()
def test_error(model, loader, device, bf16: bool = False, channels_last: bool = False) -> float:
    model.eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    wrong = seen = 0
    for x, y in loader:
        with precision(device, bf16):
            out = model(x.to(device, memory_format=layout))
        wrong += int((out.argmax(1) != y.to(device)).sum())
        seen += len(y)
    return 100.0 * wrong / seen


def run_phase(
    phase, model, train_set, test_set, epochs, args, state, device, stop=None, sampler=None
) -> None:
    """Train ``epochs`` epochs of the full schedule, resuming from ``state`` if it is there.

    ``stop(train_error) -> bool`` (e.g. ``SeparatingEpoch.update``) may end the phase early;
    ``sampler`` (an `UpsampleSampler`) replaces the plain shuffle.
    """
    opt, sched = make_optimizer(model, args)
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        train_set,
        args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=args.workers,
        generator=g,
    )
    test_loader = DataLoader(test_set, 256, num_workers=args.workers)
    start = 0
    if state.get("phase") == phase and "model" in state:  # resume inside this phase
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        g.set_state(state["generator"])
        start = state["epoch"]
        if stop is not None and any([stop(e) for e in state["train_errors"]]):
            return  # resumed right after the separating epoch
    else:
        state["train_errors"] = []
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        lr = sched.get_last_lr()[0]
        if sampler is not None:
            sampler.set_epoch(epoch)  # a function of (seed, epoch): resumes exactly
        sam = args.method.startswith("sam")
        train_err = train_epoch(model, loader, opt, sam, device, args.bf16, args.channels_last)
        sched.step()
        test_err = test_error(model, test_loader, device, args.bf16, args.channels_last)
        log = dict(phase=phase, epoch=epoch + 1, train_error=round(train_err, 2),
                   test_error=round(test_err, 2), lr=lr,
                   seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
        print(json.dumps(log), flush=True)
        with open(args.out / "log.jsonl", "a") as f:
            f.write(json.dumps(log) + "\n")
        state.update(phase=phase, epoch=epoch + 1, model=model.state_dict(),
                     optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                     generator=g.get_state())  # fmt: skip
        state["train_errors"].append(train_err)
        torch.save(state, args.out / "last.pt")
        if stop is not None and stop(train_err):
            print(json.dumps({"phase": phase, "separating_epoch": epoch + 1}), flush=True)
            return


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS, default="sgd")
    p.add_argument("--model", default="resnet18", help="timm name, or preact_resnet18")
    p.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--download", action="store_true")
    p.add_argument("--fake-data", type=int, default=0, help="N CIFAR-shaped fake images")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument(
        "--separating-epoch",
        default="8",
        help="end of phase 1: an epoch, or 'auto' (SeparatingEpoch rule on the train error)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--rho", type=float, default=0.1, help="SAM radius")
    p.add_argument("--trivial-augment", action="store_true")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (train, test, select)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/cifar"))
    p.add_argument("--resume", action="store_true", help="go on from OUT/last.pt")
    p.add_argument(
        "--equal-length",
        action="store_true",
        help="phase 2 at SGD's epoch length: UpsampleSampler(epoch_size=N), not USEFULDataset",
    )
    args = p.parse_args(argv)
    stop = None
    if args.separating_epoch == "auto":
        detector = SeparatingEpoch(total_epochs=args.epochs)
        phase1_epochs, stop = detector.max_epoch, detector.update
    elif args.separating_epoch.isdigit() and 0 < int(args.separating_epoch) < args.epochs:
        phase1_epochs = int(args.separating_epoch)
    else:
        p.error(f"--separating-epoch should be 'auto' or in [1, {args.epochs}), "
                f"got {args.separating_epoch}")  # fmt: skip
    if args.equal_length and not args.method.endswith("+useful"):
        p.error(f"--equal-length changes USEFUL's phase 2; --method {args.method} has none")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    train_set, train_eval_view, test_set, num_classes = build_data(args)
    resume = args.out / "last.pt"
    state = torch.load(resume, weights_only=False) if args.resume and resume.exists() else {}
    if "init" not in state:  # the initial weights both phases start from
        torch.manual_seed(args.seed)
        state["init"] = build_model(args.model, num_classes).state_dict()
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(args.model, num_classes).to(device, memory_format=layout)

    selection_path = args.out / "selection.npz"
    sampler = None
    if args.method.endswith("+useful"):
        if not selection_path.exists():
            model.load_state_dict(state["init"])
            run_phase("early", model, train_set, test_set, phase1_epochs, args, state,
                      device, stop)  # fmt: skip
            selection = find_slow_learnable(
                model,
                train_set,
                eval_dataset=train_eval_view,
                num_workers=args.workers,
                autocast_dtype=torch.bfloat16 if args.bf16 else None,
                channels_last=True if args.channels_last else None,
            )
            selection.save(selection_path)
            print(f"selected {selection.num_slow_learnable} of {selection.num_examples} examples")
            n = selection.num_examples if args.equal_length else None
            cost = selection.relative_cost(
                separating_epoch=state["epoch"], total_epochs=args.epochs, epoch_size=n
            )
            print(f"cost: {cost:.2f}x SGD")
            state.pop("model", None)
        selection = Selection.load(selection_path)
        if args.equal_length:
            n = len(train_set)
            sampler = UpsampleSampler(selection, n, seed=args.seed, epoch_size=n)
        else:
            train_set = USEFULDataset(train_set, selection)
    if state.get("phase") != "train":
        model.load_state_dict(state["init"])  # phase 2 starts from the SAME initial weights
    run_phase("train", model, train_set, test_set, args.epochs, args, state, device,
              sampler=sampler)  # fmt: skip
    final = test_error(model, DataLoader(test_set, 256), device, args.bf16, args.channels_last)
    print(f"final test error: {final:.2f}%")
    return final


if __name__ == "__main__":
    main()

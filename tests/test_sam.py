"""SAM against its formula computed by hand, and in the loops people run it in."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from useful_data.sam import SAM, ddp_no_sync, frozen_bn_stats, grads_are_finite

ROOT = Path(__file__).resolve().parents[1]


def _mlp(depth: int = 2, width: int = 5, seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    """Tanh MLP 3 -> width -> ... -> 2 with weights drawn from a local generator."""
    sizes = [3] + [width] * (depth - 1) + [2]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(sizes[i], sizes[i + 1], dtype=dtype), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    _fill_(model, seed)
    return model


def _fill_(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.7)


def _batch(seed: int = 1, n: int = 8, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=dtype)
    y = torch.randint(0, 2, (n,), generator=generator)
    return x, y


def _closure(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, zero: bool = True
):
    def closure() -> Tensor:
        if zero:  # Lightning's closures clear the gradients; plain ones may not
            optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _manual_step(model: nn.Module, optimizer: SAM, x: Tensor, y: Tensor) -> Tensor:
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.second_step(zero_grad=True)
    return loss


def _params(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_equal(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v), (u - v).abs().max()


# --- the update, against the formula written out per tensor --------------------------------


def _grad_at(model: nn.Module, weights: list[Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
    """∇L at ``weights`` (one tensor per parameter of ``model``, in order), without touching it."""
    names = [name for name, _ in model.named_parameters()]
    leaves = [t.clone().requires_grad_() for t in weights]
    loss = F.cross_entropy(functional_call(model, dict(zip(names, leaves, strict=True)), (x,)), y)
    return torch.autograd.grad(loss, leaves)


def _hand_sam_update(
    model: nn.Module, x: Tensor, y: Tensor, lr: float, rho: list[float], adaptive: list[bool]
) -> list[Tensor]:
    """w - lr * ∇L(w + e(w)), e = ρ T² g / ‖T g‖ with T = |w| (ASAM) or 1 (SAM), per tensor."""
    w = _params(model)
    g = _grad_at(model, w, x, y)
    t = [wi.abs() if a else torch.ones_like(wi) for wi, a in zip(w, adaptive, strict=True)]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g, strict=True)))
    e = [r * ti**2 * gi / (norm + 1e-12) for r, ti, gi in zip(rho, t, g, strict=True)]
    g2 = _grad_at(model, [wi + ei for wi, ei in zip(w, e, strict=True)], x, y)
    return [wi - lr * gi for wi, gi in zip(w, g2, strict=True)]


@pytest.mark.parametrize("adaptive", [False, True], ids=["SAM", "ASAM"])
def test_one_step_equals_hand_computed_update(adaptive):
    model, (x, y) = _mlp(), _batch()
    rho = 1.0 if adaptive else 0.1
    expected = _hand_sam_update(model, x, y, 0.3, [rho] * 4, [adaptive] * 4)
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=0.3)
    _manual_step(model, optimizer, x, y)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(model[0].weight, _mlp()[0].weight)  # it did move


def test_per_group_rho_and_adaptive_share_one_global_norm():
    model, (x, y) = _mlp(), _batch()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    expected = _hand_sam_update(model, x, y, 0.3, [1.0, 1.0, 0.1, 0.1], [True, True, False, False])
    groups = [{"params": first, "rho": 1.0, "adaptive": True}, {"params": second}]
    optimizer = SAM(groups, torch.optim.SGD, rho=0.1, lr=0.3)
    _manual_step(model, optimizer, x, y)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)


def test_perturbation_is_stored_and_the_restore_is_bit_exact():
    model, (x, y) = _mlp(dtype=torch.float32), _batch(dtype=torch.float32)
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    w = _params(model)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.first_step()
    assert optimizer.perturbed
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    for p, wi, gi in zip(model.parameters(), w, grads, strict=True):
        e_w = optimizer.state[p]["e_w"]
        torch.testing.assert_close(e_w, 0.5 * gi / norm)
        assert torch.equal(p.detach(), wi + e_w)
    # (w + e) - e is not w in floating point for some element: a subtraction would drift.
    drift = any(
        not torch.equal(wi + optimizer.state[p]["e_w"] - optimizer.state[p]["e_w"], wi)
        for p, wi in zip(model.parameters(), w, strict=True)
    )
    assert drift
    optimizer.unperturb()
    assert not optimizer.perturbed
    _assert_equal(_params(model), w)


def test_a_parameter_without_gradient_in_the_second_pass_is_still_restored():
    model, (x, y) = _mlp(), _batch()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    w = _params(model)
    F.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    model[2].bias.grad = None  # e.g. a branch the second pass did not take
    optimizer.second_step()
    assert torch.equal(model[2].bias.detach(), w[3])  # back at w, and not stepped
    assert not torch.equal(model[0].weight.detach(), w[0])


@pytest.mark.parametrize("closure_zeroes_grads", [True, False])
def test_step_closure_equals_first_and_second_step_by_hand(closure_zeroes_grads):
    x, y = _batch()
    model_a, model_b = _mlp(), _mlp()
    kwargs = dict(rho=0.1, lr=0.2, momentum=0.9, weight_decay=5e-4)
    opt_a = SAM(model_a.parameters(), torch.optim.SGD, **kwargs)
    opt_b = SAM(model_b.parameters(), torch.optim.SGD, **kwargs)
    for _ in range(3):
        opt_a.zero_grad()
        loss_a = opt_a.step(_closure(model_a, opt_a, x, y, zero=closure_zeroes_grads))
        loss_b = _manual_step(model_b, opt_b, x, y)
        assert torch.equal(loss_a, loss_b)  # the first pass's loss, at w
        _assert_equal(_params(model_a), _params(model_b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_accumulate_the_norm_in_float32(dtype):
    w = nn.Parameter(torch.zeros(10_000, dtype=dtype))
    w.grad = torch.full_like(w, 1000.0)  # ‖g‖ = 1e5, past float16's largest value 65504
    optimizer = SAM([w], torch.optim.SGD, rho=0.1, lr=0.1)
    optimizer.first_step()
    expected = torch.full_like(w, 0.1 * 1000.0 / 1e5)
    torch.testing.assert_close(optimizer.state[w]["e_w"], expected)
    torch.testing.assert_close(w.detach(), expected)
    optimizer.second_step()
    assert w.dtype == dtype and w.isfinite().all()


def test_step_closure_is_run_with_grad_enabled_and_restores_w_if_it_raises():
    model, (x, y) = _mlp(), _batch()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    w, calls = _params(model), []

    def closure() -> Tensor:
        assert torch.is_grad_enabled()
        calls.append(optimizer.perturbed)
        if optimizer.perturbed:
            raise KeyboardInterrupt
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with torch.no_grad(), pytest.raises(KeyboardInterrupt):
        optimizer.step(closure)
    assert calls == [False, True]
    assert not optimizer.perturbed
    _assert_equal(_params(model), w)


def test_momentum_advances_once_per_step():
    model, (x, y) = _mlp(), _batch()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        optimizer.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        sharp_grads = [p.grad.clone() for p in model.parameters()]  # ∇L(w + e(w))
        optimizer.second_step(zero_grad=True)
        expected = [0.9 * b + g for b, g in zip(expected, sharp_grads, strict=True)]
        for p, b in zip(model.parameters(), expected, strict=True):
            torch.testing.assert_close(optimizer.base_optimizer.state[p]["momentum_buffer"], b)

    adam_model = _mlp()
    adam = SAM(adam_model.parameters(), torch.optim.Adam, lr=1e-3)
    for _ in range(4):
        adam.step(_closure(adam_model, adam, x, y))
    assert {int(s["step"]) for s in adam.base_optimizer.state.values()} == {4}


@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.AdamW])
def test_state_dict_round_trip_resumes_identically(base):
    x, y = _batch()
    kwargs = dict(lr=0.05, weight_decay=5e-4)
    if base is torch.optim.SGD:
        kwargs["momentum"] = 0.9
    model = _mlp()
    optimizer = SAM(model.parameters(), base, rho=0.1, **kwargs)
    for _ in range(3):
        optimizer.step(_closure(model, optimizer, x, y))

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    saved_state = checkpoint["optimizer"]["state"][0]
    assert ("momentum_buffer" if base is torch.optim.SGD else "exp_avg") in saved_state
    assert checkpoint["optimizer"]["param_groups"][0]["rho"] == 0.1

    resumed = _mlp(seed=123)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = SAM(resumed.parameters(), base, rho=0.5, **kwargs)  # rho comes from the file
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    assert resumed_opt.param_groups is resumed_opt.base_optimizer.param_groups
    assert resumed_opt.param_groups[0]["rho"] == 0.1
    for _ in range(3):
        optimizer.step(_closure(model, optimizer, x, y))
        resumed_opt.step(_closure(resumed, resumed_opt, x, y))
    _assert_equal(_params(model), _params(resumed))


def test_parameters_without_gradients_are_skipped():
    model, (x, y) = _mlp(depth=3), _batch()
    model[2].requires_grad_(False)  # frozen middle layer
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = SAM([*model.parameters(), unused], torch.optim.SGD, lr=0.1, momentum=0.9)
    frozen = _params(model[2])
    for _ in range(2):
        optimizer.step(_closure(model, optimizer, x, y))
    _assert_equal(_params(model[2]), frozen)
    assert torch.equal(unused.detach(), torch.ones(3, dtype=torch.float64))
    assert unused not in optimizer.state
    assert not torch.equal(model[0].weight, _mlp(depth=3)[0].weight)


def test_errors_name_the_argument_and_the_value():
    params = list(_mlp().parameters())
    with pytest.raises(TypeError, match=r"base_optimizer.*SGD"):
        SAM(params, torch.optim.SGD(params, lr=0.1), lr=0.1)
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM(params, dict, lr=0.1)
    with pytest.raises(ValueError, match=r"rho=-0\.1"):
        SAM(params, torch.optim.SGD, rho=-0.1, lr=0.1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"rho={bad}"):
            SAM(params, torch.optim.SGD, rho=bad, lr=0.1)
    with pytest.raises(TypeError, match=r"rho='0\.1'"):
        SAM(params, torch.optim.SGD, rho="0.1", lr=0.1)
    with pytest.raises(TypeError, match="adaptive=1"):
        SAM(params, torch.optim.SGD, adaptive=1, lr=0.1)
    with pytest.raises(ValueError, match="rho=-1"):
        SAM([{"params": params, "rho": -1}], torch.optim.SGD, lr=0.1)

    optimizer = SAM(params, torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"closure=None.*first_step"):
        optimizer.step()
    with pytest.raises(RuntimeError, match=r"no parameter with a gradient.*backward"):
        optimizer.first_step()
    with pytest.raises(RuntimeError, match="needs a first_step"):
        optimizer.second_step()
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        optimizer.first_step()
    with pytest.raises(RuntimeError, match="between first_step"):
        optimizer.load_state_dict(optimizer.state_dict())
    optimizer.second_step()

    embedding = nn.Embedding(4, 2, sparse=True)
    sparse_opt = SAM(embedding.parameters(), torch.optim.SGD, lr=0.1)
    embedding(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        sparse_opt.first_step()


class _CountOps(TorchDispatchMode):
    """Counts the aten operators (kernels) called under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("adaptive", [False, True])
def test_hot_path_launches_the_same_kernels_for_4_or_40_parameters(adaptive):
    counts = []
    for depth in (2, 20):
        model, (x, y) = _mlp(depth=depth), _batch()
        optimizer = SAM(
            model.parameters(), torch.optim.SGD, adaptive=adaptive, lr=0.1, foreach=True
        )
        optimizer.step(_closure(model, optimizer, x, y))  # allocates SAM's buffers once
        F.cross_entropy(model(x), y).backward()
        with _CountOps() as ops:
            optimizer.first_step()
            optimizer.second_step()
        counts.append(ops.count)
    assert counts[0] == counts[1] < 30, counts


def test_add_param_group_reaches_the_base_optimizer():
    model, (x, y) = _mlp(), _batch()
    optimizer = SAM(model[0].parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    optimizer.add_param_group({"params": model[2].parameters(), "rho": 0.2})
    assert optimizer.param_groups is optimizer.base_optimizer.param_groups
    assert [g["rho"] for g in optimizer.param_groups] == [0.05, 0.2]
    assert optimizer.param_groups[1]["momentum"] == 0.9  # the base optimizer's default
    before = _params(model[2])
    optimizer.step(_closure(model, optimizer, x, y))
    assert not torch.equal(model[2].weight, before[0])
    assert "momentum_buffer" in optimizer.base_optimizer.state[model[2].weight]
    with pytest.raises(ValueError, match="rho=-2"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.ones(1))], "rho": -2})


def test_deepcopy_keeps_the_base_optimizer_and_the_shared_groups():
    model, (x, y) = _mlp(), _batch()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    optimizer.step(_closure(model, optimizer, x, y))
    clone = copy.deepcopy(optimizer)
    assert clone.param_groups is clone.base_optimizer.param_groups
    assert clone.param_groups is not optimizer.param_groups
    assert len(clone.base_optimizer.state) == 4


# --- schedulers ------------------------------------------------------------------------------


def _lr_used_by_one_step(optimizer: SAM, model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The learning rate the base optimizer applied, read back from the update it made."""
    before = model[0].bias.detach().clone()
    F.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    grad = model[0].bias.grad.clone()
    optimizer.second_step(zero_grad=True)
    return ((before - model[0].bias.detach()) / grad).mean().item()


def test_timm_scheduler_drives_the_base_optimizer_lr():
    from timm.scheduler import create_scheduler_v2

    model, (x, y) = _mlp(), _batch()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=1.0)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="step", num_epochs=4, decay_epochs=2, decay_rate=0.1, warmup_epochs=0
    )
    assert _lr_used_by_one_step(optimizer, model, x, y) == pytest.approx(1.0)
    scheduler.step(2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert _lr_used_by_one_step(optimizer, model, x, y) == pytest.approx(0.1)


def test_torch_scheduler_drives_the_base_optimizer_lr_without_order_warning():
    model, (x, y) = _mlp(), _batch()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=1.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1], gamma=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()"
        assert _lr_used_by_one_step(optimizer, model, x, y) == pytest.approx(1.0)
        scheduler.step()
    assert optimizer.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert _lr_used_by_one_step(optimizer, model, x, y) == pytest.approx(0.1)


# --- BatchNorm ------------------------------------------------------------------------------


def _bn_model(momentum: float | None) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=momentum), nn.Linear(4, 2))
    _fill_(model, seed=3)
    return model


def _bn_stats(model: nn.Module) -> list[Tensor]:
    bn = model[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
def test_bn_stats_equal_one_forward_pass_at_w_per_step(momentum):
    x, y = _batch(dtype=torch.float32)
    model = _bn_model(momentum)
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)

    def closure() -> Tensor:
        optimizer.zero_grad()
        with frozen_bn_stats(model, enabled=optimizer.perturbed):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        return loss

    for step in range(3):
        reference = copy.deepcopy(model)
        reference(x)  # exactly one forward pass at w
        optimizer.step(closure)
        _assert_equal(_bn_stats(model), _bn_stats(reference))
        assert model[1].momentum == momentum  # the real momentum, untouched
        assert int(model[1].num_batches_tracked) == step + 1

    unprotected = _bn_model(momentum)
    unprotected_opt = SAM(unprotected.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    unprotected_opt.step(_closure(unprotected, unprotected_opt, x, y))
    assert int(unprotected[1].num_batches_tracked) == 2  # what the helper prevents


def test_frozen_bn_stats_restores_on_error_and_can_be_disabled():
    model = _bn_model(0.1)
    before = _bn_stats(model)
    with pytest.raises(RuntimeError, match="boom"), frozen_bn_stats(model):
        model(torch.ones(4, 3))
        assert int(model[1].num_batches_tracked) == 1
        raise RuntimeError("boom")
    _assert_equal(_bn_stats(model), before)
    with frozen_bn_stats(nn.Linear(2, 2)):  # no BatchNorm: nothing to do
        pass
    with frozen_bn_stats(model, enabled=False):
        model(torch.ones(4, 3))
    assert int(model[1].num_batches_tracked) == 1


# --- mixed precision ------------------------------------------------------------------------


def test_bf16_autocast_works_as_is():
    x, y = _batch(dtype=torch.float32)
    model_a, model_b = _mlp(dtype=torch.float32), _mlp(dtype=torch.float32)
    opt_a = SAM(model_a.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    opt_b = SAM(model_b.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)

    def loss_of(model: nn.Module) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(model(x), y)

    def closure() -> Tensor:
        opt_a.zero_grad()
        loss = loss_of(model_a)
        loss.backward()
        return loss

    for _ in range(2):
        opt_a.step(closure)
        loss_of(model_b).backward()
        opt_b.first_step(zero_grad=True)
        loss_of(model_b).backward()
        opt_b.second_step(zero_grad=True)
    _assert_equal(_params(model_a), _params(model_b))
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in model_a.parameters())


def _fp16_sam_step(
    model: nn.Module,
    optimizer: SAM,
    scaler: torch.amp.GradScaler,
    x: Tensor,
    y: Tensor,
    poison: Callable[[int], None] = lambda _: None,
) -> None:
    """The guide's GradScaler recipe; ``poison(k)`` may corrupt the gradients of pass k."""
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    poison(1)
    scaler.unscale_(optimizer)
    if grads_are_finite(optimizer):
        optimizer.first_step(zero_grad=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        poison(2)
        optimizer.unperturb()
        scaler.step(optimizer.base_optimizer)
    scaler.update()
    optimizer.zero_grad()


def test_fp16_grad_scaler_recipe_matches_unscaled_sam():
    x, y = _batch(dtype=torch.float32)
    models = [_mlp(dtype=torch.float32), _mlp(dtype=torch.float32)]
    optimizers = [SAM(m.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9) for m in models]
    scalers = [torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu", enabled=False)]
    for _ in range(3):
        for model, optimizer, scaler in zip(models, optimizers, scalers, strict=True):
            _fp16_sam_step(model, optimizer, scaler, x, y)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(models[0][0].weight, _mlp(dtype=torch.float32)[0].weight)


@pytest.mark.parametrize("bad_pass", [1, 2])
@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")])
def test_fp16_grad_scaler_recipe_skips_the_step_on_inf_or_nan(bad_pass, bad_value):
    x, y = _batch(dtype=torch.float32)
    model = _mlp(dtype=torch.float32)
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    w = _params(model)

    def poison(k: int) -> None:
        if k == bad_pass:
            model[0].weight.grad[0, 0] = bad_value

    _fp16_sam_step(model, optimizer, scaler, x, y, poison)
    _assert_equal(_params(model), w)  # no step, and w restored exactly after pass 2
    assert not optimizer.perturbed
    assert len(optimizer.base_optimizer.state) == 0  # the base optimizer never stepped
    assert scaler.get_scale() == 2.0**15  # backed off, like scaler.step does
    _fp16_sam_step(model, optimizer, scaler, x, y)  # the next finite step goes through
    assert not torch.equal(model[0].weight, w[0])
    assert scaler.get_scale() == 2.0**15


def test_ddp_no_sync_is_a_no_op_without_ddp():
    model = _mlp()
    with ddp_no_sync(model), ddp_no_sync(model, enabled=False):
        pass

    class WithNoSync(nn.Linear):
        entered = False

        def no_sync(self) -> contextlib.AbstractContextManager[None]:
            WithNoSync.entered = True
            return contextlib.nullcontext()

    with ddp_no_sync(WithNoSync(1, 1), enabled=False):
        assert not WithNoSync.entered
    with ddp_no_sync(WithNoSync(1, 1)):
        assert WithNoSync.entered


# --- the guide and the benchmark ------------------------------------------------------------


def test_guide_code_blocks_run_in_order():
    text = (ROOT / "docs" / "guides" / "sam.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 10
    namespace: dict[str, object] = {"__name__": "sam_guide"}
    for i, block in enumerate(blocks):
        code = compile(block, f"docs/guides/sam.md[block {i}]", "exec")
        exec(code, namespace)


def test_benchmark_quick_run_prints_the_table():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sam.py"), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=True,
    )
    assert "| method | ms/step | ratio vs 2x SGD |" in result.stdout
    assert "| parameters | SAM (ours) µs | reference µs | reference / ours |" in result.stdout
    assert "reference (per-parameter loop)" in result.stdout


def test_second_step_without_the_second_backward_raises_and_restores_w():
    model = _mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = _batch()
    before = _params(model)
    F.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)  # gradients cleared ...
    with pytest.raises(RuntimeError, match="second_step\\(\\) found no gradients"):
        optimizer.second_step()  # ... and no backward at w + e(w)
    _assert_equal(_params(model), before)  # back at w, no step taken
    assert not optimizer.perturbed
    _manual_step(model, optimizer, x, y)  # the optimizer is still usable


def test_a_base_optimizers_state_dict_loads_with_this_rho():
    model = _mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    sgd.step()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.07, lr=0.1, momentum=0.9)
    optimizer.load_state_dict(sgd.state_dict())  # resume an SGD run with SAM
    assert [g["rho"] for g in optimizer.param_groups] == [0.07]
    assert optimizer.param_groups[0]["adaptive"] is False
    _manual_step(model, optimizer, x, y)


def test_scheduler_does_not_warn_after_a_base_optimizer_step():
    """The fp16 recipe steps sam.base_optimizer (via GradScaler): that is SAM's update too."""
    model = _mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.unperturb()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.base_optimizer.step()  # what scaler.step(optimizer.base_optimizer) runs
        scheduler.step()
    clone = copy.deepcopy(optimizer)  # hooks are not pickled: re-registered on unpickling
    clone._opt_called = False
    clone.base_optimizer.step()
    assert clone._opt_called


def test_frozen_bn_stats_covers_instance_norm_with_running_stats():
    norm = nn.InstanceNorm1d(2, track_running_stats=True)
    before = norm.running_mean.clone()
    with frozen_bn_stats(norm):
        norm(torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(norm.running_mean, before) and int(norm.num_batches_tracked) == 0


def _kwon_asam_update(model: nn.Module, x: Tensor, y: Tensor, lr: float, rho: float, eta: float):
    """One step of Kwon et al.'s ASAM as their reference code computes it: T_w = |w| + eta for
    parameters named "weight", T = 1 for the others (biases); e = rho T² g / ‖T g‖."""
    names = [name for name, _ in model.named_parameters()]
    w = _params(model)
    g = _grad_at(model, w, x, y)
    t = [
        wi.abs() + eta if "weight" in n else torch.ones_like(wi)
        for n, wi in zip(names, w, strict=True)
    ]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g, strict=True)))
    e = [rho * ti**2 * gi / (norm + 1e-12) for ti, gi in zip(t, g, strict=True)]
    g2 = _grad_at(model, [wi + ei for wi, ei in zip(w, e, strict=True)], x, y)
    return [wi - lr * gi for wi, gi in zip(w, g2, strict=True)]


def test_kwon_asam_recipe_eta_and_non_adaptive_biases():
    """The paper's ASAM (rho 1.0): eta=0.01 on the weights, biases in a non-adaptive group."""
    model, (x, y) = _mlp(), _batch()
    with torch.no_grad():
        model[0].bias.zero_()  # zero biases: perturbed by Kwon's rule, never by T = |w|
    expected = _kwon_asam_update(model, x, y, lr=0.3, rho=1.0, eta=0.01)
    weights = [p for n, p in model.named_parameters() if "weight" in n]
    biases = [p for n, p in model.named_parameters() if "weight" not in n]
    groups = [{"params": weights}, {"params": biases, "adaptive": False}]
    optimizer = SAM(groups, torch.optim.SGD, rho=1.0, adaptive=True, eta=0.01, lr=0.3)
    _manual_step(model, optimizer, x, y)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)
    assert set(optimizer.state[weights[0]]) == {"old_p", "e_w", "t_w"}
    assert optimizer.param_groups[1]["eta"] == 0.01  # unused there: not adaptive, no T_w
    assert set(optimizer.state[biases[0]]) == {"old_p", "e_w"}


def test_eta_is_checked_like_rho():
    params = _mlp().parameters()
    with pytest.raises(ValueError, match="eta should be a finite number >= 0"):
        SAM(params, torch.optim.SGD, adaptive=True, eta=-0.01, lr=0.1)
    with pytest.raises(TypeError, match="eta should be a real number"):
        SAM(_mlp().parameters(), torch.optim.SGD, adaptive=True, eta="0.01", lr=0.1)


def test_a_group_added_to_the_base_optimizer_directly_steps_with_eta_0():
    model = _mlp()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    optimizer = SAM(first, torch.optim.SGD, rho=0.1, lr=0.1)
    optimizer.base_optimizer.add_param_group({"params": second, "rho": 0.1, "adaptive": True})
    _manual_step(model, optimizer, *_batch())  # no KeyError for the group's missing eta


@pytest.mark.parametrize("adaptive", [False, True])
def test_an_all_zero_gradient_gives_no_perturbation(adaptive: bool) -> None:
    """e(w) = rho T^2 g / (||T g|| + eps) is 0, not NaN, when g = 0."""
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = SAM([w], torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.1)
    w.grad = torch.zeros(2)
    opt.first_step()
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))
    opt.second_step()
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))

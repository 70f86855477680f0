"""``SAM``: sharpness-aware minimization (and ASAM) wrapped around any torch optimizer.

SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
ICLR 2021, arXiv:2010.01412) minimizes the loss at the worst nearby point instead of at the
weights themselves. One SAM step takes two gradients:

1. ``g = ∇L(w)`` at the current weights, which gives the perturbation
   ``e(w) = ρ · g / ‖g‖₂`` (the first-order solution of ``max_{‖e‖ ≤ ρ} L(w + e)``);
2. ``∇L(w + e(w))`` at the perturbed weights, which the base optimizer (SGD, AdamW, ...)
   applies at ``w``: ``w ← base_step(w, ∇L(w + e(w)))``.

ASAM (Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning
of Deep Neural Networks", ICML 2021, PMLR 139:5905-5914) measures the neighbourhood relative to
the weights with ``T_w = |w| + η`` (elementwise): ``e(w) = ρ · T_w² g / ‖T_w g‖₂``. The
default ``eta=0`` is davda54/sam's variant (zero weights are never perturbed); Kwon et al.'s
own code uses ``η = 0.01`` on the weights and ``T = 1`` on the biases, which is
``eta=0.01`` with the biases in a param group of their own with ``adaptive=False``.

The USEFUL paper (Nguyen et al., NeurIPS 2024) trains with SGD and with SAM (``ρ = 0.1`` on
CIFAR; ASAM with ``ρ = 1.0`` in its Appendix D.4); USEFUL changes the data distribution and
stacks with either.

Conventions of this implementation:

- ``‖·‖₂`` is one global norm over every parameter that has a gradient, across all param
  groups; each group's own ``adaptive`` flag (and ``eta``) decides whether its parameters
  enter it as ``g`` or as ``(|w| + η) ⊙ g``, and each group's own ``rho`` scales its
  perturbation.
- ``ε = 1e-12`` is added to the norm, so an all-zero gradient gives ``e(w) = 0``.
- ``first_step`` keeps a copy of ``w`` and ``second_step`` copies it back, so the weights the
  base optimizer updates are bit-for-bit the ones the first pass saw.
- The hot path is ``torch._foreach_*`` calls, one per operation per (group, device, dtype),
  never a Python loop of per-parameter arithmetic; the copy of ``w`` and ``e(w)`` live in
  buffers allocated once and reused every step.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from useful_data._sam_utils import ddp_no_sync, frozen_bn_stats, grads_are_finite

__all__ = ["SAM", "ddp_no_sync", "frozen_bn_stats", "grads_are_finite"]

_LossT = TypeVar("_LossT")

# Added to the gradient norm so that an all-zero gradient gives e(w) = 0 instead of 0/0.
_EPS = 1e-12


class SAM(Optimizer):
    """Sharpness-aware minimization around a base optimizer, with exact weight restoration.

    ``base_optimizer`` is built over the *same* ``param_groups`` as this object, so LR
    schedulers (torch's and timm's), ``zero_grad``, ``state_dict`` and ``load_state_dict`` work
    on the SAM object directly. Use either the two explicit passes::

        loss_fn(model(x), y).backward()
        optimizer.first_step(zero_grad=True)   # w -> w + e(w)
        loss_fn(model(x), y).backward()
        optimizer.second_step(zero_grad=True)  # back to w, then the base step

    or :meth:`step` with a closure that does forward and backward (PyTorch Lightning's shape).
    For BatchNorm, mixed precision and DDP see :func:`frozen_bn_stats`,
    :func:`grads_are_finite` and :func:`ddp_no_sync`, and the guide ``docs/guides/sam.md``.

    State: ``optimizer.state[p]`` holds SAM's own buffers, ``"old_p"`` (the copy of ``w``) and
    ``"e_w"`` (the last perturbation ``e(w)``), and with ``adaptive=True, eta > 0`` ``"t_w"``
    (``|w| + η``), allocated once and reused every step. The base
    optimizer's state (momentum, Adam moments) lives in ``optimizer.base_optimizer.state``, and
    :meth:`state_dict` saves that one: SAM's buffers only matter between ``first_step`` and
    ``second_step`` and are not saved.

    Args:
        params: Parameters or param-group dicts, as for any torch optimizer. A group may set its
            own ``rho``, ``adaptive`` and ``eta``.
        base_optimizer: The optimizer *class* that takes the actual step, e.g.
            ``torch.optim.SGD``.
        rho: Radius ``ρ >= 0`` of the neighbourhood. The default ``0.05`` is Foret et al.'s
            and davda54/sam's; the USEFUL paper's CIFAR recipe uses ``0.1`` (pass
            ``rho=0.1``), and ASAM typically ``0.5`` to ``2.0`` (the paper: ``1.0``).
            ``rho=0`` gives the base optimizer at twice the cost.
        adaptive: Use ASAM's scale-invariant perturbation ``ρ · T_w² g / ‖T_w g‖`` with
            ``T_w = |w| + eta``.
        eta: ASAM's offset ``η >= 0`` (used only with ``adaptive=True``): ``0`` as in
            davda54/sam, ``0.01`` as in Kwon et al.'s code (see the module notes for their
            treatment of biases).
        **base_kwargs: Passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``...).

    Raises:
        TypeError: If ``base_optimizer`` is not a ``torch.optim.Optimizer`` subclass, ``rho``
            or ``eta`` is not a real number, or ``adaptive`` is not a bool.
        ValueError: If ``rho`` or ``eta`` is negative or not finite.

    Example:
        >>> import torch
        >>> from useful_data.sam import SAM
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]])
        >>> optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        >>> def closure():
        ...     optimizer.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> optimizer.step(closure)  # returns the loss at w, before the update
        tensor(9., grad_fn=<MseLossBackward0>)
        >>> model.weight  # w - 0.1 * ∇L(w + e(w)), with e(w) = 0.05 * (6, 12) / ‖(6, 12)‖
        Parameter containing:
        tensor([[ 0.3776, -0.2447]], requires_grad=True)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.0,
        **base_kwargs: Any,
    ) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            raise TypeError(
                "base_optimizer should be a torch.optim.Optimizer subclass such as "
                f"torch.optim.SGD (the class, not an instance), but got "
                f"base_optimizer={base_optimizer!r}"
            )
        _check_rho(rho)
        _check_adaptive(adaptive)
        _check_rho(eta, "eta")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta, **base_kwargs))
        # One list of param groups shared by both objects: schedulers that edit
        # optimizer.param_groups[i]["lr"] change what the base optimizer uses.
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        # (params, copies of w) taken by first_step, consumed by second_step / unperturb.
        self._perturbed: tuple[list[Tensor], list[Tensor]] | None = None
        self.base_optimizer.register_step_post_hook(self._base_stepped)

    def _base_stepped(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # torch's LR schedulers warn unless optimizer.step() ran before scheduler.step();
        # a step of the base optimizer (second_step, or scaler.step(sam.base_optimizer) in
        # the fp16 recipe) is SAM's real update.
        self._opt_called = True

    def _fill_defaults(self, group: dict[str, Any]) -> None:
        """Give ``group`` the constructor's ``rho``, ``adaptive`` and ``eta`` where it has none."""
        for key in ("rho", "adaptive", "eta"):
            group.setdefault(key, self.defaults[key])

    @property
    def perturbed(self) -> bool:
        """Whether the parameters are at ``w + e(w)`` (after :meth:`first_step`, before the
        restore in :meth:`second_step` or :meth:`unperturb`)."""
        return self._perturbed is not None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to both SAM and the base optimizer (e.g. when unfreezing layers).

        Args:
            param_group: As for :meth:`torch.optim.Optimizer.add_param_group`; ``rho`` and
                ``adaptive`` and ``eta`` default to the values given to the constructor.

        Raises:
            TypeError: If the group's ``rho`` or ``eta`` is not a real number or ``adaptive``
                not a bool.
            ValueError: If the group's ``rho`` is negative or not finite.
        """
        self._fill_defaults(param_group)
        _check_rho(param_group["rho"])
        _check_adaptive(param_group["adaptive"])
        _check_rho(param_group["eta"], "eta")
        if "base_optimizer" in self.__dict__:
            self.base_optimizer.add_param_group(param_group)  # shared list: SAM sees it too
        else:  # called by Optimizer.__init__, before the base optimizer exists
            super().add_param_group(param_group)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Climb to the local maximum ``w + e(w)`` using the gradient currently in ``.grad``.

        Parameters whose ``.grad`` is ``None`` are neither perturbed nor, later, restored.

        Args:
            zero_grad: Clear the gradients afterwards (``set_to_none``), ready for the second
                backward pass.

        Raises:
            RuntimeError: If no parameter has a gradient, a gradient is sparse, or the
                parameters are already perturbed (``first_step`` twice in a row).
        """
        if self._perturbed is not None:
            raise RuntimeError(
                "first_step() was called twice without second_step(); the parameters are "
                "already at w + e(w). Call second_step() (or unperturb() to abandon the step)."
            )
        buckets = self._buckets()
        shared_device = buckets[0].params[0].device

        # ‖g‖₂ (SAM) or ‖T_w ⊙ g‖₂ (ASAM) over all groups. With η = 0, ‖|w| ⊙ g‖ = ‖w ⊙ g‖,
        # so e_w holds w ⊙ g and needs no abs; else T_w = |w| + η is kept in t_w.
        bucket_norms = []
        for b in buckets:
            torch._foreach_copy_(b.e_w, b.grads)
            if b.adaptive:
                torch._foreach_mul_(b.e_w, b.scales())
            if b.norm_dtype is None:
                norms = torch._foreach_norm(b.e_w, 2)
            else:  # torch >= 2.4
                norms = torch._foreach_norm(b.e_w, 2, dtype=b.norm_dtype)
            bucket_norms.append(torch.linalg.vector_norm(torch.stack(norms)).to(shared_device))
        grad_norm = torch.linalg.vector_norm(torch.stack(bucket_norms))

        old_params: list[Tensor] = []
        params: list[Tensor] = []
        for b in buckets:
            # Keep w itself, so that second_step restores it bit for bit.
            torch._foreach_copy_(b.old_p, b.params)
            if b.adaptive:
                torch._foreach_mul_(b.e_w, b.scales())  # T_w² g = T_w ⊙ (T_w ⊙ g)
            scale = (b.rho / (grad_norm + _EPS)).to(b.params[0].device)
            torch._foreach_mul_(b.e_w, scale)  # e(w) = ρ · T_w² g / ‖T_w g‖
            torch._foreach_add_(b.params, b.e_w)  # climb to the local maximum "w + e(w)"
            params += b.params
            old_params += b.old_p
        self._perturbed = (params, old_params)

        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def unperturb(self) -> None:
        """Go back from ``w + e(w)`` to ``w`` exactly (a copy), without any optimizer step.

        :meth:`second_step` does this before stepping; call it alone to abandon a step, e.g.
        when the second pass's gradients are not finite under a ``GradScaler``.

        Raises:
            RuntimeError: If the parameters are not perturbed (no :meth:`first_step` before).
        """
        if self._perturbed is None:
            raise RuntimeError(
                "unperturb()/second_step() needs a first_step() before it: the parameters are "
                "not perturbed. Call first_step() after the first backward pass."
            )
        params, old_params = self._perturbed
        torch._foreach_copy_(params, old_params)  # get back to "w" from "w + e(w)"
        self._perturbed = None

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` exactly, then take the base optimizer's step with ``∇L(w + e(w))``.

        Args:
            zero_grad: Clear the gradients after the step (``set_to_none``).

        Raises:
            RuntimeError: If :meth:`first_step` was not called before, or no perturbed
                parameter has a gradient (no backward pass at ``w + e(w)``; the parameters
                are then restored to ``w`` and no step is taken).
        """
        perturbed = self._perturbed[0] if self._perturbed is not None else []
        self.unperturb()
        if perturbed and all(p.grad is None for p in perturbed):
            raise RuntimeError(
                "second_step() found no gradients: run the backward pass at the perturbed "
                "weights between first_step(zero_grad=True) and second_step(); the parameters "
                "were restored to w and no step was taken"
            )
        self.base_optimizer.step()  # the actual "sharpness-aware" update (see _base_stepped)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], _LossT] | None = None) -> _LossT:
        """One full SAM step that runs ``closure`` for both passes.

        ``closure`` must do forward and backward and return the loss, as for
        :class:`torch.optim.LBFGS` and as PyTorch Lightning builds it. Gradients are cleared
        between the two passes (``first_step(zero_grad=True)``); clear them before the first
        pass yourself (in the closure or the loop), as with any torch optimizer. If the second
        pass raises, the parameters are restored to ``w`` before the error propagates.

        Inside the closure, :attr:`perturbed` tells the passes apart (``False`` in the first,
        ``True`` in the second), e.g. for :func:`frozen_bn_stats` and :func:`ddp_no_sync`.

        Args:
            closure: Callable that clears or accumulates gradients, runs the model, calls
                ``backward()`` and returns the loss. Run with gradients enabled.

        Returns:
            What the first call of ``closure`` returned: the loss at ``w``.

        Raises:
            ValueError: If ``closure`` is ``None``.
        """
        if closure is None:
            raise ValueError(
                "SAM.step() needs a closure that does forward and backward and returns the loss, "
                "because SAM evaluates the gradient twice; but got closure=None. Either pass one "
                "(optimizer.step(closure)) or call optimizer.first_step(zero_grad=True), "
                "a second forward/backward, then optimizer.second_step()."
            )
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        try:
            closure()
        except BaseException:
            self.unperturb()  # do not leave the model at w + e(w)
            raise
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (momentum, moments...) and all param groups.

        The param groups include ``rho``, ``adaptive`` and ``eta``. SAM's ``old_p``/``e_w``
        (and ``t_w``) buffers are not saved: they are only meaningful between ``first_step``
        and ``second_step``.

        Returns:
            A dict for :meth:`load_state_dict` (and ``torch.save``).
        """
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned, into the base optimizer and the shared groups.

        Args:
            state_dict: A dict returned by :meth:`state_dict` (or the base optimizer's own,
                e.g. to resume SGD as SAM: its groups then get this optimizer's ``rho``,
                ``adaptive`` and ``eta``).

        Raises:
            RuntimeError: If called between :meth:`first_step` and :meth:`second_step`.
        """
        if self._perturbed is not None:
            raise RuntimeError(
                "load_state_dict() was called between first_step() and second_step(); "
                "finish the step (second_step()) or abandon it (unperturb()) first."
            )
        self.base_optimizer.load_state_dict(state_dict)
        # Optimizer.load_state_dict replaces param_groups with a new list: share it again.
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:  # a base optimizer's own state_dict has no rho
            self._fill_defaults(group)

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups; copy.deepcopy and
        # pickle also need the base optimizer and the pending perturbation.
        state = super().__getstate__()
        state["base_optimizer"] = self.base_optimizer
        state["_perturbed"] = self._perturbed
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.defaults.setdefault("eta", 0.0)  # pickled before eta existed
        for group in self.param_groups:
            self._fill_defaults(group)
        # optimizer hooks are not pickled: hook the (unpickled) base optimizer again
        self.base_optimizer.register_step_post_hook(self._base_stepped)

    def _buckets(self) -> list[_Bucket]:
        """Parameters with gradients, grouped by (param group, device, dtype) for foreach."""
        buckets: dict[tuple[int, torch.device, torch.dtype], _Bucket] = {}
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "SAM does not support sparse gradients, but a parameter of shape "
                        f"{tuple(p.shape)} has one; use a dense layer (e.g. "
                        "nn.Embedding(sparse=False))."
                    )
                key = (index, p.device, p.dtype)
                if key not in buckets:
                    self._fill_defaults(group)  # a group added to base_optimizer directly
                    buckets[key] = _Bucket(group["rho"], group["adaptive"], group["eta"], p.dtype)
                state = self.state[p]
                t_w = _buffer(state, "t_w", p) if buckets[key].offset else None
                buckets[key].add(p, _buffer(state, "old_p", p), _buffer(state, "e_w", p), t_w)
        if not buckets:
            raise RuntimeError(
                "first_step() found no parameter with a gradient (every .grad is None). Call "
                "loss.backward() before first_step(), and check that the model's parameters "
                "are the ones given to SAM and have requires_grad=True."
            )
        return list(buckets.values())


class _Bucket:
    """The tensors of one (param group, device, dtype): one foreach launch per operation."""

    def __init__(self, rho: float, adaptive: bool, eta: float, dtype: torch.dtype) -> None:
        self.rho = rho
        self.adaptive = adaptive
        self.eta = eta
        self.offset = adaptive and eta > 0  # T_w = |w| + η needs its own buffer
        # Half-precision norms overflow (65504 for float16): accumulate those in float32.
        low_precision = dtype in (torch.float16, torch.bfloat16)
        self.norm_dtype: torch.dtype | None = torch.float32 if low_precision else None
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.old_p: list[Tensor] = []
        self.e_w: list[Tensor] = []
        self.t_w: list[Tensor] = []
        self._scales_ready = False

    def add(self, p: Tensor, old_p: Tensor, e_w: Tensor, t_w: Tensor | None = None) -> None:
        self.params.append(p)
        self.grads.append(cast(Tensor, p.grad))  # buckets hold parameters with a .grad
        self.old_p.append(old_p)
        self.e_w.append(e_w)
        if t_w is not None:
            self.t_w.append(t_w)

    def scales(self) -> list[Tensor]:
        """ASAM's ``T_w`` up to sign: ``w`` itself when ``η = 0`` (only ``T_w²`` and ``‖T_w g‖``
        are used), else ``|w| + η``, computed once per step into the ``t_w`` buffers."""
        if not self.offset:
            return self.params
        if not self._scales_ready:
            torch._foreach_copy_(self.t_w, self.params)
            torch._foreach_abs_(self.t_w)
            torch._foreach_add_(self.t_w, self.eta)
            self._scales_ready = True
        return self.t_w


def _buffer(state: dict[str, Any], key: str, p: Tensor) -> Tensor:
    """``state[key]``, (re)allocated like ``p`` when missing or when ``p`` moved or changed."""
    buf = state.get(key)
    if buf is None or buf.shape != p.shape or buf.device != p.device or buf.dtype != p.dtype:
        buf = state[key] = torch.empty_like(p, memory_format=torch.preserve_format)
    return buf


def _check_rho(rho: Any, name: str = "rho") -> None:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise TypeError(
            f"{name} should be a real number >= 0, but got {name}={rho!r} of type "
            f"{type(rho).__name__}"
        )
    if not float(rho) >= 0 or float(rho) == float("inf"):
        raise ValueError(f"{name} should be a finite number >= 0, but got {name}={rho}")


def _check_adaptive(adaptive: Any) -> None:
    if not isinstance(adaptive, bool):
        raise TypeError(
            f"adaptive should be True (ASAM) or False (SAM), but got adaptive={adaptive!r} "
            f"of type {type(adaptive).__name__}"
        )

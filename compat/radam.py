"""``compat.RAdam``: a drop-in for ``torch.optim.RAdam``.

Also the few per-class pieces torch repeats in RAdam, Adamax, ASGD and Rprop (their default
implementation rule, per-step checks and ``__setstate__`` upgrade), shared by ``compat.adamax``,
``compat.asgd`` and ``compat.rprop``.
"""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from typing import Sequence

import torch
from torch import Tensor
from torch.optim.optimizer import (
    ParamsT,
    _default_to_fused_or_foreach,
    _get_capturable_supported_devices,
    _get_scalar_dtype,
)

from functional_optim import _validate
from functional_optim.radam import RADAM

from .optimizer import FunctionalOptimizer

__all__ = ["RAdam"]


def default_foreach(group: dict, params: list) -> bool:
    """torch's choice of implementation for these optimizers: ``foreach`` as given, else foreach
    when every param is on a device torch's foreach supports (CUDA), whatever ``lr``'s type."""
    foreach = group["foreach"]
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)
    return bool(foreach)


def check_step(group: dict, params: list, tensors: Sequence[list], listed: str, foreach: bool,
               supports_xla: bool) -> None:
    """torch's per-step checks, in its order: foreach refuses ``differentiable``; ``capturable``
    needs ``params`` and the per-parameter ``tensors`` (steps ...) on one supported device type
    (``listed`` names them as torch's message does; not checked while compiling, as in torch)."""
    if foreach and group["differentiable"]:
        raise AssertionError("_foreach ops don't support autograd")
    if not group["capturable"] or torch.compiler.is_compiling():
        return
    supported = _get_capturable_supported_devices(supports_xla=supports_xla)
    for p, *others in zip(params, *tensors):
        if not (all(t.device.type == p.device.type for t in others) and p.device.type in supported):
            raise AssertionError(f"If capturable=True, {listed} must be on supported devices: {supported}.")


def upgrade_state(optimizer: FunctionalOptimizer, group_defaults: dict, scalar_keys: Sequence[str] = ("step",),
                  on_param_device: bool = False) -> None:
    """torch's ``__setstate__`` for an older checkpoint: missing group flags get their defaults and
    per-parameter counters stored as numbers become tensors of the scalar dtype (on the param's
    device if ``capturable``, or always with ``on_param_device``)."""
    for group in optimizer.param_groups:
        for key, value in group_defaults.items():
            group.setdefault(key, value)
        for p in group["params"]:
            p_state = optimizer.state.get(p, [])
            if len(p_state) == 0:
                continue
            for key in scalar_keys:
                if not torch.is_tensor(p_state[key]):
                    device = p.device if on_param_device or group["capturable"] else None
                    p_state[key] = torch.tensor(float(p_state[key]), dtype=_get_scalar_dtype(), device=device)


class RAdam(FunctionalOptimizer):
    """RAdam (Liu et al., 2020) with torch.optim.RAdam's API; math in ``functional_optim.radam``.

    See :func:`functional_optim.radam` for the formula. Every argument means what it means in
    ``torch.optim.RAdam`` (``foreach`` picks the implementation, ``capturable`` keeps ``step`` on
    the device for CUDA graphs, ``differentiable`` lets autograd through ``step``). torch has no
    fused RAdam, so neither does this class.
    """

    definition = RADAM

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        _validate.check_lr(lr)
        _validate.check_eps(eps)
        _validate.check_betas(betas)
        _validate.check_weight_decay(weight_decay)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "decoupled_weight_decay": decoupled_weight_decay,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        upgrade_state(self, {"foreach": None, "maximize": False, "differentiable": False,
                             "decoupled_weight_decay": False, "capturable": False})

    def _host_scalars(self, group: dict) -> bool:
        # torch's RAdam reads step with .item() also when differentiable (only capturable keeps tensors)
        return not group["capturable"]

    def _use_foreach(self, group: dict, params: list) -> bool:
        return default_foreach(group, params)

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        foreach = self._use_foreach(group, params)
        check_step(group, params, [state_steps], "params and state_steps", foreach, supports_xla=not foreach)

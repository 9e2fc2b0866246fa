"""``compat.NAdam``: a drop-in for ``torch.optim.NAdam``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import (
    ParamsT,
    _default_to_fused_or_foreach,
    _get_capturable_supported_devices,
)

from functional_optim import _validate
from functional_optim.nadam import NADAM

from ._rules import upgrade_state
from .optimizer import FunctionalOptimizer

__all__ = ["NAdam"]


class NAdam(FunctionalOptimizer):
    """NAdam (Dozat, 2016) with torch.optim.NAdam's API; math in ``functional_optim.nadam``.

    See :func:`functional_optim.nadam` for the formula. Every argument means what it means in
    ``torch.optim.NAdam`` (``foreach`` picks the implementation, ``capturable`` keeps ``step`` and
    ``mu_product`` on the device for CUDA graphs, ``differentiable`` lets autograd through ``step``).
    torch has no fused NAdam, so neither does this class.
    """

    definition = NADAM

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
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
        _validate.check_momentum_decay(momentum_decay)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum_decay": momentum_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        upgrade_state(self, {"maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                             "decoupled_weight_decay": False}, scalar_keys=("step", "mu_product"))

    def _init_param_state(self, p: Tensor, group: dict) -> dict:
        state = super()._init_param_state(p, group)
        # torch places mu_product like step: a CPU scalar unless capturable
        state["mu_product"] = self._step_tensor(p, group).fill_(1.0)
        return state

    def _host_scalars(self, group: dict) -> bool:
        # torch's NAdam reads step with .item() also when differentiable (only capturable keeps tensors)
        return not group["capturable"]

    def _use_foreach(self, group: dict, params: list) -> bool:
        # torch's NAdam defaults to foreach on CUDA whatever the type of lr
        foreach = group["foreach"]
        if foreach is None:
            _, foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)
        return bool(foreach)

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        """torch.optim.NAdam's per-step checks, with its messages (which differ per implementation)."""
        foreach = self._use_foreach(group, params)
        if foreach and group["differentiable"]:
            raise AssertionError("_foreach ops don't support autograd")
        if not group["capturable"] or torch.compiler.is_compiling():
            return
        supported = _get_capturable_supported_devices(supports_xla=not foreach)
        mu_products = [self.state[p]["mu_product"] for p in params]
        if not all(p.device.type == mp.device.type == s.device.type and p.device.type in supported
                   for p, mp, s in zip(params, mu_products, state_steps)):
            listed = "params, mu_products, and state_steps" if foreach else "params, mu_products and state_steps"
            raise AssertionError(f"If capturable=True, {listed} must be on supported devices: {supported}.")

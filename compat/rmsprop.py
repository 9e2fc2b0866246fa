"""``compat.RMSprop``: drop-in for ``torch.optim.RMSprop``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _default_to_fused_or_foreach

from functional_optim.rmsprop import RMSPROP, RMSpropHParams, RMSpropStatic, validate

from ._rules import upgrade_state
from .optimizer import FunctionalOptimizer

__all__ = ["RMSprop"]


class RMSprop(FunctionalOptimizer):
    """RMSprop (Tieleman & Hinton, 2012) with torch.optim.RMSprop's API; math in ``functional_optim.rmsprop``.

    See :func:`functional_optim.rmsprop` for the formula. Every argument means what it means in
    ``torch.optim.RMSprop`` (``foreach`` picks the implementation, ``capturable`` keeps ``step`` on
    the device for CUDA graphs, ``differentiable`` lets autograd through ``step``). torch has no
    fused RMSprop, so neither does this class.
    """

    cpu_default_foreach = True
    definition = RMSPROP
    complex_l2_before_real_view = True

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        validate(RMSpropHParams(lr, alpha, eps, weight_decay, momentum))
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        upgrade_state(self, {"momentum": 0, "centered": False, "foreach": None, "maximize": False,
                             "differentiable": False, "capturable": False})

    def _static(self, group: dict) -> RMSpropStatic:
        return RMSpropStatic(centered=group["centered"], has_momentum=bool(group["momentum"] > 0),
                             maximize=group["maximize"], differentiable=group["differentiable"])

    def _gather(self, group: dict) -> tuple[list, list, dict]:
        """As torch's ``_init_group``: a state made before ``momentum`` or ``centered`` was switched
        on in the group lacks the slot, and torch raises ``KeyError`` for it."""
        params, grads, state = super()._gather(group)
        static = self._static(group)
        for key, needed in (("momentum_buffer", static.has_momentum), ("grad_avg", static.centered)):
            if needed and any(v is None for v in state[key]):
                raise KeyError(key)
        return params, grads, state

    def _use_foreach(self, group: dict, params: list) -> bool:
        """torch.optim.rmsprop's rule: the default foreach choice, whatever ``lr``'s type."""
        foreach = group["foreach"]
        if foreach is None:
            _, foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)
        return bool(foreach) or self._cpu_default_foreach(group, params)

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        """torch.optim.rmsprop's per-step checks, in its order (no ``requires_grad`` check on step)."""
        if group["differentiable"] and self._use_foreach(group, params):
            raise AssertionError("_foreach ops don't support autograd")
        self._check_capturable(group, params, state_steps)

    def _loop_group(self, params: list, grads: list, state: dict, hparams: Any, static: Any,
                    host_scalars: bool) -> None:
        """torch's for-loop passes a tensor ``lr`` as ``alpha=``/``value=``, read as a number also
        when capturable or differentiable (only a compiled step keeps it a tensor)."""
        if isinstance(hparams.lr, Tensor) and not torch.compiler.is_compiling():
            hparams = hparams._replace(lr=hparams.lr.item())
        super()._loop_group(params, grads, state, hparams, static, host_scalars)

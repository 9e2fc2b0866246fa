"""``compat.Adadelta``: drop-in for ``torch.optim.Adadelta``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import (
    ParamsT,
    _default_to_fused_or_foreach,
    _get_capturable_supported_devices,
)

from functional_optim import _validate
from functional_optim._kernels.ops import LoopOps
from functional_optim.adadelta import ADADELTA

from ._rules import upgrade_state
from .optimizer import FunctionalOptimizer

__all__ = ["Adadelta"]


class _ComplexParamLoopOps(LoopOps):
    """:class:`LoopOps` whose final update adds a real view's update to a complex parameter as a
    complex number (torch's for-loop Adadelta, see :meth:`Adadelta._loop_kernel`)."""

    def scale_and_add_(self, xs, others, scales, scratch: bool = False):
        others = [torch.view_as_complex(o) if x.is_complex() and not o.is_complex() else o
                  for x, o in zip(xs, others)]
        return super().scale_and_add_(xs, others, scales, scratch)


class Adadelta(FunctionalOptimizer):
    """Adadelta (Zeiler, 2012) with torch.optim.Adadelta's API; math in ``functional_optim.adadelta``.

    See :func:`functional_optim.adadelta` for the formula. Every argument means what it means in
    ``torch.optim.Adadelta`` (``foreach`` picks the implementation, ``capturable`` keeps the step
    on the device for CUDA graphs, ``differentiable`` lets autograd through ``step``). torch has no
    fused Adadelta, so neither does this class.
    """

    cpu_default_foreach = True
    definition = ADADELTA
    complex_l2_before_real_view = True
    capturable_devices = staticmethod(lambda: _get_capturable_supported_devices(supports_xla=False))

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        _validate.check_lr(lr)
        _validate.check_rho(rho)
        _validate.check_eps(eps)
        _validate.check_weight_decay(weight_decay)
        defaults = {
            "lr": lr,
            "rho": rho,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "capturable": capturable,
            "foreach": foreach,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        upgrade_state(self, {"foreach": None, "maximize": False, "differentiable": False, "capturable": False})

    def _use_foreach(self, group: dict, params: list) -> bool:
        """torch.optim.adadelta's rule: the default foreach choice, whatever ``lr``'s type."""
        foreach = group["foreach"]
        if foreach is None:
            _, foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)
        return bool(foreach) or self._cpu_default_foreach(group, params)

    def _loop_kernel(self, ops: LoopOps, params: list, grads: list, state: dict, hparams: Any, static: Any) -> None:
        """torch's for-loop views a complex parameter's gradient and state as real, but adds the
        update to the complex parameter itself (``param.add_(view_as_complex(delta), alpha=-lr)``,
        complex arithmetic: ``lr * delta`` and the sum rounded apart). Its foreach code, and the
        kernel elsewhere, view the parameter as real too. (An L2 term is already in the gradient
        here: :meth:`FunctionalOptimizer._complex_l2_decayed`.)"""
        if not any(p.is_complex() for p in params):
            return super()._loop_kernel(ops, params, grads, state, hparams, static)
        as_real = lambda ts: [torch.view_as_real(t) if t.is_complex() else t for t in ts]  # noqa: E731
        self.definition.kernel(_ComplexParamLoopOps(host_scalars=ops.host_scalars), list(params), as_real(grads),
                               {k: as_real(v) for k, v in state.items()}, hparams, static)

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        """torch.optim.adadelta's per-step checks, in its order (no ``requires_grad`` check on step)."""
        if group["differentiable"] and self._use_foreach(group, params):
            raise AssertionError("_foreach ops don't support autograd")
        self._check_capturable(group, params, state_steps)

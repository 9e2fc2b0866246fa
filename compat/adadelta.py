"""``compat.Adadelta``: drop-in for ``torch.optim.Adadelta``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from torch import Tensor
from torch.optim.optimizer import (
    ParamsT,
    _default_to_fused_or_foreach,
    _get_capturable_supported_devices,
)

from functional_optim import _validate
from functional_optim.adadelta import ADADELTA

from ._rules import upgrade_state
from .optimizer import FunctionalOptimizer

__all__ = ["Adadelta"]


class Adadelta(FunctionalOptimizer):
    """Adadelta (Zeiler, 2012) with torch.optim.Adadelta's API; math in ``functional_optim.adadelta``.

    See :func:`functional_optim.adadelta` for the formula. Every argument means what it means in
    ``torch.optim.Adadelta`` (``foreach`` picks the implementation, ``capturable`` keeps the step
    on the device for CUDA graphs, ``differentiable`` lets autograd through ``step``). torch has no
    fused Adadelta, so neither does this class.
    """

    cpu_default_foreach = True
    definition = ADADELTA
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

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        """torch.optim.adadelta's per-step checks, in its order (no ``requires_grad`` check on step)."""
        if group["differentiable"] and self._use_foreach(group, params):
            raise AssertionError("_foreach ops don't support autograd")
        self._check_capturable(group, params, state_steps)

"""``compat.Adafactor``: drop-in for ``torch.optim.Adafactor``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from functional_optim import _validate
from functional_optim.adafactor import ADAFACTOR

from ._rules import upgrade_state
from .optimizer import FunctionalOptimizer

__all__ = ["Adafactor"]


class Adafactor(FunctionalOptimizer):
    """Adafactor (Shazeer & Stern, 2018) with torch.optim.Adafactor's API; math in
    ``functional_optim.adafactor``.

    See :func:`functional_optim.adafactor` for the formula. Every argument means what it means in
    ``torch.optim.Adafactor``. As in torch, ``foreach=None`` means the for-loop implementation
    (Adafactor is chosen where memory is tight, and foreach needs more of it); torch has no fused,
    capturable or differentiable Adafactor, so neither does this class.
    """

    definition = ADAFACTOR

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        _validate.check_adafactor(lr, beta2_decay, eps, d, weight_decay)
        defaults = {
            "lr": lr,
            "beta2_decay": beta2_decay,
            "eps": eps,
            "d": d,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        upgrade_state(self, {"foreach": None})  # no capturable: the step stays on the CPU

    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        # torch's Adafactor has no ``differentiable``: always no_grad, as torch.optim.Adafactor.step
        return FunctionalOptimizer.step.__wrapped__(self, closure)

    def _use_foreach(self, group: dict, params: list) -> bool:
        return bool(group["foreach"])

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        super()._check_group(group, params, state_steps)
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            raise AssertionError("Grad scaling should occur outside of optimizer.step()")

    def _step_group(self, group: dict, params: list, grads: list, state: dict) -> None:
        eps1, eps2 = group["eps"]
        if eps1 is None:
            # torch resolves eps1 once per group: from the first param (for-loop) or from the
            # first device/dtype group (foreach); the kernel would take each group's own dtype.
            dtype = params[0].dtype
            if self._use_foreach(group, params):
                dtype = next(iter(Optimizer._group_tensors_by_device_and_dtype([params])))[1]
            group = {**group, "eps": (torch.finfo(dtype).eps, eps2)}
        super()._step_group(group, params, grads, state)

"""``compat.Adamax``: a drop-in for ``torch.optim.Adamax``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from torch import Tensor
from torch.optim.optimizer import ParamsT

from functional_optim import _validate
from functional_optim.adamax import ADAMAX

from .optimizer import FunctionalOptimizer
from ._rules import check_step, default_foreach, upgrade_state

__all__ = ["Adamax"]


class Adamax(FunctionalOptimizer):
    """Adamax (Kingma & Ba, 2014) with torch.optim.Adamax's API; math in ``functional_optim.adamax``.

    See :func:`functional_optim.adamax` for the formula. Every argument means what it means in
    ``torch.optim.Adamax`` (``foreach`` picks the implementation, ``capturable`` keeps ``step`` on
    the device for CUDA graphs, ``differentiable`` lets autograd through ``step``). torch has no
    fused Adamax, so neither does this class.
    """

    definition = ADAMAX
    complex_l2_before_real_view = True

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
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
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        upgrade_state(self, {"foreach": None, "maximize": False, "differentiable": False, "capturable": False})

    def _host_scalars(self, group: dict) -> bool:
        # torch's Adamax reads step with .item() also when differentiable (only capturable keeps tensors)
        return not group["capturable"]

    def _use_foreach(self, group: dict, params: list) -> bool:
        return default_foreach(group, params)

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        foreach = self._use_foreach(group, params)
        check_step(group, params, [state_steps], "params and state_steps", foreach, supports_xla=not foreach)


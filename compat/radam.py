"""``compat.RAdam``: a drop-in for ``torch.optim.RAdam``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from torch import Tensor
from torch.optim.optimizer import ParamsT

from functional_optim import _validate
from functional_optim.radam import RADAM

from ._rules import check_step, default_foreach, upgrade_state
from .optimizer import FunctionalOptimizer

__all__ = ["RAdam"]


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

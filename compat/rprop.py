"""``compat.Rprop``: a drop-in for ``torch.optim.Rprop``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from torch import Tensor
from torch.optim.optimizer import ParamsT

from functional_optim import _validate
from functional_optim.rprop import RPROP, check_etas, initial_step_size

from .optimizer import FunctionalOptimizer
from ._rules import check_step, default_foreach, upgrade_state

__all__ = ["Rprop"]


class Rprop(FunctionalOptimizer):
    """Rprop (Riedmiller & Braun, 1993) with torch.optim.Rprop's API; math in ``functional_optim.rprop``.

    See :func:`functional_optim.rprop` for the formula. Every argument means what it means in
    ``torch.optim.Rprop`` (``foreach`` picks the implementation, ``capturable`` keeps ``step`` on the
    device for CUDA graphs, ``differentiable`` lets autograd through ``step``). ``lr`` sets the
    initial step sizes only. torch has no fused Rprop, so neither does this class.
    """

    definition = RPROP

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        _validate.check_lr(lr)
        check_etas(etas)
        defaults = {
            "lr": lr,
            "etas": etas,
            "step_sizes": step_sizes,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        upgrade_state(self, {"foreach": None, "maximize": False, "differentiable": False, "capturable": False})

    def _init_param_state(self, p: Tensor, group: dict) -> dict:
        state = super()._init_param_state(p, group)
        # torch fills the step sizes like the gradient (its strides), not like the parameter
        state["step_size"] = initial_step_size(p.grad, group["lr"])
        return state

    def _step_hparams(self, group: dict):
        """As they are: ``lr`` only sets the initial step sizes, the step never reads it (a tensor
        made from it would be a dead input that Inductor specializes, recompiling at every lr)."""
        return self._hparams(group)

    def _use_foreach(self, group: dict, params: list) -> bool:
        return default_foreach(group, params)

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        check_step(group, params, [state_steps], "params and state_steps", self._use_foreach(group, params),
                   supports_xla=True)

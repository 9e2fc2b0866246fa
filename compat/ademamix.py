"""``compat.AdEMAMix``: ``pytorch_optimizer.AdEMAMix``'s constructor over :func:`functional_optim.ademamix`."""

from __future__ import annotations

from typing import Optional

from torch.optim.optimizer import ParamsT

from functional_optim._moments import check_betas_range, check_non_negative
from functional_optim.ademamix import ademamix

from ._reference import ReferenceLayout, ReferenceOptimizer, check_extra, check_lr

_LAYOUT = ReferenceLayout("ademamix.count", {"ademamix.m1": "exp_avg", "ademamix.nu": "exp_avg_sq",
                                              "ademamix.m2": "exp_avg_slow"})

__all__ = ["AdEMAMix"]


def _translate(group: dict) -> dict:
    b1, b2, b3 = group["betas"]
    return {"lr": group["lr"], "b1": b1, "b2": b2, "b3": b3, "alpha": group["alpha"], "eps": group["eps"],
            "weight_decay": group["weight_decay"]}


class AdEMAMix(ReferenceOptimizer):
    """AdEMAMix (Pagliardini et al., 2024) with ``pytorch_optimizer.AdEMAMix``'s signature and defaults.

    The step is :func:`functional_optim.ademamix` (``scale_by_ademamix`` with
    ``add_decayed_weights`` and ``scale_by_learning_rate``). ``lr``, ``betas`` (three),
    ``alpha``, ``eps`` and ``weight_decay`` may differ per group and change between steps;
    ``t_alpha_beta3``, ``weight_decouple``, ``fixed_decay`` and ``maximize`` are fixed at
    construction; ``foreach`` is accepted and ignored. ``cautious`` / ``stable_adamw`` are refused.
    Complex parameters are not refused (the reference raises); their math is not checked.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999, 0.9999),
                 weight_decay: float = 0.0, weight_decouple: bool = False, fixed_decay: bool = False,
                 alpha: float = 5.0, t_alpha_beta3: Optional[float] = None, eps: float = 1e-8,
                 maximize: bool = False, foreach: Optional[bool] = None, **kwargs) -> None:
        check_lr(lr)
        check_betas_range(betas, ("beta1", "beta2", "beta3"), closed_last=True)
        check_non_negative(alpha, "alpha")
        check_non_negative(t_alpha_beta3, "t_alpha_beta3")
        check_non_negative(weight_decay, "weight_decay")
        check_non_negative(eps, "eps")
        check_extra("AdEMAMix", kwargs)
        self.maximize = maximize
        self.foreach = foreach
        tx = ademamix(lr, betas[0], betas[1], betas[2], alpha, eps, 0.0, weight_decay, t_alpha_beta3=t_alpha_beta3,
                      weight_decouple=weight_decouple, fixed_decay=fixed_decay, maximize=maximize)
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "weight_decouple": weight_decouple,
                    "fixed_decay": fixed_decay, "alpha": alpha, "t_alpha_beta3": t_alpha_beta3, "eps": eps,
                    "foreach": foreach, **kwargs}
        super().__init__(params, tx, defaults, _translate,
                         static_keys=("weight_decouple", "fixed_decay", "t_alpha_beta3"), layout=_LAYOUT)

    def __str__(self) -> str:
        return "AdEMAMix"

"""``compat.AdaBelief``: ``pytorch_optimizer.AdaBelief``'s constructor over :func:`functional_optim.adabelief`."""

from __future__ import annotations

from typing import Optional

from torch.optim.optimizer import ParamsT

from functional_optim._moments import check_betas_range, check_non_negative
from functional_optim.adabelief import adabelief

from ._reference import ReferenceLayout, ReferenceOptimizer, check_extra, check_lr

_LAYOUT = ReferenceLayout("adabelief.count", {"adabelief.mu": "exp_avg", "adabelief.nu": "exp_avg_var",
                                               "adabelief.max_nu": "max_exp_avg_var"})

__all__ = ["AdaBelief"]


def _translate(group: dict) -> dict:
    b1, b2 = group["betas"]
    return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "eps_root": group["eps"],
            "weight_decay": group["weight_decay"]}


class AdaBelief(ReferenceOptimizer):
    """AdaBelief (Zhuang et al., 2020) with ``pytorch_optimizer.AdaBelief``'s signature and defaults.

    The step is :func:`functional_optim.adabelief` (a composition of ``scale_by_belief``,
    ``add_decayed_weights`` and ``scale_by_learning_rate``). ``lr``, ``betas``, ``eps`` and
    ``weight_decay`` may differ per group and change between steps (schedulers); the flags
    (``weight_decouple``, ``fixed_decay``, ``rectify``, ``ams_bound``, ``n_sma_threshold``,
    ``degenerated_to_sgd``, ``maximize``) are fixed at construction. ``foreach`` is accepted and
    ignored (one implementation). Extra keyword arguments that switch on variants
    (``adanorm``, ``adam_debias``) are refused.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999), weight_decay: float = 0.0,
                 weight_decouple: bool = True, fixed_decay: bool = False, rectify: bool = False,
                 n_sma_threshold: int = 5, degenerated_to_sgd: bool = True, ams_bound: bool = False,
                 foreach: Optional[bool] = None, eps: float = 1e-16, maximize: bool = False, **kwargs) -> None:
        check_lr(lr)
        check_betas_range(betas, ("beta1", "beta2"))
        check_non_negative(weight_decay, "weight_decay")
        check_non_negative(eps, "eps")
        check_extra("AdaBelief", kwargs)
        self.n_sma_threshold = n_sma_threshold
        self.degenerated_to_sgd = degenerated_to_sgd
        self.maximize = maximize
        self.foreach = foreach
        tx = adabelief(lr, betas[0], betas[1], eps, eps, weight_decay, weight_decouple=weight_decouple,
                       fixed_decay=fixed_decay, ams_bound=ams_bound, rectify=rectify,
                       n_sma_threshold=n_sma_threshold, degenerated_to_sgd=degenerated_to_sgd, maximize=maximize)
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "weight_decouple": weight_decouple,
                    "fixed_decay": fixed_decay, "rectify": rectify, "ams_bound": ams_bound, "foreach": foreach,
                    "eps": eps, **kwargs}
        super().__init__(params, tx, defaults, _translate,
                         static_keys=("weight_decouple", "fixed_decay", "rectify", "ams_bound"), layout=_LAYOUT)

    def __str__(self) -> str:
        return "AdaBelief"

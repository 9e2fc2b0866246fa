"""``compat.ADOPT``: ``pytorch_optimizer.ADOPT``'s constructor over :func:`functional_optim.adopt`."""

from __future__ import annotations

import math
from typing import Callable, Optional

from torch.optim.optimizer import ParamsT

from functional_optim._moments import check_betas_range, check_non_negative
from functional_optim.adopt import adopt

from ._reference import ReferenceLayout, ReferenceOptimizer, check_extra, check_lr

_LAYOUT = ReferenceLayout("adopt.count", {"adopt.mu": "exp_avg", "adopt.nu": "exp_avg_sq"})

__all__ = ["ADOPT"]


def _default_clip(step: float) -> float:
    return math.pow(step, 0.25)


def _translate(group: dict) -> dict:
    b1, b2 = group["betas"]
    return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "weight_decay": group["weight_decay"]}


class ADOPT(ReferenceOptimizer):
    """ADOPT (Taniguchi et al., 2024) with ``pytorch_optimizer.ADOPT``'s signature and defaults.

    The step is :func:`functional_optim.adopt` (``scale_by_adopt`` between
    ``add_decayed_weights`` and ``scale_by_learning_rate``). ``clip_lambda`` maps the 1-based
    step to the clipping bound (default ``step ** 0.25``; ``None``: no clipping); it is called
    with a 0-d float64 tensor (the default one runs as a tensor op, so a compiled step does not
    recompile as the step grows). ``lr``, ``betas``, ``eps`` and ``weight_decay`` may differ per
    group; ``weight_decouple``/``fixed_decay``/``maximize`` are fixed at construction;
    ``foreach`` is accepted and ignored. ``cautious`` / ``stable_adamw`` are refused.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.9999),
                 clip_lambda: Optional[Callable[[float], float]] = _default_clip, weight_decay: float = 0.0,
                 weight_decouple: bool = False, fixed_decay: bool = False, foreach: Optional[bool] = None,
                 eps: float = 1e-6, maximize: bool = False, **kwargs) -> None:
        check_lr(lr)
        check_betas_range(betas, ("beta1", "beta2"))
        check_non_negative(weight_decay, "weight_decay")
        check_non_negative(eps, "eps")
        check_extra("ADOPT", kwargs)
        self.clip_lambda = clip_lambda
        self.maximize = maximize
        self.foreach = foreach
        tx = adopt(lr, betas[0], betas[1], eps, weight_decay, weight_decouple=weight_decouple,
                   fixed_decay=fixed_decay, use_clipping=clip_lambda is not None,
                   clip_value_fn=None if clip_lambda is _default_clip else clip_lambda, maximize=maximize)
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "weight_decouple": weight_decouple,
                    "fixed_decay": fixed_decay, "foreach": foreach, "eps": eps, **kwargs}
        super().__init__(params, tx, defaults, _translate, static_keys=("weight_decouple", "fixed_decay"),
                         layout=_LAYOUT)

    def __str__(self) -> str:
        return "ADOPT"

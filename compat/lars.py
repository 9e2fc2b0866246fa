"""``compat.Lars``: ``pytorch_optimizer.LARS``'s constructor over a composition of building blocks."""

from __future__ import annotations

from typing import Optional

from torch.optim.optimizer import ParamsT

from functional_optim._moments import check_non_negative
from functional_optim.base import GradientTransformation
from functional_optim.combine import by_name, masked, named_chain
from functional_optim.scaling import scale_by_trust_ratio
from functional_optim.transforms import flip_sign, scale, scale_by_learning_rate, trace

from ._reference import ReferenceOptimizer, check_extra, check_lr

__all__ = ["Lars", "pytorch_optimizer_lars"]

#: the leaves pytorch_optimizer's LARS scales and decays: matrices and higher
MATRICES = by_name(lambda name, p: p.ndim > 1)


def pytorch_optimizer_lars(lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.9,
                           dampening: float = 0.0, trust_coefficient: float = 1e-3, *, nesterov: bool = False,
                           maximize: bool = False) -> GradientTransformation:
    """``pytorch_optimizer.LARS``'s step as a composition (a ``named_chain``)::

        [maximize: flip_sign]
        trust_ratio: masked(scale_by_trust_ratio(trust_coefficient=tc, weight_decay=wd), ndim > 1)
                     -> tc ||p|| / (||g|| + wd ||p||) * (g + wd p)   (ratio 1 where ||p|| = 0 or the denominator is 0)
        [momentum > 0: dampening: scale(1 - dampening); momentum: trace(momentum, nesterov)]
        lr:          scale_by_learning_rate(lr)

    The paper's Algorithm 1 (You et al., 2017, https://arxiv.org/abs/1708.03888) on matrices;
    vectors and scalars take a plain SGD-momentum step without decay.
    """
    if nesterov and dampening != 0.0:
        raise ValueError("Lars: nesterov with dampening > 0 is not reproduced (pytorch_optimizer adds the "
                         "undampened gradient to the dampened buffer)")
    parts: list = [("maximize", flip_sign())] if maximize else []
    parts.append(("trust_ratio", masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient,
                                                             weight_decay=weight_decay), MATRICES)))
    if momentum > 0.0:
        parts += [("dampening", scale(1.0 - dampening)), ("momentum", trace(momentum, nesterov))]
    parts.append(("lr", scale_by_learning_rate(lr)))
    return named_chain(*parts)


def _check_range(x: float, name: str) -> None:
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be in the range [0.0, 1.0]")


class Lars(ReferenceOptimizer):
    """LARS (You et al., 2017, https://arxiv.org/abs/1708.03888) with ``pytorch_optimizer.LARS``'s
    signature and defaults, stepping with :func:`pytorch_optimizer_lars` (``masked``
    ``scale_by_trust_ratio`` in the paper's form, ``scale``, ``trace``, ``scale_by_learning_rate``).

    Equal to pytorch_optimizer step by step: on parameters with ``ndim > 1`` the gradient becomes
    ``(g + wd p) * tc ||p|| / (||g|| + wd ||p||)`` (ratio 1 where ``||p|| = 0`` or the denominator
    is 0); vectors and scalars are neither decayed nor scaled; then ``buf <- momentum buf +
    (1 - dampening) g`` and the step ``-lr * buf`` (Nesterov: ``-lr (g + momentum buf)``).

    Differences: ``.grad`` is never modified (pytorch_optimizer rescales it in place); the
    momentum buffer is stored as ``"momentum.trace"`` (not ``"momentum_buffer"``), so state dicts
    do not cross-load with the reference's; ``nesterov=True`` with ``dampening > 0`` is refused;
    whether there is a momentum buffer is decided by the constructor's ``momentum`` (> 0) for
    all groups. ``foreach`` is accepted and ignored. ``lr``, ``weight_decay``, ``momentum``,
    ``dampening`` and ``trust_coefficient`` may differ per group and change between steps.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.9,
                 dampening: float = 0.0, trust_coefficient: float = 1e-3, nesterov: bool = False,
                 foreach: Optional[bool] = None, maximize: bool = False, **kwargs) -> None:
        check_lr(lr)
        check_non_negative(weight_decay, "weight_decay")
        _check_range(momentum, "momentum")
        _check_range(dampening, "dampening")
        check_non_negative(trust_coefficient, "trust_coefficient")
        check_extra("Lars", kwargs)
        self.foreach = foreach
        self.maximize = maximize
        self._momentum = momentum > 0.0
        tx = pytorch_optimizer_lars(lr, weight_decay, momentum, dampening, trust_coefficient, nesterov=nesterov,
                                    maximize=maximize)
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "dampening": dampening,
                    "trust_coefficient": trust_coefficient, "nesterov": nesterov, "foreach": foreach}
        super().__init__(params, tx, defaults, self._translate, static_keys=("nesterov",))

    def __str__(self) -> str:
        return "Lars"

    def _translate(self, group: dict) -> dict:
        values = {"lr": group["lr"], "trust_ratio.weight_decay": group["weight_decay"],
                  "trust_ratio.trust_coefficient": group["trust_coefficient"]}
        if self._momentum:
            values["dampening.step_size"] = 1.0 - group["dampening"]
            values["momentum.decay"] = group["momentum"]
        return values

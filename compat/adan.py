"""``compat.Adan``: ``pytorch_optimizer.Adan``'s constructor over :func:`functional_optim.adan`."""

from __future__ import annotations

from typing import Callable, Optional

from torch.optim.optimizer import ParamsT

from functional_optim._moments import check_betas_range, check_non_negative
from functional_optim.adan import ClipByGlobalNormAdanHParams, adan, clip_by_global_norm_adan

import torch

from ._reference import ReferenceLayout, ReferenceOptimizer, check_extra, check_lr

# pytorch_optimizer keeps the negated previous gradient and has state only for parameters that had one
_LAYOUT = ReferenceLayout(
    "adan.count",
    {"adan.m": "exp_avg", "adan.v": "exp_avg_diff", "adan.n": "exp_avg_sq", "adan.prev_grad": "previous_grad"},
    to_ref={"adan.prev_grad": torch.neg},
    from_ref={"adan.prev_grad": torch.neg},
    derived={"adan.has_prev": lambda p, has_state: torch.tensor(has_state, device=p.device)},
    keep=lambda state: bool(state["adan.has_prev"]),
)

__all__ = ["Adan"]


class Adan(ReferenceOptimizer):
    """Adan (Xie et al., 2022) with ``pytorch_optimizer.Adan``'s signature and defaults.

    The step is :func:`functional_optim.adan` (``scale_by_adan`` with the proximal or decoupled
    weight decay, after ``clip_by_global_norm_adan`` when ``max_grad_norm > 0``). ``lr``,
    ``betas`` (three), ``eps`` and ``weight_decay`` may differ per group; ``weight_decouple``,
    ``max_grad_norm`` and ``maximize`` are fixed at construction; ``foreach`` is accepted and
    ignored; ``use_gc`` / ``adanorm`` are refused. With ``max_grad_norm > 0`` one norm is taken over
    the gradients of all param groups (with the constructor's ``max_grad_norm`` and ``eps``, as
    the reference); unlike the reference, the caller's ``.grad`` tensors are not scaled in place.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.98, 0.92, 0.99),
                 weight_decay: float = 0.0, weight_decouple: bool = False, max_grad_norm: float = 0.0,
                 foreach: Optional[bool] = None, eps: float = 1e-8, maximize: bool = False, **kwargs) -> None:
        check_lr(lr)
        check_betas_range(betas, ("beta1", "beta2", "beta3"), closed_last=True)
        check_non_negative(weight_decay, "weight_decay")
        check_non_negative(max_grad_norm, "max_grad_norm")
        check_non_negative(eps, "eps")
        check_extra("Adan", kwargs)
        self.max_grad_norm = max_grad_norm
        self._clip = clip_by_global_norm_adan(max_grad_norm, eps)
        self.maximize = maximize
        self.foreach = foreach
        # the gradient clip spans all param groups (one norm, as the reference): done in step()
        tx = adan(lr, betas[0], betas[1], betas[2], eps, 0.0, weight_decay, weight_decouple=weight_decouple,
                  maximize=maximize)

        def translate(group: dict) -> dict:
            b1, b2, b3 = group["betas"]
            return {"lr": group["lr"], "b1": b1, "b2": b2, "b3": b3, "eps": group["eps"],
                    "weight_decay": group["weight_decay"]}

        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "weight_decouple": weight_decouple,
                    "max_grad_norm": max_grad_norm, "foreach": foreach, "eps": eps, **kwargs}
        super().__init__(params, tx, defaults, translate, static_keys=("weight_decouple", "max_grad_norm"),
                         layout=_LAYOUT)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.max_grad_norm <= 0.0:
            self._step_groups()
            return loss
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            self._step_groups()
            return loss
        # pytorch_optimizer's factor: min(1, max_norm / (sqrt(sum of squared norms, float32) + eps))
        tree = {"g": grads}
        hp = ClipByGlobalNormAdanHParams(self.max_grad_norm, self.defaults["eps"])
        scaled = self._clip.update(tree, self._clip.init(tree), None, hp)[0]["g"]
        originals = [(p, p.grad) for group in self.param_groups for p in group["params"] if p.grad is not None]
        try:
            for (p, _), g in zip(originals, scaled):
                p.grad = g  # a new tensor: the caller's gradient is left as it was (the reference scales it in place)
            self._step_groups()
        finally:
            for p, g in originals:
                p.grad = g
        return loss

    def __str__(self) -> str:
        return "Adan"

"""``compat.Lamb``: ``pytorch_optimizer.Lamb``'s constructor over a composition of building blocks."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import torch
from torch.optim.optimizer import ParamsT

from functional_optim._moments import check_betas_range, check_non_negative
from functional_optim.base import GradientTransformation
from functional_optim.combine import map_updates, named_chain
from functional_optim.scaling import scale_by_adam, scale_by_trust_ratio
from functional_optim.transforms import add_decayed_weights, flip_sign, scale, scale_by_learning_rate

from ._reference import ReferenceOptimizer, check_extra, check_lr
from .optimizer import traceable_float

__all__ = ["Lamb", "pytorch_optimizer_lamb"]

#: pytorch_optimizer.Lamb.clamp: the parameter norm in the trust ratio is clamped to at most this
PARAM_NORM_CLAMP = 10.0


class ParamScaleHParams(NamedTuple):
    param_scale: Any = 1.0


def _on_scaled_params(inner: GradientTransformation) -> GradientTransformation:
    """``inner`` seeing ``param_scale * params`` (pytorch_optimizer's decoupled decay shrinks the
    parameters before the trust ratio reads their norm). hparams: ``(ParamScaleHParams, inner's)``."""
    defaults = (ParamScaleHParams(), inner.hparams)

    def update(updates, state, params=None, hparams=None):
        own, inner_hp = defaults if hparams is None else hparams
        factor = own.param_scale
        if params is not None and not (isinstance(factor, (int, float)) and factor == 1.0):
            params = map_updates(lambda p: p * factor if not isinstance(factor, torch.Tensor)
                                 else p * factor.to(p.dtype), params)
        return inner.update(updates, state, params, inner_hp)

    return GradientTransformation(inner.init, update, defaults)


def pytorch_optimizer_lamb(lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                           weight_decay: float = 0.0, *, weight_decouple: bool = True, fixed_decay: bool = False,
                           grad_averaging: bool = True, adam: bool = False, maximize: bool = False,
                           pre_norm: bool = False) -> GradientTransformation:
    """``pytorch_optimizer.Lamb``'s step as a composition (a ``named_chain``)::

        [pre_norm: scale(c)]  [maximize: flip_sign]
        adam:         scale_by_adam(b1, b2, eps, bias_correction=False)      m / (sqrt(v) + eps)
        [grad_averaging=False: scale(1 / (1 - b1))]                          m without the (1 - b1)
        [weight_decouple=False: l2: add_decayed_weights(wd)]                 + wd p
        [adam=False: trust_ratio: scale_by_trust_ratio(eps=eps, max_param_norm=10)
                     seeing the decoupled-decayed parameters (1 - lr wd) p]
        debias:       scale(1 / (1 - b1^t))                                  pytorch_optimizer's step_size / lr
        [weight_decouple: decay: add_decayed_weights(wd)]
        lr:           scale_by_learning_rate(lr)

    (``fixed_decay``: the decay after an unflipped lr, then ``flip_sign``.) The hparams that
    change every step (``debias.step_size``, the pre-norm factor, ``(1 - lr wd)``) are given by
    ``compat.Lamb`` at each step from its group's ``step``; with this function alone, pass them
    yourself (``replace_hparams(tx.hparams, {"debias.step_size": 1 / (1 - b1 ** t)})``).
    """
    parts: list = []
    if pre_norm:
        parts.append(("pre_norm", scale(1.0)))
    if maximize:
        parts.append(("maximize", flip_sign()))
    parts.append(("adam", scale_by_adam(b1, b2, eps, bias_correction=False)))
    if not grad_averaging:
        parts.append(("grad_averaging", scale(1.0 / (1.0 - b1))))
    if not weight_decouple:
        parts.append(("l2", add_decayed_weights(weight_decay)))
    if not adam:
        ratio = scale_by_trust_ratio(eps=eps, max_param_norm=PARAM_NORM_CLAMP)
        parts.append(("trust_ratio", _on_scaled_params(ratio) if weight_decouple else ratio))
    parts.append(("debias", scale(1.0)))
    if weight_decouple and not fixed_decay:
        parts += [("decay", add_decayed_weights(weight_decay)), ("lr", scale_by_learning_rate(lr))]
    elif weight_decouple:
        parts += [("lr", scale_by_learning_rate(lr, flip_sign=False)), ("decay", add_decayed_weights(weight_decay)),
                  ("flip", flip_sign())]
    else:
        parts.append(("lr", scale_by_learning_rate(lr)))
    return named_chain(*parts)


class Lamb(ReferenceOptimizer):
    """LAMB (You et al., 2019, https://arxiv.org/abs/1904.00962) with ``pytorch_optimizer.Lamb``'s
    signature and defaults, stepping with :func:`pytorch_optimizer_lamb` (a composition of
    ``scale_by_adam``, ``scale_by_trust_ratio``, ``add_decayed_weights``, ``scale`` and
    ``scale_by_learning_rate``).

    What it computes is pytorch_optimizer's, step by step: moments without bias correction
    (``exp_avg`` scaled by ``1 - b1`` unless ``grad_averaging=False``), the update
    ``m / (sqrt(v) + eps)`` (``+ wd p`` with ``weight_decouple=False``), the trust ratio
    ``min(||p'||, 10) / (||update|| + eps)`` (1 where a norm is 0; ``p'`` the parameter after the
    decoupled decay ``(1 - lr wd) p``; ratio 1 with ``adam=True``), and the step
    ``lr / (1 - b1^t)`` times ratio times update, ``t`` the group's ``step`` (kept in the group,
    as pytorch_optimizer, and advanced at every ``step()`` for every group). ``pre_norm``
    scales all gradients by ``min(1, max_grad_norm / (||g||_global + eps))`` computed over every
    group in float32, as pytorch_optimizer (which uses the constructor's ``max_grad_norm`` and
    ``eps``).

    Differences: ``.grad`` is never modified (pytorch_optimizer negates/rescales it in place
    for ``maximize``/``pre_norm``); the state holds the moments under ``"adam.mu"`` /
    ``"adam.nu"`` (not ``exp_avg``/``exp_avg_sq``, no ``weight_norm``/``adam_norm``/
    ``trust_ratio`` diagnostics), so its state dicts do not cross-load with the reference's.
    Not reproduced (refused with ``ValueError``): ``rectify=True`` (its RAdam-style update),
    ``adanorm``, ``adam_debias`` and other extra keys. ``foreach`` is accepted and ignored.
    ``lr``, ``betas``, ``eps`` and ``weight_decay`` may differ per group and change between
    steps; ``weight_decouple``, ``fixed_decay``, ``grad_averaging``, ``adam`` are fixed.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple = (0.9, 0.999), weight_decay: float = 0.0,
                 weight_decouple: bool = True, fixed_decay: bool = False, rectify: bool = False,
                 degenerated_to_sgd: bool = False, n_sma_threshold: int = 5, grad_averaging: bool = True,
                 max_grad_norm: float = 1.0, adam: bool = False, pre_norm: bool = False, eps: float = 1e-6,
                 foreach: Optional[bool] = None, maximize: bool = False, **kwargs) -> None:
        check_lr(lr)
        check_betas_range(betas, ("beta1", "beta2"))
        check_non_negative(weight_decay, "weight_decay")
        check_non_negative(max_grad_norm, "max_grad_norm")
        check_non_negative(eps, "eps")
        if rectify:
            raise ValueError("Lamb: rectify=True is not supported by this compat class")
        check_extra("Lamb", kwargs)
        self.degenerated_to_sgd = degenerated_to_sgd
        self.n_sma_threshold = n_sma_threshold
        self.pre_norm = pre_norm
        self.foreach = foreach
        self.maximize = maximize
        self._flags = dict(weight_decouple=weight_decouple, fixed_decay=fixed_decay, grad_averaging=grad_averaging,
                           adam=adam, pre_norm=pre_norm)
        tx = pytorch_optimizer_lamb(lr, betas[0], betas[1], eps, weight_decay, maximize=maximize, **self._flags)
        self._pre_norm_factor: Any = 1.0
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "weight_decouple": weight_decouple,
                    "fixed_decay": fixed_decay, "rectify": rectify, "grad_averaging": grad_averaging,
                    "max_grad_norm": max_grad_norm, "adam": adam, "eps": eps, "foreach": foreach, **kwargs}
        super().__init__(params, tx, defaults, self._translate,
                         static_keys=("weight_decouple", "fixed_decay", "rectify", "grad_averaging", "adam"))

    def __str__(self) -> str:
        return "Lamb"

    def _translate(self, group: dict) -> dict:
        b1, b2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        flags = self._flags
        values = {"lr": lr, "adam.b1": b1, "adam.b2": b2, "adam.eps": eps,
                  "debias.step_size": _debias_step_size(b1, group["step"])}
        if flags["pre_norm"]:
            values["pre_norm.step_size"] = self._pre_norm_factor
        if not flags["grad_averaging"]:
            values["grad_averaging.step_size"] = 1.0 / (1.0 - b1)
        if not flags["weight_decouple"]:
            values["l2.weight_decay"] = wd
        else:
            values["decay.weight_decay"] = wd
        if not flags["adam"]:
            values["trust_ratio.eps"] = eps
            if flags["weight_decouple"]:
                values["trust_ratio.param_scale"] = 1.0 - wd * (1.0 if flags["fixed_decay"] else lr)
        return values

    @torch.no_grad()
    def _global_factor(self) -> Any:
        """pytorch_optimizer's ``get_global_gradient_norm`` factor (a 0-d float32 tensor, or 1.0)."""
        if self.defaults["max_grad_norm"] == 0.0:
            return 1.0
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            norm_sq = torch.zeros((), dtype=torch.float32)
        else:
            device = grads[0].device
            norm_sq = torch.stack([g.norm().to(device) for g in grads]).float().square().sum()
        return torch.clamp(self.defaults["max_grad_norm"] / (norm_sq.sqrt() + self.defaults["eps"]), max=1.0)

    def step(self, closure=None):
        """Perform a single optimization step (every group's ``step`` advances, as pytorch_optimizer)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.pre_norm:
            self._pre_norm_factor = self._global_factor()
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
        super().step()
        return loss


def _debias_step_size(beta1: float, step: int) -> Any:
    """``1 / (1 - beta1^step)``, pytorch_optimizer's bias correction of the first moment.

    Eagerly with ``math.pow`` on the host, as pytorch_optimizer computes it. Under torch.compile
    the group's ``step`` count changes at every call: ``math.pow`` would specialize it, one graph
    per step (measured: 10 graphs in 8 steps), so it enters as a float64 0-d tensor
    (:func:`~compat.optimizer.traceable_float`), which Dynamo keeps symbolic after its first change.
    """
    if torch.compiler.is_compiling():
        return 1.0 / (1.0 - beta1 ** traceable_float(step))
    return 1.0 / (1.0 - math.pow(beta1, step))

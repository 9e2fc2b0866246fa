"""AdEMAMix: ``scale_by_ademamix`` (optax's building block) and the ``ademamix`` alias.

Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older" (2024),
https://arxiv.org/abs/2409.03137. Reference implementation for the numbers:
``pytorch_optimizer.AdEMAMix`` (tests compare step by step).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _validate
from ._moments import (
    addcmul,
    as_float64,
    bias_correction,
    check_betas_range,
    check_non_negative,
    decayed_chain,
    leafwise,
    lerp,
    log_,
    mul,
    zero_count,
)
from .base import GradientTransformation
from .combine import map_updates
from .transforms import _like
from .tree import check_counters, check_state_like, check_state_type

Number = Union[float, Tensor]

__all__ = ["ScaleByAdemamixHParams", "ScaleByAdemamixState", "scale_by_ademamix", "ademamix"]


class ScaleByAdemamixHParams(NamedTuple):
    """``b1``: fast EMA decay; ``b2``: second-moment decay; ``b3``: slow EMA decay; ``alpha``:
    weight of the slow EMA; ``eps`` / ``eps_root``: outside / inside the square root."""

    b1: Number = 0.9
    b2: Number = 0.999
    b3: Number = 0.9999
    alpha: Number = 5.0
    eps: Number = 1e-8
    eps_root: Number = 0.0


class ScaleByAdemamixState(NamedTuple):
    """``count``: updates so far (0-d int32, shared by the leaves); ``m1`` / ``m2``: fast / slow
    EMAs of the gradients; ``nu``: EMA of the squared gradients."""

    count: Tensor
    m1: Any
    m2: Any
    nu: Any


def scale_by_ademamix(b1: Number = 0.9, b2: Number = 0.999, b3: Number = 0.9999, alpha: Number = 5.0,
                      eps: Number = 1e-8, eps_root: Number = 0.0, *,
                      t_alpha_beta3: Optional[float] = None) -> GradientTransformation:
    r"""Rescale updates by the AdEMAMix algorithm (optax's ``scale_by_ademamix``).

    .. math::
        m^{(1)}_t = \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t, \quad
        m^{(2)}_t = \beta_3(t) m^{(2)}_{t-1} + (1-\beta_3(t)) g_t, \quad
        \nu_t = \beta_2 \nu_{t-1} + (1-\beta_2) g_t^2, \\
        u_t = \frac{m^{(1)}_t / (1-\beta_1^t) + \alpha(t)\, m^{(2)}_t}
                   {\sqrt{\nu_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    The slow EMA is not bias-corrected (it fills slowly on purpose). Pagliardini et al. (2024),
    https://arxiv.org/abs/2409.03137.

    ``t_alpha_beta3`` (``None``: constants) is the paper's warmup, as ``pytorch_optimizer``:
    :math:`\alpha(t) = \min(t\alpha/T, \alpha)` and
    :math:`\beta_3(t) = \min\big(\exp\frac{\ln\beta_1 \ln\beta_3}{(1-t/T)\ln\beta_3 + (t/T)\ln\beta_1}, \beta_3\big)`,
    computed from the step count in float64 tensors (no recompiles). optax takes schedules
    (functions of its count) for ``b3`` and ``alpha`` instead; this library's hparams are numbers
    or 0-d tensors, so the warmup is this fixed option. The denominator is written
    :math:`\sqrt{\nu_t + \epsilon_{root}(1-\beta_2^t)} / \sqrt{1-\beta_2^t}`, the same value as
    optax's and, with ``eps_root=0``, the reference's rounding. Default ``alpha`` is 5 (optax's
    ``scale_by_ademamix`` default is 6, its ``ademamix`` alias's 5).

    The count is shared by all leaves (``pytorch_optimizer`` counts per param group).

    Example::

        tx = fo.chain(fo.scale_by_ademamix(), fo.scale_by_learning_rate(1e-3))
    """
    defaults = _validate.scalar_hparams(ScaleByAdemamixHParams(b1, b2, b3, alpha, eps, eps_root), "scale_by_ademamix")
    check_betas_range((b1, b2, b3), ("beta1", "beta2", "beta3"), closed_last=True)
    check_non_negative(alpha, "alpha")
    check_non_negative(t_alpha_beta3, "t_alpha_beta3")
    check_non_negative(eps, "eps")
    check_non_negative(eps_root, "eps_root")
    warmup = None if t_alpha_beta3 is None else float(t_alpha_beta3)

    def init(params):
        return ScaleByAdemamixState(zero_count(params), map_updates(torch.zeros_like, params),
                                    map_updates(torch.zeros_like, params), map_updates(torch.zeros_like, params))

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("scale_by_ademamix", defaults, hparams)
        check_state_type(state, ScaleByAdemamixState, "scale_by_ademamix")
        check_counters("scale_by_ademamix", state, ("count",))
        for field in ("m1", "m2", "nu"):
            check_state_like(updates, getattr(state, field), f"scale_by_ademamix: state.{field}")
        count = state.count + 1
        t = as_float64(count)
        bc1 = bias_correction(hp.b1, t)
        bc2 = bias_correction(hp.b2, t)
        bc2_sqrt = torch.sqrt(bc2)
        if warmup is None:
            alpha_t, b3_t = hp.alpha, hp.b3
        else:
            frac = t / warmup
            alpha_t = torch.minimum(t * hp.alpha / warmup, torch.as_tensor(hp.alpha, dtype=torch.float64))
            log_b1, log_b3 = log_(hp.b1), log_(hp.b3)
            b3_t = torch.minimum(torch.exp(log_b1 * log_b3 / ((1.0 - frac) * log_b3 + frac * log_b1)),
                                 torch.as_tensor(hp.b3, dtype=torch.float64))

        def leaf(g, m1, m2, v):
            m1 = lerp(m1, g, 1.0 - hp.b1)
            v = addcmul(mul(v, hp.b2), g, g, 1.0 - hp.b2)
            m2 = lerp(m2, g, 1.0 - b3_t)
            if isinstance(hp.eps_root, Tensor) or hp.eps_root != 0.0:
                root = torch.sqrt(v + _like(hp.eps_root * bc2, v))
            else:
                root = torch.sqrt(v)
            denom = root / _like(bc2_sqrt, root) + _like(hp.eps, root)
            num = m1 / _like(bc1, m1) + mul(m2, alpha_t)
            return num / denom, m1, m2, v

        out, m1, m2, nu = leafwise(leaf, updates, state.m1, state.m2, state.nu, n_out=4)
        return out, ScaleByAdemamixState(count, m1, m2, nu)

    return GradientTransformation(init, update, defaults)


def ademamix(lr: Number = 1e-3, b1: Number = 0.9, b2: Number = 0.999, b3: Number = 0.9999, alpha: Number = 5.0,
             eps: Number = 1e-8, eps_root: Number = 0.0, weight_decay: Number = 0.0, *,
             t_alpha_beta3: Optional[float] = None, weight_decouple: bool = False, fixed_decay: bool = False,
             maximize: bool = False, mask: Any = None) -> GradientTransformation:
    """AdEMAMix as a composition (defaults and flags of ``pytorch_optimizer.AdEMAMix``).

    ``named_chain(("decay", add_decayed_weights(weight_decay)), ("ademamix",
    scale_by_ademamix(...)), ("lr", scale_by_learning_rate(lr)))`` with the default
    ``weight_decouple=False`` (L2 decay added to the gradient, as ``pytorch_optimizer``);
    ``weight_decouple=True`` is the paper's AdamW-style decay (optax's ``ademamix``),
    ``fixed_decay=True`` without the ``lr`` factor; ``maximize`` flips the gradient first.

    Equal to ``pytorch_optimizer.AdEMAMix`` step by step up to rounding (the learning rate
    multiplies the update instead of entering ``addcdiv``).

    Example::

        opt = fo.ademamix(lr=1e-3, t_alpha_beta3=10_000)
    """
    _validate.check_lr(lr)
    check_non_negative(weight_decay, "weight_decay")
    block = scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, t_alpha_beta3=t_alpha_beta3)
    return decayed_chain("ademamix", block, lr, weight_decay, weight_decouple=weight_decouple,
                         fixed_decay=fixed_decay, maximize=maximize, mask=mask)

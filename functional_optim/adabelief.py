"""AdaBelief: ``scale_by_belief`` (optax's building block) and the ``adabelief`` alias.

Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients"
(NeurIPS 2020), https://arxiv.org/abs/2010.07468. Reference implementation for the numbers:
``pytorch_optimizer.AdaBelief`` (tests compare step by step).
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
    mul,
    pow_,
    zero_count,
)
from .base import GradientTransformation
from .combine import map_updates
from .transforms import _like
from .tree import EMPTY, Empty, check_counters, check_state_like, check_state_type

Number = Union[float, Tensor]

__all__ = ["ScaleByBeliefHParams", "ScaleByBeliefState", "scale_by_belief", "adabelief"]


class ScaleByBeliefHParams(NamedTuple):
    """``b1``, ``b2``: decays of the mean and of the prediction-error variance; ``eps``: added to
    the denominator; ``eps_root``: added to the variance at every step (kept in the state)."""

    b1: Number = 0.9
    b2: Number = 0.999
    eps: Number = 1e-16
    eps_root: Number = 1e-16


class ScaleByBeliefState(NamedTuple):
    """``count``: updates so far (0-d int32, shared by the leaves); ``mu``: EMA of the gradients;
    ``nu``: EMA of the squared prediction error ``(g - mu)^2`` (plus ``eps_root`` each step);
    ``max_nu``: running maximum of ``nu`` with ``ams_bound``, else :data:`~functional_optim.EMPTY`
    (an empty node: no leaves for vmap, checkpoints or ``state_dict``)."""

    count: Tensor
    mu: Any
    nu: Any
    max_nu: Any = EMPTY


def scale_by_belief(b1: Number = 0.9, b2: Number = 0.999, eps: Number = 1e-16, eps_root: Number = 1e-16, *,
                    nesterov: bool = False, ams_bound: bool = False, rectify: bool = False, n_sma_threshold: int = 5,
                    degenerated_to_sgd: bool = True) -> GradientTransformation:
    r"""Rescale updates by the AdaBelief algorithm (optax's ``scale_by_belief``).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root}, \\
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{s_t} / \sqrt{1-\beta_2^t} + \epsilon}

    Zhuang et al. (2020), https://arxiv.org/abs/2010.07468. With ``eps == eps_root`` this is
    ``pytorch_optimizer.AdaBelief``'s scaling (which uses its single ``eps`` in both places).

    ``nesterov`` (as optax): the numerator is
    :math:`\beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)` instead of
    :math:`m_t/(1-\beta_1^t)` (not in ``pytorch_optimizer``).

    Options beyond optax (``pytorch_optimizer``'s flags; fixed at construction):

    * ``ams_bound``: the denominator uses the running maximum of ``s_t`` (state ``max_nu``);
    * ``rectify``: RAdam's rectification (Liu et al., 2019): with
      :math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)`, the update is
      :math:`r_t\, \hat m_t / (\sqrt{s_t} + \epsilon)` when :math:`\rho_t \ge` ``n_sma_threshold``
      (the variance correction then sits in :math:`r_t`), else :math:`\hat m_t` with
      ``degenerated_to_sgd`` or zero without. The choice is a ``torch.where`` on the step count.

    The count is shared by all leaves (as optax; ``pytorch_optimizer`` counts per param group):
    a leaf without a gradient keeps its moments, but the count still advances.

    Example::

        tx = fo.chain(fo.scale_by_belief(), fo.scale_by_learning_rate(1e-3))
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
    """
    defaults = _validate.scalar_hparams(ScaleByBeliefHParams(b1, b2, eps, eps_root), "scale_by_belief")
    check_betas_range((b1, b2), ("beta1", "beta2"))
    check_non_negative(eps, "eps")
    check_non_negative(eps_root, "eps_root")
    threshold = float(n_sma_threshold)

    def init(params):
        zeros = map_updates(torch.zeros_like, params)
        return ScaleByBeliefState(zero_count(params), zeros, map_updates(torch.zeros_like, params),
                                  map_updates(torch.zeros_like, params) if ams_bound else EMPTY)

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("scale_by_belief", defaults, hparams)
        check_state_type(state, ScaleByBeliefState, "scale_by_belief")
        check_counters("scale_by_belief", state, ("count",))
        check_state_like(updates, state.mu, "scale_by_belief: state.mu")
        check_state_like(updates, state.nu, "scale_by_belief: state.nu")
        if ams_bound:
            check_state_like(updates, state.max_nu, "scale_by_belief: state.max_nu")
        elif not isinstance(state.max_nu, Empty):
            raise ValueError("scale_by_belief: state.max_nu must be EMPTY without ams_bound")
        count = state.count + 1
        t = as_float64(count)
        inv_bc1 = 1.0 / bias_correction(hp.b1, t)
        inv_bc1_next = 1.0 / bias_correction(hp.b1, t + 1) if nesterov else None
        bc2_sqrt = torch.sqrt(bias_correction(hp.b2, t))
        tractable = adaptive_scale = sgd_scale = rt = None  # set with rectify (a closure cell must exist for dynamo)
        if rectify:
            b2t = pow_(hp.b2, t)
            sma_max = 2.0 / (1.0 - hp.b2) - 1.0
            sma = sma_max - 2 * t * b2t / (1.0 - b2t)
            tractable = sma >= threshold
            arg = (1.0 - b2t) * (sma - 4) / (sma_max - 4) * (sma - 2) / sma * sma_max / (sma_max - 2)
            rt = torch.sqrt(torch.where(tractable, arg, torch.ones_like(arg)))
            adaptive_scale = rt * inv_bc1
            sgd_scale = inv_bc1 if degenerated_to_sgd else torch.zeros_like(inv_bc1)

        def leaf(g, m, v, vmax):
            m = lerp(m, g, 1.0 - hp.b1)
            r = g - m
            v = addcmul(mul(v, hp.b2), r, r, 1.0 - hp.b2) + _like(hp.eps_root, g)
            if ams_bound:
                vmax = torch.maximum(vmax, v)
            root = torch.sqrt(vmax if ams_bound else v)
            if nesterov:  # the bias-corrected numerator, and the scales without 1/bc1
                num = mul(m, hp.b1 * inv_bc1_next) + mul(g, (1.0 - hp.b1) * inv_bc1)
                scale, adaptive, sgd = 1.0, rt, (1.0 if degenerated_to_sgd else 0.0)
            else:
                num, scale, adaptive, sgd = m, inv_bc1, adaptive_scale, sgd_scale
            if not rectify:
                u = mul(num, scale) / (root / _like(bc2_sqrt, root) + _like(hp.eps, root))
            else:
                u_adaptive = num * _like(adaptive, num) / (root + _like(hp.eps, root))
                u = torch.where(tractable, u_adaptive, num * _like(sgd, num))
            return u, m, v, vmax

        max_nu = state.max_nu if ams_bound else map_updates(lambda u: None, updates)
        out, mu, nu, new_max = leafwise(leaf, updates, state.mu, state.nu, max_nu, n_out=4)
        return out, ScaleByBeliefState(count, mu, nu, new_max if ams_bound else EMPTY)

    return GradientTransformation(init, update, defaults)


def adabelief(lr: Number = 1e-3, b1: Number = 0.9, b2: Number = 0.999, eps: Number = 1e-16,
              eps_root: Optional[Number] = None, weight_decay: Number = 0.0, *, nesterov: bool = False,
              weight_decouple: bool = True,
              fixed_decay: bool = False, ams_bound: bool = False, rectify: bool = False, n_sma_threshold: int = 5,
              degenerated_to_sgd: bool = True, maximize: bool = False, mask: Any = None) -> GradientTransformation:
    """AdaBelief as a composition (defaults and flags of ``pytorch_optimizer.AdaBelief``).

    ``named_chain(("adabelief", scale_by_belief(b1, b2, eps, eps_root)), ("decay",
    add_decayed_weights(weight_decay)), ("lr", scale_by_learning_rate(lr)))`` with the default
    ``weight_decouple=True`` (AdamW-style decay, ``p <- p - lr (u + wd p)``); with
    ``weight_decouple=False`` the decay is added to the gradient first (L2), with
    ``fixed_decay=True`` it is not scaled by ``lr``; ``maximize`` flips the gradient first.
    ``eps_root`` defaults to ``eps`` (``pytorch_optimizer`` uses one ``eps`` for both).
    ``mask`` limits the weight decay to some leaves (see :func:`~functional_optim.masked`).

    Equal to ``pytorch_optimizer.AdaBelief`` step by step up to rounding: the decoupled decay is
    applied as ``p - lr*wd*p`` in the same update rather than ``p *= 1 - lr*wd`` first, and the
    step size multiplies the update rather than entering ``addcdiv``.

    Example::

        opt = fo.adabelief(lr=1e-3, weight_decay=1e-2)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    """
    _validate.check_lr(lr)
    check_non_negative(weight_decay, "weight_decay")
    block = scale_by_belief(b1, b2, eps, eps if eps_root is None else eps_root, nesterov=nesterov, ams_bound=ams_bound,
                            rectify=rectify, n_sma_threshold=n_sma_threshold, degenerated_to_sgd=degenerated_to_sgd)
    return decayed_chain("adabelief", block, lr, weight_decay, weight_decouple=weight_decouple,
                         fixed_decay=fixed_decay, maximize=maximize, mask=mask)

"""ADOPT: ``scale_by_adopt`` (optax's building block) and the ``adopt`` alias.

Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate"
(NeurIPS 2024), https://arxiv.org/abs/2411.02853. Reference implementation for the numbers:
``pytorch_optimizer.ADOPT`` (tests compare step by step), which follows the authors' code.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _validate
from ._moments import (
    addcmul,
    as_float64,
    check_betas_range,
    check_non_negative,
    decayed_chain,
    leafwise,
    lerp,
    mul,
    zero_count,
)
from .base import GradientTransformation
from .combine import map_updates
from .transforms import _like
from .tree import check_counters, check_state_like, check_state_type

Number = Union[float, Tensor]

__all__ = ["ScaleByAdoptHParams", "ScaleByAdoptState", "scale_by_adopt", "adopt"]


class ScaleByAdoptHParams(NamedTuple):
    """``b1``, ``b2``: decays of the first and second moments; ``eps``: floor of ``sqrt(nu)``."""

    b1: Number = 0.9
    b2: Number = 0.9999
    eps: Number = 1e-6


class ScaleByAdoptState(NamedTuple):
    """``count``: updates so far (0-d int32, shared by the leaves); ``mu``: EMA of the normalised
    (clipped) gradients; ``nu``: EMA of the squared gradients, one step behind the update."""

    count: Tensor
    mu: Any
    nu: Any


def _quarter_power(t: Tensor) -> Tensor:
    return t ** 0.25


def scale_by_adopt(b1: Number = 0.9, b2: Number = 0.9999, eps: Number = 1e-6, *, nesterov: bool = False,
                   use_clipping: bool = True,
                   clip_value_fn: Optional[Callable[[Tensor], Any]] = None) -> GradientTransformation:
    r"""Rescale updates by the ADOPT algorithm (optax's ``scale_by_adopt``).

    At the first step :math:`\nu_1 = g_1^2` and the update is zero. Then, for :math:`t \ge 2`:

    .. math::
        \tilde g_t = \mathrm{clip}\big(g_t / \max(\sqrt{\nu_{t-1}}, \epsilon), \pm c(t)\big), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\tilde g_t, \quad u_t = m_t, \\
        \nu_t = \beta_2 \nu_{t-1} + (1-\beta_2) g_t^2

    (the second moment normalises the *next* gradient, so the current gradient never divides
    itself). :math:`c(t) = t^{1/4}` by default (``clip_value_fn`` maps the float64 0-d step
    ``t`` to the bound; ``use_clipping=False`` drops the clip). Taniguchi et al. (2024),
    https://arxiv.org/abs/2411.02853.

    Differs from optax in the step given to ``clip_value_fn``: here the 1-based step ``t`` (as
    the authors' code and ``pytorch_optimizer``), where optax passes its 0-based count, so
    optax's default bound is :math:`(t-1)^{1/4}`. No bias correction. ``nesterov`` (as optax,
    not in ``pytorch_optimizer``): the update is :math:`\beta_1 m_t + (1-\beta_1)\tilde g_t`.

    The count is shared by all leaves (``pytorch_optimizer`` counts per param group): a leaf
    whose first gradient comes after step 1 is normalised by ``max(sqrt(0), eps)`` then, as there.
    The first-step branch is a ``torch.where`` on the count (compiles into one graph).

    Example::

        tx = fo.chain(fo.scale_by_adopt(), fo.scale_by_learning_rate(1e-3))
    """
    defaults = _validate.scalar_hparams(ScaleByAdoptHParams(b1, b2, eps), "scale_by_adopt")
    check_betas_range((b1, b2), ("beta1", "beta2"))
    check_non_negative(eps, "eps")
    clip_fn = _quarter_power if clip_value_fn is None else clip_value_fn

    def init(params):
        return ScaleByAdoptState(zero_count(params), map_updates(torch.zeros_like, params),
                                 map_updates(torch.zeros_like, params))

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("scale_by_adopt", defaults, hparams)
        check_state_type(state, ScaleByAdoptState, "scale_by_adopt")
        check_counters("scale_by_adopt", state, ("count",))
        check_state_like(updates, state.mu, "scale_by_adopt: state.mu")
        check_state_like(updates, state.nu, "scale_by_adopt: state.nu")
        count = state.count + 1
        first = count == 1
        t = as_float64(count)
        clip = clip_fn(t) if use_clipping else None

        def leaf(g, m, v):
            first_l = first.to(g.device)
            normed = g / torch.clamp_min(torch.sqrt(v), _like(hp.eps, v))
            if clip is not None:
                c = _like(clip, g)  # a number stays a number
                normed = torch.clamp(normed, -c, c)
            m_new = torch.where(first_l, m, lerp(m, normed, 1.0 - hp.b1))
            v_new = torch.where(first_l, addcmul(v, g, g, 1.0), addcmul(mul(v, hp.b2), g, g, 1.0 - hp.b2))
            step = lerp(m_new, normed, 1.0 - hp.b1) if nesterov else m_new
            u = torch.where(first_l, torch.zeros_like(m_new), step)
            return u, m_new, v_new

        out, mu, nu = leafwise(leaf, updates, state.mu, state.nu, n_out=3)
        return out, ScaleByAdoptState(count, mu, nu)

    return GradientTransformation(init, update, defaults)


def adopt(lr: Number = 1e-3, b1: Number = 0.9, b2: Number = 0.9999, eps: Number = 1e-6, weight_decay: Number = 0.0,
          *, nesterov: bool = False, weight_decouple: bool = False, fixed_decay: bool = False, use_clipping: bool = True,
          clip_value_fn: Optional[Callable[[Tensor], Any]] = None, maximize: bool = False,
          mask: Any = None) -> GradientTransformation:
    """ADOPT as a composition (defaults and flags of ``pytorch_optimizer.ADOPT``).

    ``named_chain(("decay", add_decayed_weights(weight_decay)), ("adopt", scale_by_adopt(b1, b2,
    eps)), ("lr", scale_by_learning_rate(lr)))`` with the default ``weight_decouple=False`` (the
    decay is added to the gradient, so it enters the second moment too); ``weight_decouple=True``
    decays the parameters AdamW-style (also on the first step, whose ADOPT update is zero),
    ``fixed_decay=True`` without the ``lr`` factor; ``maximize`` flips the gradient first.

    Equal to ``pytorch_optimizer.ADOPT`` step by step up to rounding (the step size multiplies
    the update instead of entering ``add(alpha=-lr)``; decoupled decay as ``p - lr*wd*p``).

    Example::

        opt = fo.adopt(lr=1e-3)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
    """
    _validate.check_lr(lr)
    check_non_negative(weight_decay, "weight_decay")
    block = scale_by_adopt(b1, b2, eps, nesterov=nesterov, use_clipping=use_clipping, clip_value_fn=clip_value_fn)
    return decayed_chain("adopt", block, lr, weight_decay, weight_decouple=weight_decouple, fixed_decay=fixed_decay,
                         maximize=maximize, mask=mask)

"""Adan: ``scale_by_adan`` (optax's building block, the authors' convention) and the ``adan`` alias.

Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models"
(TPAMI 2024), https://arxiv.org/abs/2208.06677. Reference implementation for the numbers:
``pytorch_optimizer.Adan`` (tests compare step by step), which follows the authors' code.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from ._moments import (
    addcmul,
    as_float64,
    bias_correction,
    check_betas_range,
    check_non_negative,
    leafwise,
    lerp,
    mul,
    zero_count,
)
from .base import GradientTransformation
from .combine import map_updates, masked, named_chain
from .transforms import _like, _stateless, add_decayed_weights, flip_sign, scale_by_learning_rate
from .tree import check_counters, check_state_like, check_state_type, flatten

Number = Union[float, Tensor]

__all__ = [
    "ScaleByAdanHParams",
    "ScaleByAdanState",
    "ProximalWeightDecayHParams",
    "ClipByGlobalNormAdanHParams",
    "scale_by_adan",
    "proximal_weight_decay",
    "clip_by_global_norm_adan",
    "adan",
]


class ScaleByAdanHParams(NamedTuple):
    """``b1``, ``b2``, ``b3``: decays of the gradient EMA, of the gradient-difference EMA (also
    the weight of the difference in the second moment and in the update), of the second moment."""

    b1: Number = 0.98
    b2: Number = 0.92
    b3: Number = 0.99
    eps: Number = 1e-8
    eps_root: Number = 0.0


class ScaleByAdanState(NamedTuple):
    """``count``: updates so far (0-d int32, shared); ``m``: EMA of the gradients; ``v``: EMA of
    the gradient differences; ``n``: EMA of the squared corrected gradient; ``prev_grad``: the
    last gradient; ``has_prev``: per leaf, whether it had a gradient before (0-d bool)."""

    count: Tensor
    m: Any
    v: Any
    n: Any
    prev_grad: Any
    has_prev: Any


def scale_by_adan(b1: Number = 0.98, b2: Number = 0.92, b3: Number = 0.99, eps: Number = 1e-8,
                  eps_root: Number = 0.0) -> GradientTransformation:
    r"""Rescale updates by the Adan algorithm (optax's ``scale_by_adan``, the authors' convention).

    With :math:`\Delta_t = g_t - g_{t-1}` (zero at a leaf's first gradient):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \Delta_t, \quad
        n_t = \beta_3 n_{t-1} + (1-\beta_3) (g_t + \beta_2 \Delta_t)^2, \\
        u_t = \frac{m_t/(1-\beta_1^t) + \beta_2\, v_t/(1-\beta_2^t)}{\sqrt{n_t/(1-\beta_3^t) + \epsilon_{root}} + \epsilon}

    Xie et al. (2022), https://arxiv.org/abs/2208.06677 (Algorithm 1 with its
    :math:`1-\beta` written as the decays :math:`\beta`, as the authors' code and
    ``pytorch_optimizer``). Differs from optax, which weights the difference by
    :math:`1-\beta_2` (0.08 with the defaults) in :math:`n_t` and in :math:`u_t` where the
    authors' code uses :math:`\beta_2` (0.92); we follow the authors' code.

    The count is shared by all leaves (as ``pytorch_optimizer``'s group step); whether a leaf
    has a previous gradient is kept per leaf (``has_prev``), as the reference, which sets a
    parameter's previous gradient at its first gradient. ``prev_grad`` is a copy of the
    gradient, never the caller's tensor: a gradient the caller later changes in place (a
    ``.grad`` that ``backward`` accumulates into after ``zero_grad(set_to_none=False)``) leaves
    the state as it was.

    Example::

        tx = fo.chain(fo.scale_by_adan(), fo.scale_by_learning_rate(1e-3))
    """
    defaults = _validate.scalar_hparams(ScaleByAdanHParams(b1, b2, b3, eps, eps_root), "scale_by_adan")
    check_betas_range((b1, b2, b3), ("beta1", "beta2", "beta3"), closed_last=True)
    check_non_negative(eps, "eps")
    check_non_negative(eps_root, "eps_root")

    def init(params):
        zeros = lambda: map_updates(torch.zeros_like, params)  # noqa: E731
        flags = map_updates(lambda p: torch.zeros((), dtype=torch.bool, device=p.device), params)
        return ScaleByAdanState(zero_count(params), zeros(), zeros(), zeros(), zeros(), flags)

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("scale_by_adan", defaults, hparams)
        check_state_type(state, ScaleByAdanState, "scale_by_adan")
        check_counters("scale_by_adan", state, ("count",))
        for field in ("m", "v", "n", "prev_grad"):
            check_state_like(updates, getattr(state, field), f"scale_by_adan: state.{field}")
        check_state_like(updates, state.has_prev, "scale_by_adan: state.has_prev", scalar=True)
        count = state.count + 1
        t = as_float64(count)
        bc1 = bias_correction(hp.b1, t)
        bc2 = bias_correction(hp.b2, t)
        bc3 = bias_correction(hp.b3, t)
        bc3_sqrt = torch.sqrt(bc3)
        diff_scale = hp.b2 / bc2

        def leaf(g, m, v, n, prev, seen):
            diff = torch.where(seen.to(g.device), g - prev, torch.zeros_like(g))
            m = lerp(m, g, 1.0 - hp.b1)
            v = lerp(v, diff, 1.0 - hp.b2)
            z = mul(diff, hp.b2) + g
            n = addcmul(mul(n, hp.b3), z, z, 1.0 - hp.b3)
            if isinstance(hp.eps_root, Tensor) or hp.eps_root != 0.0:
                root = torch.sqrt(n + _like(hp.eps_root * bc3, n))
            else:
                root = torch.sqrt(n)
            denom = root / _like(bc3_sqrt, root) + _like(hp.eps, root)
            u = m / _like(bc1, m) / denom + v * _like(diff_scale, v) / denom
            return u, m, v, n, g.clone(), torch.ones_like(seen)

        out, m, v, n, prev, seen = leafwise(leaf, updates, state.m, state.v, state.n, state.prev_grad,
                                            state.has_prev, n_out=6)
        return out, ScaleByAdanState(count, m, v, n, prev, seen)

    return GradientTransformation(init, update, defaults)


class ProximalWeightDecayHParams(NamedTuple):
    lr: Number = 1e-3
    weight_decay: Number = 0.0


def proximal_weight_decay(lr: Number = 1e-3, weight_decay: Number = 0.0) -> GradientTransformation:
    r"""Adan's default weight decay, the proximal step :math:`p_{t+1} = (p_t + u_t) / (1 + \eta\lambda)`.

    Placed after the learning rate (``u`` is the final step): the output is
    :math:`(u - \eta\lambda p) / (1 + \eta\lambda)`, so ``apply_updates`` gives the proximal point.
    ``lr`` is a field of its own record, set together with ``scale_by_learning_rate``'s by
    :func:`~functional_optim.replace_hparams` (one name). Needs ``params``.
    """
    _validate.check_lr(lr)
    check_non_negative(weight_decay, "weight_decay")

    def fn(updates, params, hp):
        if params is None:
            raise ValueError("proximal_weight_decay.update needs params")

        def leaf(u, p):
            k = _like(hp.lr * hp.weight_decay, u)
            return (u - p * k) / (1.0 + k)

        return map_updates(leaf, updates, params)

    return _stateless("proximal_weight_decay", ProximalWeightDecayHParams(lr, weight_decay), fn)


class ClipByGlobalNormAdanHParams(NamedTuple):
    max_grad_norm: Number = 0.0
    eps: Number = 1e-8


def clip_by_global_norm_adan(max_grad_norm: Number, eps: Number = 1e-8) -> GradientTransformation:
    r"""Scale all gradients by :math:`\min(1, c / (\lVert g \rVert_2 + \epsilon))`, as ``pytorch_optimizer.Adan``.

    The norm is that reference's: per-leaf norms squared and summed in float32 (so a float64
    gradient is scaled by a float32-rounded factor, as there). :func:`~functional_optim.clip_by_global_norm`
    is torch's ``clip_grad_norm_`` (``1e-6``, exact norm); this block exists for parity.
    """

    def fn(updates, params, hp):
        leaves = [u for u in flatten(updates)[0] if u is not None]
        if not leaves:
            return updates
        device = leaves[0].device
        sq = torch.stack([torch.linalg.vector_norm(u).to(device) for u in leaves]).float().square().sum()
        norm = torch.sqrt(sq) + _like(hp.eps, sq)
        factor = torch.clamp(_like(hp.max_grad_norm, norm) / norm, max=1.0)
        return map_updates(lambda u: u * factor.to(u.device), updates)

    return _stateless("clip_by_global_norm_adan", ClipByGlobalNormAdanHParams(max_grad_norm, eps), fn)


def adan(lr: Number = 1e-3, b1: Number = 0.98, b2: Number = 0.92, b3: Number = 0.99, eps: Number = 1e-8,
         eps_root: Number = 0.0, weight_decay: Number = 0.0, *, weight_decouple: bool = False,
         max_grad_norm: float = 0.0, maximize: bool = False, mask: Any = None) -> GradientTransformation:
    """Adan as a composition (defaults and flags of ``pytorch_optimizer.Adan``).

    ``named_chain([("clip", clip_by_global_norm_adan(max_grad_norm, eps))], ("adan",
    scale_by_adan(...)), ("lr", scale_by_learning_rate(lr)), ("decay",
    proximal_weight_decay(lr, weight_decay)))``: the default ``weight_decouple=False`` is the
    paper's proximal decay :math:`(p - \\eta u)/(1 + \\eta\\lambda)`; ``weight_decouple=True``
    is AdamW-style (``add_decayed_weights`` before the learning rate). The clip part is there
    only with ``max_grad_norm > 0`` (fixed at construction, as the reference checks its
    default). ``maximize`` flips the gradient first (see the README for the reference's
    different first step with ``maximize``).

    Example::

        opt = fo.adan(lr=1e-3, weight_decay=0.02)
    """
    _validate.check_lr(lr)
    check_non_negative(weight_decay, "weight_decay")
    check_non_negative(max_grad_norm, "max_grad_norm")
    parts: list = [("maximize", flip_sign())] if maximize else []
    if max_grad_norm > 0.0:
        parts.append(("clip", clip_by_global_norm_adan(max_grad_norm, eps)))
    parts.append(("adan", scale_by_adan(b1, b2, b3, eps, eps_root)))
    if weight_decouple:
        parts += [("decay", add_decayed_weights(weight_decay, mask)), ("lr", scale_by_learning_rate(lr))]
    else:
        decay = proximal_weight_decay(lr, weight_decay)
        if mask is not None:
            decay = masked(decay, mask)
        parts += [("lr", scale_by_learning_rate(lr)), ("decay", decay)]
    return named_chain(*parts)

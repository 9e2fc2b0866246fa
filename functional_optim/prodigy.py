"""Prodigy: Adam with a learning rate estimated on the fly (D-Adaptation's successor).

Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner" (2023),
https://arxiv.org/abs/2306.06101. Reference implementation: ``prodigyopt.Prodigy`` (PyPI
``prodigyopt``, by the authors).

**Not a composition.** The estimate ``d`` of the distance to the solution is a *global*
reduction over every parameter (``sum <g, p0 - p>`` and ``sum |s|``), and it enters the moments
themselves (``m <- b1 m + d (1 - b1) g``, ``v <- b2 v + d^2 (1 - b2) g^2``), so the step cannot be
split into ``scale_by_*`` blocks followed by ``scale_by_learning_rate``. :func:`prodigy` is one
transformation whose state keeps the global scalars next to the per-leaf slots (see
:class:`ProdigyState`); every leaf of the tree passed to ``update`` takes part in one estimate,
as every parameter of every param group does in the reference. Inside ``partition`` or ``masked`` the
estimate covers only the leaves that part sees (one ``d`` per part). The math is written once
(:func:`_prodigy_math`), over lists, with per-leaf hyperparameters; ``fo.prodigy`` gives every
leaf the same ones and ``compat.Prodigy`` gives each leaf its param group's.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _validate
from .base import GradientTransformation
from .tree import check_counters, check_params_match, check_same_structure, check_state_like, check_state_type, flatten, lazy_paths, unflatten

Number = Union[float, Tensor]

__all__ = ["ProdigyHParams", "ProdigyStatic", "ProdigyState", "prodigy"]


class ProdigyHParams(NamedTuple):
    lr: Number
    betas: tuple
    beta3: Optional[Number]
    eps: Number
    weight_decay: Number
    d0: Number
    d_coef: Number
    growth_rate: Number


class ProdigyStatic(NamedTuple):
    decouple: bool
    use_bias_correction: bool
    safeguard_warmup: bool
    slice_p: int
    has_exp_avg: bool  # False when betas[0] == 0.0 at construction (the reference then keeps no exp_avg)


class ProdigyState(NamedTuple):
    """Global scalars (0-d; ``count`` int32, the others float64 as the reference's Python floats):
    ``count`` (the reference's ``k``: steps taken), ``d`` (the current estimate, starts at ``d0``),
    ``d_max``, ``d_numerator`` (the running ``sum <g, p0 - p>`` term). Per leaf: ``exp_avg``
    (``None`` as a whole when ``betas[0] == 0``), ``exp_avg_sq``, ``s`` (the running gradient sum
    of the denominator, over ``p.flatten()[::slice_p]``) and ``p0`` (the initial parameters,
    same slicing)."""

    count: Tensor
    d: Tensor
    d_max: Tensor
    d_numerator: Tensor
    exp_avg: Any
    exp_avg_sq: Any
    s: Any
    p0: Any


class _ProdigyOut(NamedTuple):
    updates: list
    new_params: list
    exp_avg: Optional[list]
    exp_avg_sq: list
    s: list
    count: Tensor
    d: Tensor
    d_max: Tensor
    d_numerator: Tensor
    applied: Tensor
    d_denom: Tensor
    d_hat: Tensor


class _LeafHP(NamedTuple):
    weight_decay: Number
    eps: Number
    d0: Number
    safeguard_warmup: bool
    active: bool  # False: a param group with lr 0 (compat): no moment or estimate updates
    slice_p: int


def _sliced(x: Tensor, slice_p: int) -> Tensor:
    return x.flatten()[::slice_p]


def _like(x: Any, t: Tensor) -> Any:
    """A scalar tensor in ``t``'s (real) dtype and on its device (parameters may live on several)."""
    return x.to(dtype=t.real.dtype if t.is_complex() else t.dtype, device=t.device) if isinstance(x, Tensor) else x


def _nonzero(x: Any) -> bool:
    return isinstance(x, Tensor) or x != 0


def _prodigy_math(grads: Sequence[Optional[Tensor]], params: Sequence[Tensor], exp_avg, exp_avg_sq, s, p0,
                  count: Tensor, d: Tensor, d_max: Tensor, d_numerator: Tensor, *, lr, betas, beta3, d_coef,
                  growth_rate, d0_last, decouple: bool, use_bias_correction: bool, has_exp_avg: bool,
                  leaf_hps: Sequence[_LeafHP]):
    """One Prodigy step over lists (``prodigyopt.Prodigy.step``'s order of operations).

    Returns a :class:`_ProdigyOut`: ``updates`` are ``new_p - p`` (``None`` where the grad is
    ``None``, zeros when the step is skipped; ``new_params`` the new values themselves);
    ``applied`` is a 0-d bool, false when the reference returns early (``sum |s| == 0``: no
    gradient signal yet, or ``lr == 0``), in which case the params and the global scalars do not
    change (the moments do, as in the reference). Nothing is read back to the host.
    """
    dev = d.device
    f64 = lambda x: _validate.float64_scalar(x, dev)  # noqa: E731
    lr_t = f64(lr)
    b1, b2 = f64(betas[0]), f64(betas[1])
    b3 = torch.sqrt(b2) if beta3 is None else f64(beta3)
    k1 = (count + 1).to(torch.float64)
    bias_correction = torch.sqrt(1 - b2 ** k1) / (1 - b1 ** k1) if use_bias_correction else 1.0
    dlr = d * lr_t * bias_correction
    lr_pos = lr_t > 0
    scaled_numerator = d_numerator * b3
    delta = torch.zeros((), dtype=torch.float64, device=dev)
    denom_sum = torch.zeros((), dtype=torch.float64, device=dev)
    m_new = list(exp_avg) if has_exp_avg else None
    v_new, s_new, g_eff = list(exp_avg_sq), list(s), [None] * len(params)
    m_coef, v_coef = d * (1 - b1), d * d * (1 - b2)
    for i, (g, p, hp) in enumerate(zip(grads, params, leaf_hps)):
        if g is None:
            continue
        if not decouple and _nonzero(hp.weight_decay):  # coupled (L2) weight decay
            g = g + _like(hp.weight_decay, p) * p if isinstance(hp.weight_decay, Tensor) else torch.add(
                g, p, alpha=hp.weight_decay)
        g_eff[i] = g
        if not hp.active:
            continue
        ratio = d / f64(hp.d0)
        sg = _sliced(g, hp.slice_p)
        delta = delta + (ratio * dlr) * torch.dot(sg, p0[i] - _sliced(p, hp.slice_p)).to(dev, torch.float64)
        if has_exp_avg:
            m_new[i] = exp_avg[i] * _like(b1, g) + _like(m_coef, g) * g
        v_new[i] = exp_avg_sq[i] * _like(b2, g) + _like(v_coef, g) * g * g
        s_coef = ratio * d if hp.safeguard_warmup else ratio * dlr
        s_new[i] = s[i] * _like(b3, g) + _like(s_coef, g) * sg
        denom_sum = denom_sum + s_new[i].abs().sum().to(dev, torch.float64)
        if has_exp_avg:
            m_new[i] = torch.where(lr_pos.to(g.device), m_new[i], exp_avg[i])
        v_new[i] = torch.where(lr_pos.to(g.device), v_new[i], exp_avg_sq[i])
        s_new[i] = torch.where(lr_pos.to(g.device), s_new[i], s[i])

    applied = lr_pos & (denom_sum != 0)
    numerator = scaled_numerator + delta
    d_hat = f64(d_coef) * numerator / torch.where(applied, denom_sum, torch.ones_like(denom_sum))
    d_next = torch.where(d == f64(d0_last), torch.maximum(d, d_hat), d)
    d_max_next = torch.maximum(d_max, d_hat)
    d_next = torch.minimum(d_max_next, d_next * f64(growth_rate))

    updates, new_params = [None] * len(params), [None] * len(params)
    for i, (g, p, hp) in enumerate(zip(g_eff, params, leaf_hps)):
        if g is None:
            continue
        denom = v_new[i].sqrt() + _like(d_next * f64(hp.eps), p)
        new_p = p
        if decouple and _nonzero(hp.weight_decay):
            new_p = p + _like(-f64(hp.weight_decay) * dlr, p) * p
        if has_exp_avg:
            new_p = new_p + _like(-dlr, p) * (m_new[i] / denom)
        else:
            new_p = new_p + _like(-dlr * d_next, p) * (g / denom)
        on = applied.to(p.device)
        new_params[i] = torch.where(on, new_p, p)
        updates[i] = torch.where(on, new_p - p, torch.zeros_like(p))
    return _ProdigyOut(updates, new_params, m_new, v_new, s_new, torch.where(applied, count + 1, count),
                       torch.where(applied, d_next, d), torch.where(applied, d_max_next, d_max),
                       torch.where(applied, numerator, d_numerator), applied, denom_sum, d_hat)


def _check_sliced(params: list, field: list, what: str, slice_p: int, paths) -> None:
    for i, (p, v) in enumerate(zip(params, field)):
        if not isinstance(p, Tensor):
            continue
        if not isinstance(v, Tensor):
            raise ValueError(f"{what} at {paths()[i]} must be a Tensor, got {type(v).__name__}")
        n = (p.numel() + slice_p - 1) // slice_p
        if v.shape != (n,) and v.shape != ():
            raise ValueError(f"{what} at {paths()[i]} has shape {tuple(v.shape)}, expected ({n},)")
        if v.device != p.device:
            raise ValueError(f"{what} at {paths()[i]} is on {v.device}, expected {p.device}")


def check_prodigy_args(lr, betas, eps, d0) -> None:
    """``prodigyopt.Prodigy``'s checks, in its order and with its messages."""
    if not 0.0 < d0:
        raise ValueError(f"Invalid d0 value: {d0}")
    if not 0.0 < lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 < eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")


def prodigy(lr: Number = 1.0, betas: tuple = (0.9, 0.999), beta3: Optional[Number] = None, eps: Number = 1e-8,
            weight_decay: Number = 0.0, decouple: bool = True, use_bias_correction: bool = False,
            safeguard_warmup: bool = False, d0: Number = 1e-6, d_coef: Number = 1.0,
            growth_rate: Number = math.inf, slice_p: int = 1) -> GradientTransformation:
    """Prodigy: Adam whose step size ``d * lr`` is estimated from the gradients seen so far.

    At step ``k`` (``dlr = d * lr * bc``, ``bc = sqrt(1 - b2^(k+1)) / (1 - b1^(k+1))`` with
    ``use_bias_correction``, else 1; ``b3 = beta3`` or ``sqrt(b2)``; ``g += wd * p`` first unless
    ``decouple``)::

        N <- b3 N + (d / d0) dlr sum_leaves <g, p0 - p>
        m <- b1 m + d (1 - b1) g;   v <- b2 v + d^2 (1 - b2) g^2
        s <- b3 s + (d / d0) (d if safeguard_warmup else dlr) g
        d_hat = d_coef N / sum_leaves |s|_1
        d <- max(d, d_hat) if d == d0;  d_max <- max(d_max, d_hat);  d <- min(d_max, growth_rate d)
        p <- p - wd dlr p (decouple) - dlr m / (sqrt(v) + d eps)

    (``- dlr d g / (sqrt(v) + d eps)`` when ``betas[0] == 0``). A step where ``sum |s| == 0``
    (all gradients zero so far, or ``lr == 0``) leaves the params and ``d`` as they are, as the
    reference's early return. ``slice_p > 1`` computes ``p0``, ``s`` and the inner products on
    every ``slice_p``-th element, as ``prodigyopt``.

    ``d`` is one estimate for the whole tree: see the module docstring and :class:`ProdigyState`.
    Not a composition (``d`` enters the moments). Defaults are ``prodigyopt.Prodigy``'s and the
    steps equal it up to rounding (float64 ~1e-12). ``decouple``, ``use_bias_correction``,
    ``safeguard_warmup`` and ``slice_p`` are static; the others are hparams (call time,
    ``beta3=None`` meaning ``sqrt(betas[1])``). Paper: https://arxiv.org/abs/2306.06101.

    Example::

        opt = fo.prodigy(weight_decay=0.01)         # lr stays 1.0: d is the learning rate
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        print(float(state.d))                       # the current estimate
    """
    check_prodigy_args(lr, betas, eps, d0)
    slice_p = int(slice_p)
    if slice_p < 1:
        raise ValueError(f"Invalid slice_p value: {slice_p}")
    static = ProdigyStatic(bool(decouple), bool(use_bias_correction), bool(safeguard_warmup), slice_p,
                           not (not isinstance(betas[0], Tensor) and betas[0] == 0))
    defaults = _validate.scalar_hparams(
        ProdigyHParams(lr, tuple(betas), beta3, eps, weight_decay, d0, d_coef, growth_rate), "prodigy")

    def init(params):
        leaves, spec = flatten(params)
        dev = next((p.device for p in leaves if isinstance(p, Tensor)), torch.device("cpu"))
        d = torch.as_tensor(defaults.d0, dtype=torch.float64, device=dev).clone()
        tree = lambda fn: unflatten(spec, [fn(p) if isinstance(p, Tensor) else p for p in leaves])  # noqa: E731
        return ProdigyState(
            torch.zeros((), dtype=torch.int32, device=dev), d, d.clone(), torch.zeros((), dtype=torch.float64, device=dev),
            tree(torch.zeros_like) if static.has_exp_avg else None, tree(torch.zeros_like),
            tree(lambda p: torch.zeros_like(_sliced(p, slice_p))), tree(lambda p: _sliced(p, slice_p).clone()))

    def update(updates, state, params=None, hparams=None):
        if params is None:
            raise ValueError("prodigy.update needs params")
        check_params_match(updates, params, "prodigy")
        hp = _validate.check_hparams_record("prodigy", defaults, hparams)
        check_state_type(state, ProdigyState, "prodigy")
        check_counters("prodigy", state, ("count", "d", "d_max", "d_numerator"))
        if static.has_exp_avg:
            check_state_like(updates, state.exp_avg, "prodigy: state.exp_avg")
        check_state_like(updates, state.exp_avg_sq, "prodigy: state.exp_avg_sq")
        check_same_structure(updates, state.s, "the updates", "prodigy: state.s")
        check_same_structure(updates, state.p0, "the updates", "prodigy: state.p0")
        g_leaves, spec = flatten(updates)
        p_leaves = flatten(params)[0]
        s_leaves, p0_leaves = flatten(state.s)[0], flatten(state.p0)[0]
        paths = lazy_paths(updates)
        _check_sliced(p_leaves, s_leaves, "prodigy: state.s", slice_p, paths)
        _check_sliced(p_leaves, p0_leaves, "prodigy: state.p0", slice_p, paths)
        m_leaves = flatten(state.exp_avg)[0] if static.has_exp_avg else None
        leaf = _LeafHP(hp.weight_decay, hp.eps, hp.d0, static.safeguard_warmup, True, slice_p)
        out, _, m, v, s, count, d, d_max, num, _, _, _ = _prodigy_math(
            g_leaves, p_leaves, m_leaves, flatten(state.exp_avg_sq)[0], s_leaves, p0_leaves,
            state.count, state.d, state.d_max, state.d_numerator, lr=hp.lr, betas=hp.betas, beta3=hp.beta3,
            d_coef=hp.d_coef, growth_rate=hp.growth_rate, d0_last=hp.d0, decouple=static.decouple,
            use_bias_correction=static.use_bias_correction, has_exp_avg=static.has_exp_avg,
            leaf_hps=[leaf] * len(g_leaves))
        return unflatten(spec, out), ProdigyState(
            count, d, d_max, num, unflatten(spec, m) if static.has_exp_avg else None, unflatten(spec, v),
            unflatten(spec, s), unflatten(spec, p0_leaves))

    return GradientTransformation(init, update, defaults)

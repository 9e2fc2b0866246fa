"""Adafactor step over lists of tensors.

Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost" (2018),
https://arxiv.org/abs/1804.04235, in the variant of ``torch.optim.Adafactor`` (``lr`` caps the
relative step size and scales decoupled weight decay; ``eps1`` is applied after the factors).

With step t (per parameter), gradient G (negated if ``maximize``), tau = ``beta2_decay``:

    w      = t^tau                                   (= 1 - beta2_t)
    rho    = min(lr, 1 / sqrt(t))
    alpha  = max(eps2, RMS(theta)) * rho             (RMS of theta before weight decay)
    theta <- theta * (1 - lr * wd)
    if dim(G) >= 2 (factored over the last two dims; R: [..., m, 1], C: [..., 1, n]):
        R <- lerp(R, mean(G^2, dim=-1), w)
        C <- lerp(C, mean(G^2, dim=-2), w)
        V  = (R @ C) / max(mean(R, dim=-2), eps1)
    else:
        V <- lerp(V, G^2, w);   V_hat = V
    U      = G / sqrt(max(V_hat, eps1^2))
    theta <- theta - alpha / max(1, RMS(U) / d) * U

``eps1=None`` means ``finfo(dtype).eps`` of the first parameter's dtype (as torch resolves it).
Row/column means of G^2 are taken as ``norm(G, dim)^2 / size``, the way torch computes them.
The scalar terms (w, rho, alpha, the clipping divisor) are Python floats when ``ops.host_scalars``
(torch's ``.item()`` arithmetic) and float64 0-d tensors otherwise (traceable, no host sync).
torch's for-loop adds ``U`` with ``alpha=``, its foreach code scales ``U`` in place first
(``Ops.scale_and_add_``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .ops import Ops, Scalar, _as_dtype_of, nonzero


def adafactor_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One Adafactor step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    lr, beta2_decay, weight_decay, d = hparams.lr, hparams.beta2_decay, hparams.weight_decay, hparams.d
    if not params:  # every gradient was None: nothing to do (and no dtype to resolve eps1 from)
        return params, dict(state)
    eps1, eps2 = hparams.eps
    if eps1 is None:
        eps1 = torch.finfo(params[0].dtype).eps

    steps = ops.increment_(state["step"])
    if static.maximize:
        grads = ops.neg(grads)
    t = ops.step_values(steps)
    one_minus_beta2 = ops.per_param(lambda ti: ti**beta2_decay, t)
    rho = ops.per_param(lambda ti: _at_most(1 / ti**0.5, lr), t)
    roots = [p.numel() ** 0.5 for p in params]  # sqrt of each tensor's size: RMS = norm / root
    param_norms = ops.scalar_values(ops.norms(params))
    alphas = ops.per_param(lambda n, root, r: _at_least(n / root, eps2) * r, param_norms, roots, rho)

    if nonzero(weight_decay):
        params = ops.mul_(params, 1 - lr * weight_decay)

    new_state = {"step": steps}
    var_estimates: list = [None] * len(params)
    factored = [i for i, g in enumerate(grads) if g.dim() > 1]
    if factored:
        g, w = _pick(grads, factored), _pick(one_minus_beta2, factored)
        row_vars = ops.lerp_(_pick(state["row_var"], factored), _mean_squares(ops, g, -1), w)
        col_vars = ops.lerp_(_pick(state["col_var"], factored), _mean_squares(ops, g, -2), w)
        outer = ops.outer_products(row_vars, col_vars)  # new tensors: the kernel's to overwrite
        row_means = [_clamp_min(r.mean(dim=-2, keepdim=True), eps1) for r in row_vars]
        for i, v in zip(factored, ops.div_tensors_(outer, row_means)):
            var_estimates[i] = v
        new_state["row_var"] = _scatter(state["row_var"], factored, row_vars)
        new_state["col_var"] = _scatter(state["col_var"], factored, col_vars)
    unfactored = [i for i, g in enumerate(grads) if g.dim() <= 1]
    if unfactored:
        g, w = _pick(grads, unfactored), _pick(one_minus_beta2, unfactored)
        variances = ops.lerp_(_pick(state["variance"], unfactored), ops.square(g), w)
        for i, v in zip(unfactored, ops.writable(variances)):  # torch clones the variance here
            var_estimates[i] = v
        new_state["variance"] = _scatter(state["variance"], unfactored, variances)

    updates = ops.mul_tensors_(ops.rsqrt_at_least_(var_estimates, eps1 * eps1), grads)
    update_norms = ops.scalar_values(ops.norms(updates))
    scales = ops.per_param(lambda a, n, root: -a / _at_least(n / (root * d), 1.0), alphas, update_norms, roots)
    params = ops.scale_and_add_(params, updates, scales, scratch=True)
    return params, new_state


def _mean_squares(ops: Ops, grads: list, dim: int) -> list:
    """``(g * g).mean(dim, keepdim=True)`` as torch computes it: ``norm(g, dim)^2 / size``.

    The norms are this step's own tensors: plain ones are squared in place where ``ops`` write in
    place, as torch's ``square_()`` and ``_foreach_mul_(means, means)`` (on 500 small matrices the
    out-of-place product cost 1.1x torch's foreach step). A DTensor's norm over a sharded dim is a
    pending partial sum, which DTensor refuses to square in place: those are squared out of place.
    """
    norms = ops.own([_norm(g, dim) for g in grads])
    plain = all(type(n) is Tensor for n in norms)
    squares = ops.mul_tensors_(norms, norms) if plain else ops.square(norms)
    return ops.div_(squares, [g.size(dim) for g in grads])


def _norm(g: Tensor, dim: int) -> Tensor:
    """``torch.norm(g, dim=dim, keepdim=True)``, torch's row/column norm: on strided CPU and CUDA
    tensors the ``linalg.vector_norm`` it calls, without its Python dispatch (a few µs a call, two
    calls per matrix and step: on 500 small matrices a tenth of the eager step)."""
    if g.layout == torch.strided and g.device.type in ("cpu", "cuda"):
        return torch.linalg.vector_norm(g, 2, [dim], True)
    return torch.norm(g, dim=dim, keepdim=True)


def _at_most(x: Scalar, bound: Scalar) -> Scalar:
    """``min(bound, x)``: Python's ``min`` on host scalars (as torch), an elementwise minimum on
    a tensor ``x``.

    A number ``bound`` (``lr``) enters as ``ones_like(x) * bound`` (exact): under torch.compile a
    changing Python-float ``lr`` is a symbolic float, and Inductor specializes one passed as
    ``clamp``'s bound (or ``full_like``'s value), recompiling at every new ``lr`` (measured:
    ``torch.compile(compat.Adafactor.step)`` with ``StepLR``, one graph per step); a product of a
    tensor with it stays symbolic."""
    if not isinstance(x, Tensor):
        return min(bound, x)
    if isinstance(bound, Tensor):
        return torch.clamp(x, max=bound)
    return torch.minimum(x, torch.ones_like(x) * bound)


def _at_least(x: Scalar, bound: Scalar) -> Scalar:
    """``max(bound, x)``: Python's ``max`` on host scalars (as torch), a clamp on a tensor ``x``."""
    return torch.clamp(x, min=bound) if isinstance(x, Tensor) else max(bound, x)


def _clamp_min(x: Tensor, bound: Scalar) -> Tensor:
    """``x.clamp(min=bound)`` out of place, in ``x``'s dtype even for a tensor ``bound``."""
    return torch.clamp(x, min=_as_dtype_of(bound, x))


def _pick(xs: Any, indices: list) -> Any:
    """The entries ``indices`` of a list, or of a vector of per-parameter scalars (one indexing op)."""
    if isinstance(xs, Tensor):
        return xs if len(indices) == len(xs) else xs[indices]
    return [xs[i] for i in indices]


def _scatter(xs: list, indices: list, values: list) -> list:
    out = list(xs)
    for i, v in zip(indices, values):
        out[i] = v
    return out

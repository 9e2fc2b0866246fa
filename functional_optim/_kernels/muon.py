"""Muon step over lists of tensors, and the Newton–Schulz orthogonalisation it is built on.

Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/; the ``match_rms_adamw`` learning-rate scale from
Liu et al., "Muon is Scalable for LLM Training" (2025), https://arxiv.org/abs/2502.16982; the
``spectral_unclamped`` scale from Bernstein, "Deriving Muon" (2025),
https://jeremybernste.in/writing/deriving-muon.

For a matrix parameter theta (m x n) with gradient g, momentum mu and momentum buffer B:

    B       <- B + (1 - mu) (g - B)                         (lerp; torch's form of mu B + (1 - mu) g)
    U       <- g + mu (B - g)   if nesterov  else  B
    O       <- NS_k^(a,b,c)(U; eps)                          (in bfloat16, see newton_schulz)
    theta   <- theta (1 - lr wd)                             (decoupled weight decay)
    theta   <- theta - lr * r(m, n) * O

with ``r = sqrt(max(1, m / n))`` (``adjust_lr_fn=None`` or ``"original"``) or
``0.2 sqrt(max(m, n))`` (``"match_rms_adamw"``) or ``sqrt(m / n)`` (``"spectral_unclamped"``,
torch >= 2.14). The operation order follows
``torch.optim.Muon`` (torch 2.9+), which has only a for-loop implementation.

One property of torch's implementation is kept on purpose: with ``nesterov=False`` the tensor
handed to the orthogonalisation *is* the momentum buffer, and torch's in-place normalisation of
its bfloat16 copy then normalises the buffer itself when the buffer already is bfloat16 (a
bfloat16 parameter). The kernel reproduces that (``B <- B / max(||B||_F, eps)`` for bfloat16
buffers without Nesterov) so that bfloat16 runs equal torch's; other dtypes are unaffected.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from .ops import Ops, nonzero

__all__ = ["newton_schulz", "adjusted_lr_ratio", "muon_kernel", "NS_COEFFICIENTS", "NS_STEPS", "NS_EPS"]

#: Keller Jordan's quintic coefficients (a, b, c), steps and epsilon: torch.optim.Muon's defaults
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def check_newton_schulz_args(ns_coefficients: Sequence[float], ns_steps: int) -> None:
    """torch's refusals of the iteration's settings (same types and messages)."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")


def _unit_frobenius(x: Tensor, eps: Any) -> tuple[Tensor, Tensor]:
    """``(x / max(||x||_F, eps), max(||x||_F, eps))``, the norm in ``x``'s dtype (out of place)."""
    norm = x.norm()
    norm = norm.clamp(min=eps.to(norm.dtype) if isinstance(eps, Tensor) else eps)
    return x / norm, norm


def _quintic_iterations(x: Tensor, ns_coefficients: Sequence[float], ns_steps: int) -> Tensor:
    """``ns_steps`` times ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` (``X`` wide: m <= n).

    Each step is two ``addmm`` calls, in the order torch.optim.Muon computes them, so the
    bfloat16 roundings are the same.
    """
    a, b, c = ns_coefficients
    for _ in range(ns_steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A A
        x = torch.addmm(x, poly, x, beta=a)  # a X + poly X
    return x


def newton_schulz(g: Tensor, ns_coefficients: Sequence[float] = NS_COEFFICIENTS, ns_steps: int = NS_STEPS,
                  eps: Any = NS_EPS) -> Tensor:
    """Approximate orthogonalisation ``U V^T`` of a matrix ``g = U S V^T`` (Newton–Schulz iteration).

    ``g`` is cast to bfloat16, transposed to be wide (rows <= columns), scaled to Frobenius norm
    at most 1 (``/ max(||g||_F, eps)``, so the spectral norm is at most 1) and iterated with the
    quintic ``X <- a X + b (X X^T) X + c (X X^T)^2 X``. Keller Jordan's coefficients
    (:data:`NS_COEFFICIENTS`) maximise the slope at zero rather than converge: the result is
    ``U S' V^T`` with ``S'`` roughly uniform in (0.5, 1.5), which trains as well as ``U V^T``.
    The result is bfloat16, with ``g``'s shape; nothing is modified in place.

    Equal to torch.optim.Muon's ``_zeropower_via_newtonschulz`` bit for bit (same operations in
    the same order), with its errors for ``ns_steps >= 100``, a non-matrix ``g`` and
    coefficients that are not three. Pure tensor math, so it runs under ``torch.compile``,
    ``torch.func.vmap`` and autograd (though in bfloat16).
    """
    check_newton_schulz_args(ns_coefficients, ns_steps)
    if g.dim() != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    x, _ = _unit_frobenius(_wide(g.bfloat16()), eps)
    return _wide_back(_quintic_iterations(x, ns_coefficients, ns_steps), g)


def _tall(m: Tensor) -> bool:
    return m.size(0) > m.size(1)


def _wide(m: Tensor) -> Tensor:
    return m.T if _tall(m) else m


def _wide_back(x: Tensor, like: Tensor) -> Tensor:
    return x.T if _tall(like) else x


def adjusted_lr_ratio(adjust_lr_fn: str | None, shape: Sequence[int]) -> float:
    """The factor Muon scales ``lr`` by for an ``A x B`` matrix (a Python float, from the shape):
    ``sqrt(max(1, A / B))`` for ``None``/``"original"`` (Keller Jordan), ``0.2 sqrt(max(A, B))``
    for ``"match_rms_adamw"`` (Moonshot: the update's RMS matches AdamW's), ``sqrt(A / B)`` for
    ``"spectral_unclamped"`` (Bernstein: the spectral condition, not clamped at 1), 1 otherwise."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "spectral_unclamped":
        return math.sqrt(rows / cols)
    return 1.0


def muon_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One Muon step; returns ``(params, state)`` (the same tensors when ``ops`` is in place).

    compat runs it over cache-sized chunks of parameters (torch's loop takes one at a time; the
    math is per parameter, so the numbers are the same) after checking every gradient and the
    Newton-Schulz arguments, so that an error changes nothing (torch raises midway).
    """
    lr, weight_decay, momentum, eps = hparams.lr, hparams.weight_decay, hparams.momentum, hparams.eps
    for g in grads:
        if g.dim() != 2:
            raise ValueError("Param gradient must be a 2D matrix")
    bufs = ops.lerp_(state["momentum_buffer"], grads, 1 - momentum)
    directions = ops.lerp_(ops.writable(grads), bufs, momentum) if static.nesterov else bufs

    check_newton_schulz_args(static.ns_coefficients, static.ns_steps)
    orthogonal, norms = [], []
    for u in directions:
        x, norm = _unit_frobenius(_wide(u.bfloat16()), eps)
        norms.append(norm)
        o = _wide_back(_quintic_iterations(x, static.ns_coefficients, static.ns_steps), u)
        # torch adds the bfloat16 result to the parameter in the wider of the two dtypes
        orthogonal.append(o.to(torch.promote_types(u.dtype, o.dtype)))
    if not static.nesterov and any(b.dtype == torch.bfloat16 for b in bufs):
        # torch normalises a bfloat16 buffer in place (see the module docstring)
        bf16 = [i for i, b in enumerate(bufs) if b.dtype == torch.bfloat16]
        bufs = list(bufs)
        for i, b in zip(bf16, ops.div_([bufs[i] for i in bf16], [norms[i] for i in bf16])):
            bufs[i] = b

    if nonzero(weight_decay):
        params = ops.mul_(params, 1 - lr * weight_decay)
    neg_lrs = ops.realize([-(lr * adjusted_lr_ratio(static.adjust_lr_fn, g.shape)) for g in grads])
    params = ops.add_(params, orthogonal, alpha=neg_lrs)
    return params, {"momentum_buffer": bufs}

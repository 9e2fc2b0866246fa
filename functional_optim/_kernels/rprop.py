"""Rprop (resilient backpropagation) step over lists of tensors.

Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning: The RPROP
Algorithm" (IEEE ICNN 1993), https://doi.org/10.1109/ICNN.1993.298623 , as ``torch.optim.Rprop``
implements it.

Each element keeps its own step size ``s`` and the previous gradient ``prev``. With gradient g
(negated if ``maximize``) and the sign of ``g * prev``:

    positive:  s <- min(s * eta_plus, s_max)                    same direction: grow
    negative:  s <- max(s * eta_minus, s_min), g <- 0           overshot: shrink, skip this element
    zero:      s unchanged (clamped to [s_min, s_max])
    theta <- theta - sign(g) * s
    prev  <- g

The three cases are chosen per element with ``torch.where`` (no host synchronisation, so the update
compiles and vmaps; torch's non-capturable code writes the same values through boolean masks). A
NaN sign keeps NaN, as in torch. ``lr`` only sets the initial step sizes (the state).
torch's for-loop and foreach code compute the same numbers here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .ops import Ops


def rprop_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One Rprop step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    eta_minus, eta_plus = hparams.etas
    step_size_min, step_size_max = hparams.step_sizes

    steps = ops.increment_(state["step"])
    if static.maximize:
        grads = ops.neg(grads)
    factors = [sign_factor(s, eta_minus, eta_plus) for s in ops.sign(ops.mul(grads, state["prev"]))]
    step_sizes = ops.clamp_(ops.mul_tensors_(state["step_size"], factors), step_size_min, step_size_max)
    grads = [torch.where(f == _like(eta_minus, f), 0.0, g) for f, g in zip(factors, grads)]
    params = ops.addcmul_(params, ops.sign(grads), step_sizes, -1)
    prevs = ops.copy_(state["prev"], grads)
    return params, {"step": steps, "prev": prevs, "step_size": step_sizes}


def sign_factor(sign: Tensor, eta_minus: Any, eta_plus: Any) -> Tensor:
    """``eta_plus`` where ``sign > 0``, ``eta_minus`` where ``sign < 0``, 1 where ``sign == 0``
    (NaN stays NaN): torch's three masked assignments, in their order, as one ``torch.where``.
    Tensor etas are cast to ``sign``'s dtype, as torch's assignment casts its numbers."""
    eta_minus, eta_plus = _like(eta_minus, sign), _like(eta_plus, sign)
    return torch.where(sign > 0, eta_plus, torch.where(sign < 0, eta_minus, torch.where(sign == 0, 1.0, sign)))


def _like(eta: Any, t: Tensor) -> Any:
    """A tensor ``eta`` in ``t``'s dtype (as a number is compared with or written into ``t``)."""
    return eta.to(t.dtype) if isinstance(eta, Tensor) else eta

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

The three cases are chosen per element with ``torch.where`` on the pure path (no host
synchronisation, so the update compiles and vmaps) and written in place through masks by the
in-place paths, as torch's non-capturable code does (:meth:`~functional_optim._kernels.ops.Ops.rprop_factors_`).
A NaN sign keeps NaN, as in torch. ``lr`` only sets the initial step sizes (the state).
torch's for-loop and foreach code compute the same numbers here.
"""

from __future__ import annotations

from typing import Any

from .ops import Ops


def rprop_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One Rprop step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    eta_minus, eta_plus = hparams.etas
    step_size_min, step_size_max = hparams.step_sizes

    steps = ops.increment_(state["step"])
    if static.maximize:
        grads = ops.neg(grads)
    signs = ops.mul(grads, state["prev"])
    # the gradient goes into ``prev`` before the signs are taken, in torch's foreach order (so where
    # an operation is missing, e.g. a DTensor sharding rule, the same one is missed first)
    prevs = ops.copy_(state["prev"], grads)
    factors = ops.rprop_factors_(ops.sign_(signs), eta_minus, eta_plus)
    step_sizes = ops.clamp_(ops.mul_tensors_(state["step_size"], factors), step_size_min, step_size_max)
    prevs = ops.zero_where_equal_(prevs, factors, eta_minus)
    params = ops.addcmul_(params, ops.sign(prevs), step_sizes, -1)
    return params, {"step": steps, "prev": prevs, "step_size": step_sizes}


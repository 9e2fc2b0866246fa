"""Adadelta step over lists of tensors.

Zeiler, "ADADELTA: An Adaptive Learning Rate Method" (2012), https://arxiv.org/abs/1212.5701.

With gradient g (negated if ``maximize``), decay rho, square average v and accumulated update u:

    g       <- g + wd * theta                                   if wd != 0 (L2 penalty)
    v       <- rho v + (1 - rho) g^2
    delta   <- sqrt(u + eps) / sqrt(v + eps) * g
    u       <- rho u + (1 - rho) delta^2
    theta   <- theta - lr * delta

The per-parameter ``step`` is counted (torch keeps it) but does not enter the math. Complex
tensors are handled as their real views (``run_kernel`` does that). The operation order follows
``torch.optim.adadelta`` so that results match it; torch has no fused Adadelta kernel.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .ops import Ops, nonzero


def adadelta_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One Adadelta step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    lr, rho, eps, weight_decay = hparams.lr, hparams.rho, hparams.eps, hparams.weight_decay
    if ops.host_scalars and isinstance(lr, Tensor):
        lr = lr.item()  # torch reads a tensor lr on the host (its for-loop also when capturable: scale_and_add_)
    square_avgs, acc_deltas = state["square_avg"], state["acc_delta"]

    steps = ops.increment_(state["step"])
    if static.maximize:
        grads = ops.neg(grads)
    if nonzero(weight_decay):
        grads = ops.add(grads, params, alpha=weight_decay)

    square_avgs = ops.mul_(square_avgs, rho)
    square_avgs = ops.addcmul_(square_avgs, grads, grads, 1 - rho)
    std = ops.sqrt_(ops.add_scalar(square_avgs, eps))
    deltas = ops.sqrt_(ops.add_scalar(acc_deltas, eps))
    if static.differentiable:
        deltas = ops.clone(deltas)  # sqrt_'s output is saved for backward: mutate a copy
    deltas = ops.div_tensors_(deltas, std)
    deltas = ops.mul_tensors_(deltas, grads)
    acc_deltas = ops.mul_(acc_deltas, rho)
    acc_deltas = ops.addcmul_(acc_deltas, deltas, deltas, 1 - rho)

    params = ops.scale_and_add_(params, deltas, -lr, scratch=True)
    return params, {"step": steps, "square_avg": square_avgs, "acc_delta": acc_deltas}

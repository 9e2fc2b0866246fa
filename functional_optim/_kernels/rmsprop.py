"""RMSprop step over lists of tensors.

Tieleman & Hinton, "Lecture 6.5 - rmsprop: Divide the gradient by a running average of its recent
magnitude", COURSERA: Neural Networks for Machine Learning (2012); the centered variant from
Graves, "Generating Sequences With Recurrent Neural Networks" (2013), https://arxiv.org/abs/1308.0850.

With gradient g (negated if ``maximize``), smoothing constant alpha, square average v, gradient
average m (``centered``) and momentum buffer b (``momentum`` mu > 0):

    g     <- g + wd * theta                      if wd != 0 (L2 penalty)
    v     <- alpha v + (1 - alpha) g^2
    m     <- lerp(m, g, 1 - alpha)               if centered
    d     <- sqrt(v - m^2) + eps  if centered, else sqrt(v) + eps
    b     <- mu b + g / d;  theta <- theta - lr b      if mu > 0
    theta <- theta - lr g / d                          otherwise

``eps`` is added after the square root, as in torch (TensorFlow adds it inside). The per-parameter
``step`` is counted (torch keeps it) but does not enter the math. The operation order follows
``torch.optim.rmsprop``; a tensor ``lr`` that stays a tensor (torch's capturable foreach code, the
pure path) divides the denominator by ``-lr`` before the update, as torch's capturable code does.
Complex tensors are handled as their real views (``run_kernel``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .ops import Ops, nonzero


def rmsprop_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One RMSprop step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    lr, alpha, eps, weight_decay, momentum = hparams
    if not static.has_momentum and isinstance(momentum, (int, float)) and momentum > 0:
        raise ValueError(
            f"rmsprop: momentum={momentum} needs a momentum buffer, and this optimizer was made without one "
            f"(make it with momentum > 0 to change the momentum between steps)"
        )
    if ops.host_scalars and isinstance(lr, Tensor):
        lr = lr.item()  # torch passes a tensor lr as alpha=/value= (read on the host)

    steps = ops.increment_(state["step"])
    if static.maximize:
        grads = ops.neg(grads)
    if nonzero(weight_decay):  # onto the negated copy in place, else into a new tensor (as torch)
        grads = ops.scale_and_add_(grads, params, weight_decay) if static.maximize else ops.add(
            grads, params, alpha=weight_decay)

    square_avgs = ops.mul_(state["square_avg"], alpha)
    square_avgs = ops.addcmul_(square_avgs, grads, grads, 1 - alpha)
    new_state = {"step": steps, "square_avg": square_avgs}
    if static.centered:
        grad_avgs = new_state["grad_avg"] = ops.lerp_(state["grad_avg"], grads, 1 - alpha)
        # torch: square_avg.addcmul(grad_avg, grad_avg, value=-1), a new tensor
        avgs = ops.sqrt_(ops.addcmul(square_avgs, grad_avgs, grad_avgs, -1))
    else:
        avgs = ops.sqrt(square_avgs)
    # under differentiable=True the square root's output is saved for backward: add into a copy
    avgs = ops.add_scalar(avgs, eps) if static.differentiable else ops.add_(avgs, eps)

    if static.has_momentum:
        bufs = new_state["momentum_buffer"] = ops.addcdiv_(ops.mul_(state["momentum_buffer"], momentum), grads, avgs)
        params = ops.scale_and_add_(params, bufs, -lr)
    elif isinstance(lr, Tensor):
        params = ops.addcdiv_(params, grads, ops.div_(avgs, -lr))
    else:
        params = ops.addcdiv_(params, grads, avgs, -lr)
    return params, new_state

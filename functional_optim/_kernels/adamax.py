"""Adamax step over lists of tensors.

Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2014), section 7.1,
https://arxiv.org/abs/1412.6980 : Adam with the infinity norm in place of the second moment.

With step t (per parameter), gradient g (negated if ``maximize``):

    g     <- g + wd * theta                     if wd != 0 (L2 penalty)
    m     <- lerp(m, g, 1 - beta1)              = beta1 m + (1 - beta1) g
    u     <- max(beta2 u, |g| + eps)            the exponentially weighted infinity norm
    theta <- theta - lr / (1 - beta1^t) * m / u

The operation order follows ``torch.optim.adamax`` (its for-loop and foreach code compute the
same numbers here). torch's capturable code keeps the step size as a tensor and folds it into the
denominator, ``theta + m / (u (beta1^t - 1) / lr)``; ``static.capturable`` (set by
``compat.Adamax``) takes that branch. With a tensor ``lr``, torch's for-loop computes the step
size with the tensor, its foreach code with ``lr.item()`` (``Ops.step_size_lr``).
"""

from __future__ import annotations

from typing import Any

from .ops import Ops


def adamax_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One Adamax step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    beta1, beta2 = hparams.betas
    lr, eps, weight_decay = hparams.lr, hparams.eps, hparams.weight_decay

    steps = ops.increment_(state["step"])
    params, grads = ops.signed_and_decayed(params, grads, static.maximize, lr, weight_decay, decoupled=False)

    exp_avgs = ops.lerp_(state["exp_avg"], grads, 1 - beta1)
    exp_infs = ops.mul_(state["exp_inf"], beta2)
    exp_infs = ops.maximum_(exp_infs, ops.add_(ops.abs(grads), eps))

    t = ops.step_values(steps)
    if static.capturable:
        inverse_steps = ops.realize(ops.per_param(lambda ti: (beta1**ti - 1).div_(lr), t))
        params = ops.addcdiv_(params, exp_avgs, ops.mul(exp_infs, inverse_steps))
    else:
        step_lr = ops.step_size_lr(lr)
        step_sizes = ops.realize(ops.per_param(lambda ti: -(step_lr / (1 - beta1**ti)), t))
        params = ops.addcdiv_(params, exp_avgs, exp_infs, step_sizes)
    return params, {"step": steps, "exp_avg": exp_avgs, "exp_inf": exp_infs}

"""RAdam step over lists of tensors.

Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond" (ICLR 2020),
https://arxiv.org/abs/1908.03265 ; decoupled weight decay: Loshchilov & Hutter, "Decoupled Weight
Decay Regularization" (2019).

With step t (per parameter), gradient g (negated if ``maximize``):

    theta <- theta * (1 - lr * wd)              if decoupled_weight_decay
    g     <- g + wd * theta                     otherwise (L2), if wd != 0
    m     <- lerp(m, g, 1 - beta1)              = beta1 m + (1 - beta1) g
    v     <- beta2 v + (1 - beta2) g^2
    rho_inf = 2 / (1 - beta2) - 1                         maximum length of the approximated SMA
    rho_t   = rho_inf - 2 t beta2^t / (1 - beta2^t)
    r_t     = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))   if rho_t > 5
    theta <- theta - lr / (1 - beta1^t) * m * r_t sqrt(1 - beta2^t) / (sqrt(v) + eps)   if rho_t > 5
    theta <- theta - lr / (1 - beta1^t) * m                                              otherwise

The switch on ``rho_t`` is data dependent. Here it is carried by ``r_t`` itself (0 where the
variance is not rectified), and :meth:`~functional_optim._kernels.ops.Ops.rectified_update_`
takes the branch: with ``torch.where`` in the pure path (no host synchronisation, so the update
compiles and vmaps), as torch's for-loop does per tensor (a Python branch on host numbers,
``torch.where`` when capturable), and as torch's foreach code folds both branches into one factor.
The step sizes are formed from the per-parameter scalars exactly as torch's code forms them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .ops import Ops


def radam_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One RAdam step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    beta1, beta2 = hparams.betas
    lr, eps, weight_decay = hparams.lr, hparams.eps, hparams.weight_decay

    steps = ops.increment_(state["step"])
    params, grads = ops.signed_and_decayed(params, grads, static.maximize, lr, weight_decay,
                                           static.decoupled_weight_decay)

    exp_avgs = ops.lerp_(state["exp_avg"], grads, 1 - beta1)
    exp_avg_sqs = ops.mul_(state["exp_avg_sq"], beta2)
    exp_avg_sqs = ops.addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    t = ops.step_values(steps)
    rho_inf = 2 / (1 - beta2) - 1
    bias_correction1 = ops.per_param(lambda ti: 1 - beta1**ti, t)
    bias_correction2 = ops.per_param(lambda ti: 1 - beta2**ti, t)
    rects = ops.per_param(lambda ti, bc2: rectification(rho_inf - 2 * ti * (beta2**ti) / bc2, rho_inf),
                          t, bias_correction2)
    params = ops.rectified_update_(params, exp_avgs, exp_avg_sqs, eps, lr, ops.realize(bias_correction1),
                                   ops.realize(bias_correction2), ops.realize(rects))
    return params, {"step": steps, "exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}


def rectification(rho_t: Any, rho_inf: Any) -> Any:
    """The variance rectification term ``r_t`` where ``rho_t > 5``, else 0.

    For a number, torch's Python expression (computed only where it applies); for a tensor the same
    expression under ``torch.where``, evaluated at ``rho_t = 6`` where it does not apply, so that
    neither its value nor its gradient is NaN there (below 4 the root's argument is negative).
    """
    if not isinstance(rho_t, Tensor):
        if rho_t > 5:
            return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        return 0.0
    rectified = rho_t > 5.0
    safe = torch.where(rectified, rho_t, 6.0)
    rect = ((safe - 4) * (safe - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * safe)) ** 0.5
    return torch.where(rectified, rect, 0.0)

"""Adam / AdamW step over lists of tensors.

Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2014), https://arxiv.org/abs/1412.6980;
AMSGrad: Reddi et al., "On the Convergence of Adam and Beyond" (2018);
decoupled weight decay: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019).

With step t (per parameter), gradient g (negated if ``maximize``):

    theta <- theta * (1 - lr * wd)              if decoupled_weight_decay
    g     <- g + wd * theta                     otherwise (L2), if wd != 0
    m     <- lerp(m, g, 1 - beta1)              = beta1 m + (1 - beta1) g
    v     <- beta2 v + (1 - beta2) g^2
    vmax  <- max(vmax, v)                       if amsgrad (then v := vmax below)
    theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

The operation order follows ``torch.optim.adam``'s for-loop path so that results match it.
torch's capturable and differentiable code (step sizes as tensors) folds the step size into the
denominator, its for-loop and its foreach code each in its own order; ``Ops.neg_quotients`` and
``Ops.addcdiv_sqrt_`` give each in-place ``Ops`` the rounding of torch's implementation of the
same name.
"""

from __future__ import annotations

from typing import Any

import torch

from .ops import Ops


def adam_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One Adam step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    beta1, beta2 = hparams.betas
    lr, eps, weight_decay = hparams.lr, hparams.eps, hparams.weight_decay
    exp_avgs, exp_avg_sqs = state["exp_avg"], state["exp_avg_sq"]

    steps = ops.increment_(state["step"])
    params, grads = ops.signed_and_decayed(params, grads, static.maximize, lr, weight_decay,
                                           static.decoupled_weight_decay)

    exp_avgs = ops.lerp_(exp_avgs, grads, 1 - beta1)
    exp_avg_sqs = ops.mul_(exp_avg_sqs, beta2)
    exp_avg_sqs = ops.addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    t = ops.step_values(steps)
    neg_step_size = ops.realize(ops.neg_quotients(lr, ops.per_param(lambda ti: 1 - beta1**ti, t)))
    bias_correction2_sqrt = ops.realize(ops.per_param(lambda ti: (1 - beta2**ti) ** 0.5, t))

    new_state = {"step": steps, "exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}
    second_moment = exp_avg_sqs
    if static.amsgrad:
        second_moment = new_state["max_exp_avg_sq"] = ops.maximum_(state["max_exp_avg_sq"], exp_avg_sqs)

    params = ops.addcdiv_sqrt_(params, exp_avgs, second_moment, bias_correction2_sqrt, eps, neg_step_size)
    return params, new_state


def adam_fused_(params, grads, state: dict, hparams: Any, static: Any, grad_scale=None, found_inf=None) -> None:
    """In place, with ``torch._fused_adam_`` / ``torch._fused_adamw_`` (one device/dtype group; the
    caller counts the step and uncounts it when GradScaler found infs)."""
    fused = torch._fused_adamw_ if static.decoupled_weight_decay else torch._fused_adam_
    beta1, beta2 = hparams.betas
    fused(
        params,
        grads,
        state["exp_avg"],
        state["exp_avg_sq"],
        state["max_exp_avg_sq"] if static.amsgrad else [],
        state["step"],
        amsgrad=static.amsgrad,
        lr=hparams.lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=hparams.weight_decay,
        eps=hparams.eps,
        maximize=static.maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )

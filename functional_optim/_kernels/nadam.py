"""NAdam step over lists of tensors.

Dozat, "Incorporating Nesterov Momentum into Adam" (ICLR 2016 workshop),
https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ ; decoupled weight decay ("NAdamW"):
Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019).

With step t (per parameter), gradient g (negated if ``maximize``), momentum decay psi:

    theta <- theta * (1 - lr * wd)              if decoupled_weight_decay
    g     <- g + wd * theta                     otherwise (L2), if wd != 0
    mu_t  =  beta1 * (1 - 0.5 * 0.96^(t psi))             momentum schedule
    mu_{t+1} = beta1 * (1 - 0.5 * 0.96^((t+1) psi))
    P     <- P * mu_t                           the per-parameter ``mu_product`` = prod_{i<=t} mu_i
    m     <- lerp(m, g, 1 - beta1)              = beta1 m + (1 - beta1) g
    v     <- beta2 v + (1 - beta2) g^2
    d     =  sqrt(v) / sqrt(1 - beta2^t) + eps
    theta <- theta - lr (1 - mu_t) / (1 - P) * g / d
                   - lr mu_{t+1} / (1 - P mu_{t+1}) * m / d

``P`` is kept in its own (scalar) dtype, float32 by default, as torch keeps ``state["mu_product"]``;
the step sizes are computed in double precision from its value, as ``torch.optim.NAdam`` does
with ``.item()``. Under ``differentiable`` torch instead computes them with the ``mu_product``
tensors themselves; ``static.differentiable`` reproduces that.
"""

from __future__ import annotations

from typing import Any

from .ops import Ops


def nadam_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One NAdam step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    beta1, beta2 = hparams.betas
    lr, eps, weight_decay, psi = hparams.lr, hparams.eps, hparams.weight_decay, hparams.momentum_decay
    exp_avgs, exp_avg_sqs = state["exp_avg"], state["exp_avg_sq"]

    steps = ops.increment_(state["step"])
    params, grads = ops.signed_and_decayed(params, grads, static.maximize, lr, weight_decay,
                                           static.decoupled_weight_decay)

    t = ops.step_values(steps)
    mus = [beta1 * (1.0 - 0.5 * (0.96 ** (ti * psi))) for ti in t]
    mu_nexts = [beta1 * (1.0 - 0.5 * (0.96 ** ((ti + 1) * psi))) for ti in t]
    bias_correction2_sqrt = ops.realize([(1 - beta2**ti) ** 0.5 for ti in t])
    mu_products = ops.mul_(state["mu_product"], mus)

    exp_avgs = ops.lerp_(exp_avgs, grads, 1 - beta1)
    exp_avg_sqs = ops.mul_(exp_avg_sqs, beta2)
    exp_avg_sqs = ops.addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    denom = ops.sqrt(exp_avg_sqs)
    denom = ops.div_(denom, bias_correction2_sqrt)
    denom = ops.add_(denom, eps)

    # mu_product read like the steps (Python floats or float64), or used as is (torch's differentiable path)
    prods = mu_products if static.differentiable else ops.scalar_values(mu_products)
    grad_step = ops.realize([(-lr * (1.0 - mu)) / (1.0 - p) for mu, p in zip(mus, prods)])
    exp_avg_step = ops.realize([(-lr * mu_next) / (1.0 - p * mu_next) for mu_next, p in zip(mu_nexts, prods)])
    params = ops.addcdiv_(params, grads, denom, grad_step)
    params = ops.addcdiv_(params, exp_avgs, denom, exp_avg_step)
    return params, {"step": steps, "mu_product": mu_products, "exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}

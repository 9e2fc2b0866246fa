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

torch's two implementations round differently, and each in-place ``Ops`` follows its own: the
for-loop computes ``d`` as ``sqrt(v / (1 - beta2^t))``, the foreach code as
``sqrt(v) / sqrt(1 - beta2^t)`` (``Ops.sqrt_div``); with tensor step sizes (``capturable``,
``differentiable``) both scale ``g`` and ``m`` before dividing (``Ops.add_scaled_quotients_``),
and the capturable foreach code forms ``(t + 1) psi`` as ``t psi + psi`` (``Ops.next_step_times``).
With a tensor ``lr``, torch's foreach code reads it with ``.item()`` for the step sizes and its
for-loop computes them with the tensor (``Ops.step_size_lr``).
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
    mus = ops.per_param(lambda ti: _momentum(beta1, ti * psi), t)
    mu_nexts = ops.per_param(lambda e: _momentum(beta1, e), ops.next_step_times(t, psi))
    bias_correction2 = ops.realize(ops.per_param(lambda ti: 1 - beta2**ti, t))
    mu_products = ops.mul_(state["mu_product"], mus)

    exp_avgs = ops.lerp_(exp_avgs, grads, 1 - beta1)
    exp_avg_sqs = ops.mul_(exp_avg_sqs, beta2)
    exp_avg_sqs = ops.addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    denom = ops.sqrt_div(exp_avg_sqs, bias_correction2)
    denom = ops.add_(denom, eps)

    # mu_product read like the steps (Python floats or float64), or used as is (torch's differentiable path)
    prods = mu_products if static.differentiable else ops.scalar_values(mu_products)
    step_lr = ops.step_size_lr(lr)
    grad_step = ops.realize(ops.per_param(lambda mu, p: (-step_lr * (1.0 - mu)) / (1.0 - p), mus, prods))
    exp_avg_step = ops.realize(ops.per_param(lambda mu_next, p: (-step_lr * mu_next) / (1.0 - p * mu_next),
                                             mu_nexts, prods))
    terms = [(grads, grad_step), (exp_avgs, exp_avg_step)]
    if static.differentiable or not ops.host_scalars:
        # torch's differentiable and capturable code keeps the step sizes as tensors
        params = ops.add_scaled_quotients_(params, terms, denom)
    else:
        for numerators, step_size in terms:
            params = ops.addcdiv_(params, numerators, denom, step_size)
    return params, {"step": steps, "mu_product": mu_products, "exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}


def _momentum(beta1: Any, exponent: Any) -> Any:
    """The momentum schedule ``mu = beta1 (1 - 0.5 * 0.96^exponent)``, ``exponent = t psi``."""
    return beta1 * (1.0 - 0.5 * (0.96**exponent))

"""ASGD (averaged stochastic gradient descent) step over lists of tensors.

Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging" (SIAM J. Control and
Optimization, 1992), https://doi.org/10.1137/0330046 , as ``torch.optim.ASGD`` implements it.

With step t (per parameter), gradient g (negated if ``maximize``), per-parameter step size
``eta`` and averaging weight ``mu`` (both 0-d tensors in the state, as torch keeps them):

    g     <- g + wd * theta                     if wd != 0 (L2 penalty)
    theta <- theta (1 - lambd eta) - eta g      an SGD step with decay lambd
    ax    <- ax + mu (theta - ax)               the Polyak average (ax = theta while mu = 1)
    eta   <- lr / (1 + lambd lr t)^alpha
    mu    <- 1 / max(1, t - t0)                 averaging starts after t0 steps

The step uses the ``eta`` and ``mu`` of the previous step. torch's for-loop and foreach code
compute this differently (``theta - eta (g + lambd theta)`` and always ``ax + mu (theta - ax)`` in
foreach; ``eta`` from the step tensors in their own dtype in foreach), and the for-loop reads
``eta`` and ``mu`` on the host unless ``capturable``: ``Ops.decay_and_add_``, ``Ops.average_`` and
``Ops.power_schedule`` give each in-place ``Ops`` torch's order; the pure path decides
``mu == 1`` with ``torch.where``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .ops import Ops, nonzero


def asgd_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One ASGD step; returns ``(params, state)`` (the same tensors when ``ops`` is in place)."""
    lr, lambd, alpha, t0, weight_decay = hparams.lr, hparams.lambd, hparams.alpha, hparams.t0, hparams.weight_decay

    steps = ops.increment_(state["step"])
    if static.maximize:
        grads = ops.neg(grads)
    if nonzero(weight_decay):
        grads = ops.add(grads, params, alpha=weight_decay)

    params = ops.decay_and_add_(params, grads, lambd, state["eta"])
    axs = ops.average_(state["ax"], params, state["mu"])

    etas = ops.copy_(state["eta"], ops.power_schedule(steps, lr, lambd, alpha))
    mus = ops.copy_(state["mu"], ops.per_param(lambda t: averaging_weight(t, t0), ops.step_values(steps)))
    return params, {"step": steps, "eta": etas, "mu": mus, "ax": axs}


def averaging_weight(t: Any, t0: Any) -> Any:
    """``1 / max(1, t - t0)``: a number for a number ``t`` (torch's host math), else a tensor."""
    if isinstance(t, Tensor):
        return 1 / torch.clamp(t - t0, min=1.0)
    return 1 / max(1, t - t0)

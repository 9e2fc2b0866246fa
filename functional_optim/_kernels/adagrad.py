"""Adagrad step over lists of tensors.

Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization", JMLR 12 (2011), http://jmlr.org/papers/v12/duchi11a.html.

With step t (per parameter), gradient g (negated if ``maximize``) and state ``sum``
(initialised to ``initial_accumulator_value``):

    g     <- g + wd * theta                           if wd != 0
    clr   =  lr / (1 + (t - 1) * lr_decay)
    sum   <- sum + g^2
    theta <- theta - clr * g / (sqrt(sum) + eps)

A sparse (COO) gradient updates only the entries it holds, as ``torch.optim.adagrad`` does: it
is coalesced (the update is not linear, so indices must be unique), ``g^2`` is added to ``sum``
at those indices, and ``theta`` moves by ``-clr * g / (sqrt(sum) + eps)`` read at the same
indices. Sparse gradients are incompatible with ``weight_decay`` (the definition's
``check_grad`` raises torch's error before the step), and their complex values are used as
complex numbers (torch views complex tensors as real only on the dense path).

The operation order follows ``torch.optim.adagrad``'s for-loop path so that results match it;
torch's foreach code scales the gradient by ``-clr`` before dividing (``Ops.scale_and_addcdiv_``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .ops import Ops, nonzero


def adagrad_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One Adagrad step; returns ``(params, state)`` (the same tensors when ``ops`` is in place).

    Dense and sparse gradients may be mixed in one call (``PureOps``/``LoopOps``); ``ForeachOps``
    is only handed dense ones (torch runs a device group holding a sparse grad one by one).
    """
    lr, lr_decay, eps = hparams.lr, hparams.lr_decay, hparams.eps
    steps = ops.increment_(state["step"])
    if static.maximize:
        grads = ops.neg(grads)  # the kernel's own tensors from here on (see _dense_step)
    t = ops.step_values(steps)
    neg_clr = ops.per_param(lambda ti: -(lr / (1 + (ti - 1) * lr_decay)), t)

    sparse = [i for i, g in enumerate(grads) if g.is_sparse]
    if not sparse:
        params, sums = _dense_step(ops, params, grads, state["sum"], neg_clr, hparams.weight_decay, eps,
                                   static.maximize)
        return params, {"step": steps, "sum": sums}

    dense = [i for i, g in enumerate(grads) if not g.is_sparse]
    new_params, new_sums = list(params), list(state["sum"])
    if dense:
        _put((new_params, new_sums), dense, _dense_step(
            ops, _take(params, dense), _take(grads, dense), _take(state["sum"], dense), _take(neg_clr, dense),
            hparams.weight_decay, eps, static.maximize,
        ))
    _put((new_params, new_sums), sparse, _sparse_step(
        ops, _take(params, sparse), _take(grads, sparse), _take(state["sum"], sparse), _take(neg_clr, sparse), eps
    ))
    return new_params, {"step": steps, "sum": new_sums}


def _dense_step(ops: Ops, params, grads, sums, neg_clr, weight_decay, eps, own_grads: bool):
    """``own_grads``: the grads are the kernel's temporaries (negated for ``maximize``), which
    the final update may overwrite, as torch's foreach code does."""
    if nonzero(weight_decay):
        grads = ops.add(grads, params, alpha=weight_decay)
        own_grads = True
    sums = ops.addcmul_(sums, grads, grads, 1)
    std = ops.add_(ops.sqrt(sums), eps)
    params = ops.scale_and_addcdiv_(params, grads, std, neg_clr, scratch=own_grads)
    return params, sums


def _sparse_step(ops: Ops, params, grads, sums, neg_clr, eps):
    grads = [g.coalesce() for g in grads]
    sums = ops.add_(sums, [_sparse_like(g, g._values().pow(2)) for g in grads])
    steps = []
    for g, s in zip(grads, sums):
        std_values = s.sparse_mask(g)._values().sqrt() + eps
        steps.append(_sparse_like(g, g._values() / std_values))
    params = ops.add_(params, steps, alpha=neg_clr)
    return params, sums


def _sparse_like(grad: Tensor, values: Tensor) -> Tensor:
    """A COO tensor with ``grad``'s (coalesced) indices and size, holding ``values``."""
    return torch.sparse_coo_tensor(grad._indices(), values, grad.size())


def _take(xs: list, idx: list) -> list:
    return [xs[i] for i in idx]


def _put(dsts: tuple, idx: list, srcs: tuple) -> None:
    """``dst[idx[j]] = src[j]`` for each pair of lists."""
    for dst, src in zip(dsts, srcs):
        for j, i in enumerate(idx):
            dst[i] = src[j]


def adagrad_fused_(params, grads, state: dict, hparams: Any, static: Any, grad_scale=None, found_inf=None) -> None:
    """In place, with ``torch._fused_adagrad_`` (one device/dtype group; dense, real tensors)."""
    torch._fused_adagrad_(
        params,
        grads,
        state["sum"],
        state["step"],
        lr=hparams.lr,
        lr_decay=hparams.lr_decay,
        weight_decay=hparams.weight_decay,
        eps=hparams.eps,
        maximize=static.maximize,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )

"""SGD (with momentum, dampening, Nesterov momentum and L2 weight decay) over lists of tensors.

Robbins & Monro, "A Stochastic Approximation Method" (1951); momentum: Polyak, "Some methods of
speeding up the convergence of iteration methods" (1964); Nesterov momentum in the form of
Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum in deep
learning" (ICML 2013), as ``torch.optim.SGD`` writes it.

With gradient g (negated if ``maximize``), momentum mu, dampening tau and momentum buffer b:

    g     <- g + wd * theta                    if wd != 0 (L2 penalty)
    b     <- g                                 on the parameter's first step   } if mu != 0
    b     <- mu b + (1 - tau) g                afterwards                      }
    g     <- g + mu b  if nesterov, else b                                     }
    theta <- theta - lr * g

The first step copies the gradient into the buffer (no dampening), as torch does. The pure path
keeps a zero buffer from ``init`` and a per-parameter ``step`` count: ``mu * 0 + g`` is exactly
``g``, and with dampening a ``lerp`` with weight ``t == 1`` (1 on the first step, 0 afterwards)
takes ``g`` itself there (no branch, no host synchronisation: it compiles and vmaps; momentum
and dampening enter as given, not as per-parameter tensors rounded to a half dtype). The in-place paths
(compat) follow torch's state instead: a missing buffer (``None``) is created as
``g.detach().clone()``, and as in torch's foreach code a list that holds one is stepped one tensor
at a time.

Where torch's implementations differ, the kernel follows each: its foreach code adds the
Nesterov term into the gradient list in place (:func:`_nesterov_grads`), its for-loop keeps a
``weight_decay`` or ``lr`` tensor that requires grad as a tensor (``addcmul_``). torch runs SGD on
complex tensors as complex numbers; the in-place callers pass them as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .ops import ForeachOps, Ops, nonzero


def _requires_grad(x: Any) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


def _nesterov_grads(ops: Ops, grads: list, bufs: list, momentum: Any) -> list:
    """``g + mu b``. torch's foreach SGD adds it into the gradient list in place (``p.grad``
    itself holds it after the step when neither ``maximize`` nor ``weight_decay`` made a copy);
    its for-loop, like the pure path, makes new tensors. The rounding is the same."""
    if isinstance(ops, ForeachOps):
        return ops.scale_and_add_(grads, bufs, momentum)
    return ops.add(grads, bufs, alpha=momentum)


def _momentum_buffers(ops: Ops, bufs: list, grads: list, steps: Any, momentum: Any, dampening: Any) -> list:
    """The new momentum buffers ``mu b + (1 - tau) g``, ``g`` itself on a parameter's first step.

    In-place paths (``steps`` is None): torch's state, where a buffer not created yet is ``None``.
    Pure path: the buffer starts at zeros, so ``mu * 0 + (1 - tau) g`` is the first step; with
    dampening, a ``lerp`` towards ``g`` with weight 1 on the first step (``t == 1``, from the
    per-parameter count) and 0 afterwards makes it exactly ``g`` and changes nothing later.
    """
    if steps is None and any(b is None for b in bufs):  # torch creates missing buffers one tensor at a time
        return [g.detach().clone() if b is None else b.mul_(momentum).add_(g, alpha=1 - dampening)
                for b, g in zip(bufs, grads)]
    bufs = ops.scale_and_add_(ops.mul_(bufs, momentum), grads, 1 - dampening)
    if steps is not None and nonzero(dampening):
        first = ops.realize(ops.per_param(lambda t: (t == 1).to(t.dtype), ops.step_values(steps)))
        bufs = ops.lerp_(bufs, grads, first)
    return bufs


def sgd_kernel(ops: Ops, params: list, grads: list, state: dict, hparams: Any, static: Any):
    """One SGD step; returns ``(params, state)`` (the same tensors when ``ops`` is in place).

    ``state`` holds ``momentum_buffer`` (when ``static.has_momentum``) and, on the pure path, ``step``
    (the per-parameter count that tells the first step). The compat layer passes no ``step``
    (torch keeps none) and ``None`` for buffers not created yet; it also hands hyperparameters
    in the form torch's implementation reads them (numbers, or tensors where torch keeps them).
    """
    lr, momentum, dampening, weight_decay = hparams.lr, hparams.momentum, hparams.dampening, hparams.weight_decay
    if not static.has_momentum and isinstance(momentum, (int, float)) and momentum != 0:
        raise ValueError(
            f"sgd: momentum={momentum} needs a momentum buffer, and this optimizer was made without one "
            f"(make it with momentum != 0 to change the momentum between steps)"
        )
    new_state: dict = {}
    steps = state.get("step")
    if steps is not None:
        steps = new_state["step"] = ops.increment_(steps)
        if static.has_momentum:  # the pure path's buffers are dense: a sparse gradient joins them dense
            grads = [g.to_dense() if g.is_sparse else g for g in grads]

    if static.maximize:
        grads = ops.neg(grads)
    if nonzero(weight_decay):
        if _requires_grad(weight_decay):  # torch's for-loop: grad.addcmul_(param.clone(), wd)
            grads = ops.addcmul_(grads, params, [weight_decay.to(p.dtype) for p in params])
        elif static.maximize:  # onto the negated copy, in place (torch's foreach code)
            grads = ops.scale_and_add_(grads, params, weight_decay)
        else:
            grads = ops.add(grads, params, alpha=weight_decay)

    if static.has_momentum:
        bufs = new_state["momentum_buffer"] = _momentum_buffers(
            ops, state["momentum_buffer"], grads, steps, momentum, dampening)
        grads = _nesterov_grads(ops, grads, bufs, momentum) if static.nesterov else bufs

    if _requires_grad(lr):  # torch's for-loop: param.addcmul_(grad, lr, value=-1)
        params = ops.addcmul_(params, grads, [lr.to(p.dtype) for p in params], -1)
    else:
        params = ops.scale_and_add_(params, grads, -lr)
    return params, new_state


def sgd_fused_(params: list, grads: list, momentum_buffers: list, hparams: Any, static: Any,
               is_first_step: bool, grad_scale=None, found_inf=None) -> None:
    """In place, with ``torch._fused_sgd_`` (one device/dtype group; ``momentum_buffers`` empty
    without momentum, freshly allocated on the first step, which the kernel fills with ``g``)."""
    torch._fused_sgd_(
        params,
        grads,
        momentum_buffers,
        weight_decay=hparams.weight_decay,
        momentum=hparams.momentum,
        lr=hparams.lr,
        dampening=hparams.dampening,
        nesterov=static.nesterov,
        maximize=static.maximize,
        is_first_step=is_first_step,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )

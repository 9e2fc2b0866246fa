"""RMSprop as a functional optimizer (math in :mod:`functional_optim._kernels.rmsprop`)."""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.rmsprop import rmsprop_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["rmsprop", "RMSpropHParams", "RMSpropState", "RMSpropStatic", "RMSPROP", "validate"]


class RMSpropHParams(NamedTuple):
    """RMSprop's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1e-2
    alpha: Number = 0.99
    eps: Number = 1e-8
    weight_decay: Number = 0.0
    momentum: Number = 0.0


class RMSpropStatic(NamedTuple):
    """Choices fixed when the optimizer is made (they change the state or the code path).

    ``centered`` keeps ``grad_avg``; ``has_momentum`` (``momentum > 0`` at construction) keeps
    ``momentum_buffer``, whose decay is the ``momentum`` hparam (it may change between steps).
    ``differentiable`` is set by ``compat.RMSprop(differentiable=True)``: its in-place for-loop then
    adds ``eps`` into a copy, as torch does, so autograd can run through it. The pure ``update``
    never mutates and is always differentiable, so the functional factory leaves it off.
    """

    centered: bool = False
    has_momentum: bool = False
    maximize: bool = False
    differentiable: bool = False


class RMSpropState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.RMSprop``'s ``state[p]`` (``EMPTY`` for the
    slots the static choices leave out)."""

    step: object
    square_avg: object
    momentum_buffer: object  # if momentum > 0
    grad_avg: object  # if centered


def _init_slots(p: Tensor, hparams: Any, static: RMSpropStatic) -> dict:
    zeros = lambda: torch.zeros_like(p, memory_format=torch.preserve_format)  # noqa: E731
    return {
        "square_avg": zeros(),
        "momentum_buffer": zeros() if static.has_momentum else None,
        "grad_avg": zeros() if static.centered else None,
    }


def _slot_shapes(shape: torch.Size, static: RMSpropStatic) -> dict:
    return {
        "square_avg": shape,
        "momentum_buffer": shape if static.has_momentum else None,
        "grad_avg": shape if static.centered else None,
    }


def _check_grad(grad: Tensor, hparams: Any, static: Any) -> None:
    if grad.is_sparse:
        raise RuntimeError("RMSprop does not support sparse gradients")


RMSPROP = OptimizerDefinition(
    name="rmsprop",
    hparams_type=RMSpropHParams,
    static_type=RMSpropStatic,
    state_type=RMSpropState,
    init_slots=_init_slots,
    kernel=rmsprop_kernel,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
    slot_shapes=_slot_shapes,
    elementwise=True,
)


def validate(hparams: RMSpropHParams) -> None:
    """torch.optim.RMSprop's hyperparameter checks (same order, exception types and messages)."""
    _validate.check_lr(hparams.lr)
    _validate.check_eps(hparams.eps)
    if not 0.0 <= hparams.momentum:
        raise ValueError(f"Invalid momentum value: {hparams.momentum}")
    _validate.check_weight_decay(hparams.weight_decay)
    if not 0.0 <= hparams.alpha:
        raise ValueError(f"Invalid alpha value: {hparams.alpha}")


def rmsprop(
    lr: Number = 1e-2,
    alpha: Number = 0.99,
    eps: Number = 1e-8,
    weight_decay: Number = 0.0,
    momentum: Number = 0.0,
    centered: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """RMSprop (Tieleman & Hinton, 2012), equal to ``torch.optim.RMSprop`` step by step.

    ``v <- alpha v + (1 - alpha) g^2`` and ``theta <- theta - lr g / (sqrt(v) + eps)``; ``centered``
    (Graves, 2013) subtracts the squared running mean of the gradient from ``v`` under the root,
    ``momentum`` > 0 accumulates ``b <- mu b + g / (sqrt(v) + eps)`` and steps by ``-lr b``,
    ``weight_decay`` is an L2 penalty added to the gradient, ``maximize`` ascends.
    ``update(grads, state, params, hparams=None)`` takes an :class:`RMSpropHParams` to change the
    numbers between steps (floats, or 0-d tensors to avoid recompiling under torch.compile).

    Example::

        opt = fo.rmsprop(lr=1e-3, momentum=0.9, centered=True)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    """
    hparams = RMSpropHParams(lr, alpha, eps, weight_decay, momentum)
    validate(hparams)
    static = RMSpropStatic(centered=bool(centered), has_momentum=bool(momentum > 0), maximize=bool(maximize))
    return make_transformation(RMSPROP, hparams, static)

"""Adadelta as a functional optimizer (math in :mod:`functional_optim._kernels.adadelta`)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.adadelta import adadelta_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["adadelta", "AdadeltaHParams", "AdadeltaState", "AdadeltaStatic", "ADADELTA"]


class AdadeltaHParams(NamedTuple):
    """Adadelta's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1.0
    rho: Number = 0.9
    eps: Number = 1e-6
    weight_decay: Number = 0.0


class AdadeltaStatic(NamedTuple):
    """Choices fixed when the optimizer is made (they change the code path).

    ``differentiable`` is set by ``compat.Adadelta(differentiable=True)``: its in-place for-loop
    step then copies one temporary, as torch does, so autograd can run through it. The pure
    ``update`` never mutates and is always differentiable, so the functional factory leaves it off.
    """

    maximize: bool = False
    differentiable: bool = False


class AdadeltaState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.Adadelta``'s ``state[p]``."""

    step: object
    square_avg: object
    acc_delta: object


def _init_slots(p: Tensor, hparams: AdadeltaHParams, static: AdadeltaStatic) -> dict:
    return {
        "square_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "acc_delta": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def _check_grad(grad: Tensor, hparams, static) -> None:
    if grad.is_sparse:
        raise RuntimeError("Adadelta does not support sparse gradients")


ADADELTA = OptimizerDefinition(
    name="adadelta",
    elementwise=True,
    hparams_type=AdadeltaHParams,
    static_type=AdadeltaStatic,
    state_type=AdadeltaState,
    init_slots=_init_slots,
    kernel=adadelta_kernel,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
)


def validate(hparams: AdadeltaHParams) -> None:
    """torch.optim.Adadelta's hyperparameter checks (same order, exception types and messages)."""
    _validate.check_lr(hparams.lr)
    _validate.check_rho(hparams.rho)
    _validate.check_eps(hparams.eps)
    _validate.check_weight_decay(hparams.weight_decay)


def adadelta(
    lr: Number = 1.0,
    rho: Number = 0.9,
    eps: Number = 1e-6,
    weight_decay: Number = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adadelta (Zeiler, 2012), equal to ``torch.optim.Adadelta`` step by step.

    Keeps running averages of squared gradients ``v`` and squared updates ``u`` (decay ``rho``)
    and steps ``theta <- theta - lr * sqrt(u + eps) / sqrt(v + eps) * g``; ``weight_decay`` is an
    L2 penalty added to the gradient, ``maximize`` ascends. ``update(grads, state, params,
    hparams=None)`` takes an :class:`AdadeltaHParams` to change the numbers between steps (floats,
    or 0-d tensors to avoid recompiling under torch.compile).
    """
    hparams = AdadeltaHParams(lr, rho, eps, weight_decay)
    validate(hparams)
    return make_transformation(ADADELTA, hparams, AdadeltaStatic(maximize=maximize))

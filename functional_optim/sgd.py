"""SGD as a functional optimizer (math in :mod:`functional_optim._kernels.sgd`)."""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
from torch import Tensor

from ._definition import OptimizerDefinition, make_transformation
from ._kernels.ops import nonzero
from ._kernels.sgd import sgd_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["sgd", "SGDHParams", "SGDState", "SGDStatic", "SGD", "validate", "SPARSE_WEIGHT_DECAY_ERROR"]


class SGDHParams(NamedTuple):
    """SGD's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1e-3
    momentum: Number = 0.0
    dampening: Number = 0.0
    weight_decay: Number = 0.0


class SGDStatic(NamedTuple):
    """Choices fixed when the optimizer is made.

    ``has_momentum`` (``momentum != 0`` at construction) gives the state its ``momentum_buffer``;
    the momentum *value* is an hparam and may change between steps (with a buffer, ``momentum=0``
    then gives ``b = (1 - dampening) g``). ``nesterov`` and ``maximize`` choose the code path.
    """

    has_momentum: bool = False
    nesterov: bool = False
    maximize: bool = False


class SGDState(NamedTuple):
    """Per-parameter state: ``momentum_buffer`` as ``torch.optim.SGD``'s ``state[p]``, plus ``step``.

    torch keeps no step count for SGD; its buffer is created at a parameter's first step as a copy
    of the gradient. Here the buffer starts at zeros (``EMPTY`` without momentum) and ``step``, a
    0-d float32 count per leaf as in the other optimizers, tells that first step without any
    branch or host synchronisation (only whether it is 0 matters to the math).
    """

    step: object
    momentum_buffer: object


def _init_slots(p: Tensor, hparams: SGDHParams, static: SGDStatic) -> dict:
    buf = torch.zeros_like(p, memory_format=torch.preserve_format) if static.has_momentum else None
    return {"momentum_buffer": buf}


def _slot_shapes(shape: torch.Size, static: SGDStatic) -> dict:
    return {"momentum_buffer": shape if static.has_momentum else None}


#: torch's error for a sparse gradient with weight decay (its ``grad.add(param)`` is sparse + dense)
SPARSE_WEIGHT_DECAY_ERROR = "add(sparse, dense) is not supported. Use add(dense, sparse) instead."


def check_grad(grad: Tensor, hparams: Any, static: Any) -> None:
    """torch's error for a sparse gradient with weight decay, raised before anything is computed
    (a tensor ``weight_decay`` counts as nonzero: its value is not read)."""
    if grad.is_sparse and nonzero(hparams.weight_decay):
        raise RuntimeError(SPARSE_WEIGHT_DECAY_ERROR)


SGD = OptimizerDefinition(
    name="sgd",
    hparams_type=SGDHParams,
    static_type=SGDStatic,
    state_type=SGDState,
    init_slots=_init_slots,
    kernel=sgd_kernel,
    supports_sparse=True,
    check_grad=check_grad,
    slot_shapes=_slot_shapes,
    elementwise=True,
)


def validate(lr: Any, momentum: Any, dampening: Any, weight_decay: Any, nesterov: bool) -> None:
    """torch.optim.SGD's checks, in its order and with its messages (``x < 0`` comparisons, so a
    NaN passes as in torch)."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def sgd(
    lr: Number = 1e-3,
    momentum: Number = 0.0,
    dampening: Number = 0.0,
    weight_decay: Number = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Stochastic gradient descent with momentum, equal to ``torch.optim.SGD`` step by step.

    ``g <- g + wd theta``; with ``momentum`` mu != 0 a buffer ``b <- mu b + (1 - dampening) g``
    (``b <- g`` on a parameter's first step, as torch) and ``g <- g + mu b`` (``nesterov``, Sutskever
    et al., 2013) or ``g <- b``; then ``theta <- theta - lr g``. ``maximize`` ascends.
    ``update(grads, state, params, hparams=None)`` takes an :class:`SGDHParams` to change the
    numbers between steps (floats, or 0-d tensors to avoid recompiling under torch.compile).
    Sparse (COO) gradients are accepted, except with ``weight_decay`` (torch's error).

    Example::

        opt = fo.sgd(lr=0.1, momentum=0.9, nesterov=True)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    """
    validate(lr, momentum, dampening, weight_decay, nesterov)
    static = SGDStatic(has_momentum=bool(momentum != 0), nesterov=bool(nesterov), maximize=bool(maximize))
    return make_transformation(SGD, SGDHParams(lr, momentum, dampening, weight_decay), static)

"""Adagrad as a functional optimizer (math in :mod:`functional_optim._kernels.adagrad`)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.adagrad import adagrad_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["adagrad", "AdagradHParams", "AdagradState", "AdagradStatic", "ADAGRAD"]


class AdagradHParams(NamedTuple):
    """Adagrad's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1e-2
    lr_decay: Number = 0.0
    weight_decay: Number = 0.0
    eps: Number = 1e-10


class AdagradStatic(NamedTuple):
    """Choices fixed when the optimizer is made.

    ``initial_accumulator_value`` only fills the ``sum`` slot at ``init``, so it lives here and
    not among the per-step hyperparameters.
    """

    initial_accumulator_value: float = 0.0
    maximize: bool = False


class AdagradState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.Adagrad``'s ``state[p]``."""

    step: object
    sum: object


def _init_slots(p: Tensor, hparams, static: AdagradStatic) -> dict:
    value = static.initial_accumulator_value
    if torch.is_complex(p):
        value = complex(value, value)  # as torch: both the real and the imaginary part
    return {"sum": torch.full_like(p, value, memory_format=torch.preserve_format)}


def _check_grad(grad: Tensor, hparams: AdagradHParams, static: AdagradStatic) -> None:
    if grad.is_sparse and hparams.weight_decay != 0:
        raise RuntimeError("weight_decay option is not compatible with sparse gradients")


ADAGRAD = OptimizerDefinition(
    name="adagrad",
    elementwise=True,
    hparams_type=AdagradHParams,
    static_type=AdagradStatic,
    state_type=AdagradState,
    init_slots=_init_slots,
    kernel=adagrad_kernel,
    supports_sparse=True,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
)


def validate(hparams: AdagradHParams, initial_accumulator_value: float) -> None:
    """torch.optim.Adagrad's hyperparameter checks (same order, exception types and messages)."""
    _validate.check_lr(hparams.lr)
    _validate.check_lr_decay(hparams.lr_decay)
    _validate.check_weight_decay(hparams.weight_decay)
    _validate.check_initial_accumulator_value(initial_accumulator_value)
    _validate.check_eps(hparams.eps)


def adagrad(
    lr: Number = 1e-2,
    lr_decay: Number = 0.0,
    weight_decay: Number = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: Number = 1e-10,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adagrad (Duchi, Hazan & Singer, 2011), equal to ``torch.optim.Adagrad`` step by step.

    Each parameter accumulates the sum of its squared gradients (starting at
    ``initial_accumulator_value``) and steps by ``lr / (1 + (t - 1) * lr_decay)`` times the
    gradient over ``sqrt(sum) + eps``; ``weight_decay`` adds an L2 penalty to the gradient.

    ``update(grads, state, params, hparams=None)`` takes an :class:`AdagradHParams` to change the
    numbers between steps (floats, or 0-d tensors to avoid recompiling under torch.compile).

    Sparse (COO) gradient leaves are accepted in eager mode and follow torch's sparse update:
    only the entries present in the gradient change, in ``sum`` and in the parameter. The update
    stays pure (out-of-place sparse-dense adds); the returned update leaf is dense. As in torch,
    a sparse gradient with a nonzero ``weight_decay`` raises ``RuntimeError``.
    """
    hparams = AdagradHParams(lr, lr_decay, weight_decay, eps)
    validate(hparams, initial_accumulator_value)
    return make_transformation(ADAGRAD, hparams, AdagradStatic(initial_accumulator_value, maximize))

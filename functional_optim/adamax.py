"""Adamax as a functional optimizer (math in :mod:`functional_optim._kernels.adamax`)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.adamax import adamax_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["adamax", "AdamaxHParams", "AdamaxState", "AdamaxStatic", "ADAMAX"]


class AdamaxHParams(NamedTuple):
    """Adamax's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 2e-3
    betas: tuple[Number, Number] = (0.9, 0.999)
    eps: Number = 1e-8
    weight_decay: Number = 0.0


class AdamaxStatic(NamedTuple):
    """Choices fixed when the optimizer is made.

    ``capturable`` is set by ``compat.Adamax(capturable=True)``: its in-place step then keeps the
    step size as a tensor folded into the denominator, as torch's capturable code does. The
    functional factory leaves it off (its update has no host synchronisation either way).
    """

    maximize: bool = False
    capturable: bool = False


class AdamaxState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.Adamax``'s ``state[p]``."""

    step: object
    exp_avg: object
    exp_inf: object


def _init_slots(p: Tensor, hparams: AdamaxHParams, static: AdamaxStatic) -> dict:
    return {
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "exp_inf": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def _check_grad(grad: Tensor, hparams, static) -> None:
    if grad.is_sparse:
        raise RuntimeError("Adamax does not support sparse gradients")


ADAMAX = OptimizerDefinition(
    name="adamax",
    elementwise=True,
    hparams_type=AdamaxHParams,
    static_type=AdamaxStatic,
    state_type=AdamaxState,
    init_slots=_init_slots,
    kernel=adamax_kernel,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
)


def validate(hparams: AdamaxHParams) -> None:
    """torch.optim.Adamax's hyperparameter checks (same order, exception types and messages)."""
    _validate.check_lr(hparams.lr)
    _validate.check_eps(hparams.eps)
    _validate.check_betas(hparams.betas)
    _validate.check_weight_decay(hparams.weight_decay)


def adamax(
    lr: Number = 2e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Adamax (Kingma & Ba, 2014, section 7.1), equal to ``torch.optim.Adamax`` step by step.

    Adam with the second moment replaced by an exponentially weighted infinity norm:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon)

        \theta_t = \theta_{t-1} - \frac{\gamma}{1-\beta_1^t} \frac{m_t}{u_t}

    ``weight_decay`` adds an L2 term to the gradient, ``maximize`` ascends. The state is
    :class:`AdamaxState` (``step``, ``exp_avg``, ``exp_inf`` per leaf).
    ``update(grads, state, params, hparams=None)`` takes an :class:`AdamaxHParams` to change the
    numbers between steps (floats, or 0-d tensors to avoid recompiling under torch.compile).

    Reference: https://arxiv.org/abs/1412.6980
    """
    hparams = AdamaxHParams(lr, tuple(betas), eps, weight_decay)
    validate(hparams)
    return make_transformation(ADAMAX, hparams, AdamaxStatic(maximize=maximize))

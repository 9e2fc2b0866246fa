"""ASGD as a functional optimizer (math in :mod:`functional_optim._kernels.asgd`)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.asgd import asgd_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["asgd", "ASGDHParams", "ASGDState", "ASGDStatic", "ASGD"]


class ASGDHParams(NamedTuple):
    """ASGD's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1e-2
    lambd: Number = 1e-4
    alpha: Number = 0.75
    t0: Number = 1e6
    weight_decay: Number = 0.0


class ASGDStatic(NamedTuple):
    """Choices fixed when the optimizer is made."""

    maximize: bool = False


class ASGDState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.ASGD``'s ``state[p]``.

    ``eta`` (the current step size) and ``mu`` (the averaging weight) are 0-d tensors per leaf in
    torch's scalar dtype (float32 unless the default dtype is float64), ``ax`` the average of the
    parameter.
    """

    step: object
    eta: object
    mu: object
    ax: object


def _init_slots(p: Tensor, hparams: ASGDHParams, static: ASGDStatic) -> dict:
    return {
        "eta": torch.as_tensor(hparams.lr, device=p.device, dtype=_get_scalar_dtype()).clone().detach(),
        "mu": torch.ones((), device=p.device, dtype=_get_scalar_dtype()),
        "ax": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def _check_grad(grad: Tensor, hparams, static) -> None:
    if grad.is_sparse:
        raise RuntimeError("ASGD does not support sparse gradients")


ASGD = OptimizerDefinition(
    name="asgd",
    elementwise=True,
    hparams_type=ASGDHParams,
    static_type=ASGDStatic,
    state_type=ASGDState,
    init_slots=_init_slots,
    kernel=asgd_kernel,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
    scalar_slots=("eta", "mu"),
)


def validate(hparams: ASGDHParams) -> None:
    """torch.optim.ASGD's hyperparameter checks (same order, exception types and messages)."""
    _validate.check_lr(hparams.lr)
    _validate.check_weight_decay(hparams.weight_decay)


def asgd(
    lr: Number = 1e-2,
    lambd: Number = 1e-4,
    alpha: Number = 0.75,
    t0: Number = 1e6,
    weight_decay: Number = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""ASGD (Polyak & Juditsky, 1992), equal to ``torch.optim.ASGD`` step by step.

    SGD with a decaying step size and a running (Polyak) average of the iterates. With per-leaf
    step size :math:`\eta` (starting at ``lr``) and averaging weight :math:`\mu` (starting at 1):

    .. math::
        \theta_t = \theta_{t-1}(1 - \lambda\eta_{t-1}) - \eta_{t-1} g_t, \qquad
        \bar\theta_t = \bar\theta_{t-1} + \mu_{t-1}(\theta_t - \bar\theta_{t-1})

        \eta_t = \frac{\gamma}{(1 + \lambda\gamma t)^\alpha}, \qquad \mu_t = \frac{1}{\max(1, t - t_0)}

    ``weight_decay`` adds an L2 term to the gradient, ``maximize`` ascends. The state is
    :class:`ASGDState` (``step``, ``eta``, ``mu``, ``ax`` per leaf; ``ax`` is the average
    :math:`\bar\theta`). ``update(grads, state, params, hparams=None)`` takes an
    :class:`ASGDHParams` to change the numbers between steps (floats, or 0-d tensors to avoid
    recompiling under torch.compile). As in torch, ``lr`` enters through ``eta``: the first step
    uses the ``lr`` the state was made with.

    Reference: https://doi.org/10.1137/0330046
    """
    hparams = ASGDHParams(lr, lambd, alpha, t0, weight_decay)
    validate(hparams)
    return make_transformation(ASGD, hparams, ASGDStatic(maximize=maximize))

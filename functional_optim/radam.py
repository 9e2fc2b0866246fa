"""RAdam as a functional optimizer (math in :mod:`functional_optim._kernels.radam`)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.radam import radam_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["radam", "RAdamHParams", "RAdamState", "RAdamStatic", "RADAM"]


class RAdamHParams(NamedTuple):
    """RAdam's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1e-3
    betas: tuple[Number, Number] = (0.9, 0.999)
    eps: Number = 1e-8
    weight_decay: Number = 0.0


class RAdamStatic(NamedTuple):
    """Choices fixed when the optimizer is made."""

    maximize: bool = False
    decoupled_weight_decay: bool = False


class RAdamState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.RAdam``'s ``state[p]``."""

    step: object
    exp_avg: object
    exp_avg_sq: object


def _init_slots(p: Tensor, hparams: RAdamHParams, static: RAdamStatic) -> dict:
    return {
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def _check_grad(grad: Tensor, hparams, static) -> None:
    if grad.is_sparse:
        raise RuntimeError("RAdam does not support sparse gradients")


RADAM = OptimizerDefinition(
    name="radam",
    elementwise=True,
    hparams_type=RAdamHParams,
    static_type=RAdamStatic,
    state_type=RAdamState,
    init_slots=_init_slots,
    kernel=radam_kernel,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
)


def validate(hparams: RAdamHParams) -> None:
    """torch.optim.RAdam's hyperparameter checks (same order, exception types and messages)."""
    _validate.check_lr(hparams.lr)
    _validate.check_eps(hparams.eps)
    _validate.check_betas(hparams.betas)
    _validate.check_weight_decay(hparams.weight_decay)


def radam(
    lr: Number = 1e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 0.0,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""RAdam (Liu et al., 2020), equal to ``torch.optim.RAdam`` step by step.

    Adam whose adaptive step is switched on only once the variance of its adaptive learning rate
    is tractable. With :math:`\rho_\infty = 2/(1-\beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)`:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

        \theta_t = \theta_{t-1} - \frac{\gamma\, m_t}{1-\beta_1^t} \cdot
            \begin{cases} r_t \sqrt{1-\beta_2^t} / (\sqrt{v_t} + \epsilon) & \rho_t > 5 \\
                          1 & \text{otherwise} \end{cases},
        \qquad r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    The switch is taken with ``torch.where`` (no host synchronisation), so the update compiles with
    ``fullgraph=True``, vmaps and can be differentiated through. ``weight_decay`` adds an L2 term to
    the gradient, or with ``decoupled_weight_decay`` scales the parameters by :math:`1-\gamma\lambda`
    first (RAdamW). The state is :class:`RAdamState` (``step``, ``exp_avg``, ``exp_avg_sq`` per leaf).
    ``update(grads, state, params, hparams=None)`` takes an :class:`RAdamHParams` to change the
    numbers between steps (floats, or 0-d tensors to avoid recompiling under torch.compile).

    Reference: https://arxiv.org/abs/1908.03265
    """
    hparams = RAdamHParams(lr, tuple(betas), eps, weight_decay)
    validate(hparams)
    return make_transformation(RADAM, hparams, RAdamStatic(maximize, decoupled_weight_decay))

"""NAdam as a functional optimizer (math in :mod:`functional_optim._kernels.nadam`)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.nadam import nadam_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["nadam", "NAdamHParams", "NAdamState", "NAdamStatic", "NADAM"]


class NAdamHParams(NamedTuple):
    """NAdam's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 2e-3
    betas: tuple[Number, Number] = (0.9, 0.999)
    eps: Number = 1e-8
    weight_decay: Number = 0.0
    momentum_decay: Number = 4e-3


class NAdamStatic(NamedTuple):
    """Choices fixed when the optimizer is made.

    ``differentiable`` is set by ``compat.NAdam`` only: it makes the kernel compute the step sizes
    from the ``mu_product`` tensors in their own dtype, as torch's differentiable path does.
    """

    maximize: bool = False
    decoupled_weight_decay: bool = False
    differentiable: bool = False


class NAdamState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.NAdam``'s ``state[p]``.

    ``step`` and ``mu_product`` (the running product of the momentum schedule) are 0-d tensors,
    one per leaf; ``mu_product`` has torch's scalar dtype (float32 unless the default dtype is
    float64).
    """

    step: object
    mu_product: object
    exp_avg: object
    exp_avg_sq: object


def _init_slots(p: Tensor, hparams: NAdamHParams, static: NAdamStatic) -> dict:
    return {
        "mu_product": torch.ones((), dtype=_get_scalar_dtype(), device=p.device),
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def _check_grad(grad: Tensor, hparams, static) -> None:
    if grad.is_sparse:
        raise RuntimeError("NAdam does not support sparse gradients")


NADAM = OptimizerDefinition(
    name="nadam",
    elementwise=True,
    hparams_type=NAdamHParams,
    static_type=NAdamStatic,
    state_type=NAdamState,
    init_slots=_init_slots,
    kernel=nadam_kernel,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
    scalar_slots=("mu_product",),
)


def validate(hparams: NAdamHParams) -> None:
    """torch.optim.NAdam's hyperparameter checks (same order, exception types and messages)."""
    _validate.check_lr(hparams.lr)
    _validate.check_eps(hparams.eps)
    _validate.check_betas(hparams.betas)
    _validate.check_weight_decay(hparams.weight_decay)
    _validate.check_momentum_decay(hparams.momentum_decay)


def nadam(
    lr: Number = 2e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 0.0,
    momentum_decay: Number = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""NAdam (Dozat, 2016): Adam with Nesterov momentum, equal to ``torch.optim.NAdam`` step by step.

    With the momentum schedule :math:`\mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi})`
    (:math:`\psi` = ``momentum_decay``) and its running product :math:`P_t = \prod_{i\le t}\mu_i`:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

        \theta_t = \theta_{t-1} - \gamma \Big(\frac{(1-\mu_t)\, g_t}{1-P_t}
            + \frac{\mu_{t+1}\, m_t}{1-P_t\mu_{t+1}}\Big) \Big/ \Big(\sqrt{v_t/(1-\beta_2^t)} + \epsilon\Big)

    ``weight_decay`` adds an L2 term to the gradient, or with ``decoupled_weight_decay`` scales the
    parameters by :math:`1-\gamma\lambda` first (NAdamW, Loshchilov & Hutter 2019). The state is
    :class:`NAdamState` (``step``, ``mu_product``, ``exp_avg``, ``exp_avg_sq`` per leaf).
    ``update(grads, state, params, hparams=None)`` takes an :class:`NAdamHParams` to change the
    numbers between steps (floats, or 0-d tensors to avoid recompiling under torch.compile).

    Reference: https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """
    hparams = NAdamHParams(lr, tuple(betas), eps, weight_decay, momentum_decay)
    validate(hparams)
    return make_transformation(NADAM, hparams, NAdamStatic(maximize, decoupled_weight_decay))

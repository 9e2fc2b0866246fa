"""Rprop as a functional optimizer (math in :mod:`functional_optim._kernels.rprop`)."""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.rprop import rprop_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["rprop", "RpropHParams", "RpropState", "RpropStatic", "RPROP", "initial_step_size"]


class RpropHParams(NamedTuple):
    """Rprop's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor.

    ``lr`` is the step size every element starts with: it is read when the state is made (``init``),
    not by ``update``, as in torch.
    """

    lr: Number = 1e-2
    etas: tuple[Number, Number] = (0.5, 1.2)
    step_sizes: tuple[Number, Number] = (1e-6, 50)


class RpropStatic(NamedTuple):
    """Choices fixed when the optimizer is made."""

    maximize: bool = False


class RpropState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.Rprop``'s ``state[p]``: the previous
    (sign-masked) gradient and each element's step size."""

    step: object
    prev: object
    step_size: object


def initial_step_size(like: Tensor, lr: Any) -> Tensor:
    """Every element's first step size: ``lr`` (``lr + lr i`` for a complex parameter, so that its
    real view starts at ``lr`` throughout), shaped like ``like``, as torch fills it."""
    if like.dtype.is_complex:
        return torch.full_like(like, complex(lr, lr))
    return torch.full_like(like, _validate.squeeze_scalar(lr))


def _init_slots(p: Tensor, hparams: RpropHParams, static: RpropStatic) -> dict:
    return {
        "prev": torch.zeros_like(p, memory_format=torch.preserve_format),
        "step_size": initial_step_size(p, hparams.lr),
    }


def _check_grad(grad: Tensor, hparams, static) -> None:
    if grad.is_sparse:
        raise RuntimeError("Rprop does not support sparse gradients")


RPROP = OptimizerDefinition(
    name="rprop",
    elementwise=True,
    hparams_type=RpropHParams,
    static_type=RpropStatic,
    state_type=RpropState,
    init_slots=_init_slots,
    kernel=rprop_kernel,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
)


def check_etas(etas: Any) -> None:
    """torch.optim.Rprop's check: ``0 < eta_minus < 1 < eta_plus``."""
    if not 0.0 < etas[0] < 1.0 < etas[1]:
        raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")


def validate(hparams: RpropHParams) -> None:
    """torch.optim.Rprop's hyperparameter checks (same order, exception types and messages)."""
    _validate.check_lr(hparams.lr)
    check_etas(hparams.etas)


def rprop(
    lr: Number = 1e-2,
    etas: tuple[Number, Number] = (0.5, 1.2),
    step_sizes: tuple[Number, Number] = (1e-6, 50),
    *,
    maximize: bool = False,
) -> GradientTransformation:
    r"""Rprop (Riedmiller & Braun, 1993), equal to ``torch.optim.Rprop`` step by step.

    Each element moves by its own step size :math:`s` in the direction of ``-sign(g)``; the step
    size grows by :math:`\eta_+` while the gradient keeps its sign and shrinks by :math:`\eta_-`
    when it flips (that element then skips the step and forgets its gradient):

    .. math::
        s_t = \begin{cases} \min(s_{t-1}\eta_+, s_{max}) & g_t g_{t-1} > 0 \\
                            \max(s_{t-1}\eta_-, s_{min}),\ g_t \leftarrow 0 & g_t g_{t-1} < 0 \\
                            s_{t-1} & \text{otherwise} \end{cases}
        \qquad \theta_t = \theta_{t-1} - \mathrm{sign}(g_t)\, s_t

    ``etas = (eta_minus, eta_plus)``, ``step_sizes = (s_min, s_max)``, step sizes start at ``lr``.
    The cases are chosen with ``torch.where`` (no host synchronisation), so the update compiles and
    vmaps; its gradient is zero through the signs. The state is :class:`RpropState` (``step``,
    ``prev``, ``step_size`` per leaf). ``update(grads, state, params, hparams=None)`` takes an
    :class:`RpropHParams` to change ``etas`` and ``step_sizes`` between steps.

    Reference: https://doi.org/10.1109/ICNN.1993.298623
    """
    hparams = RpropHParams(lr, tuple(etas), tuple(step_sizes))
    validate(hparams)
    return make_transformation(RPROP, hparams, RpropStatic(maximize=maximize))

"""Adam and AdamW as functional optimizers (math in :mod:`functional_optim._kernels.adam`)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.adam import adam_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["adam", "adamw", "AdamHParams", "AdamState", "AdamStatic", "ADAM"]


class AdamHParams(NamedTuple):
    """Adam's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1e-3
    betas: tuple[Number, Number] = (0.9, 0.999)
    eps: Number = 1e-8
    weight_decay: Number = 0.0


class AdamStatic(NamedTuple):
    """Choices fixed when the optimizer is made (they change the state or the code path)."""

    amsgrad: bool = False
    maximize: bool = False
    decoupled_weight_decay: bool = False


class AdamState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.Adam``'s ``state[p]``."""

    step: object
    exp_avg: object
    exp_avg_sq: object
    max_exp_avg_sq: object  # None leaves unless amsgrad


def _init_slots(p: Tensor, hparams: AdamHParams, static: AdamStatic) -> dict:
    zeros = lambda: torch.zeros_like(p, memory_format=torch.preserve_format)  # noqa: E731
    return {
        "exp_avg": zeros(),
        "exp_avg_sq": zeros(),
        "max_exp_avg_sq": zeros() if static.amsgrad else None,
    }


def _slot_shapes(shape: torch.Size, static: AdamStatic) -> dict:
    return {"exp_avg": shape, "exp_avg_sq": shape, "max_exp_avg_sq": shape if static.amsgrad else None}


def _check_grad(grad: Tensor, hparams, static) -> None:
    if grad.is_sparse:
        raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")


ADAM = OptimizerDefinition(
    name="adam",
    elementwise=True,
    hparams_type=AdamHParams,
    static_type=AdamStatic,
    state_type=AdamState,
    init_slots=_init_slots,
    kernel=adam_kernel,
    check_grad=_check_grad,
    check_grad_refuses_only_sparse=True,
    slot_shapes=_slot_shapes,
)


def validate(hparams: AdamHParams) -> None:
    """torch.optim.Adam's hyperparameter checks (same exception types and messages)."""
    _validate.check_lr(hparams.lr)
    _validate.check_eps(hparams.eps)
    _validate.check_betas(hparams.betas)
    _validate.check_weight_decay(hparams.weight_decay)
    _validate.check_betas_kind(hparams.betas)


def adam(
    lr: Number = 1e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 0.0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
    """Adam (Kingma & Ba, 2014), equal to ``torch.optim.Adam`` step by step.

    ``weight_decay`` is an L2 penalty added to the gradient unless ``decoupled_weight_decay``
    (then it is AdamW). ``amsgrad`` keeps the running maximum of the second moment (Reddi et al.,
    2018). ``update(grads, state, params, hparams=None)`` takes an :class:`AdamHParams` to change
    the numbers between steps (floats, or 0-d tensors to avoid recompiling under torch.compile).
    """
    hparams = AdamHParams(lr, tuple(betas), eps, weight_decay)
    validate(hparams)
    return make_transformation(ADAM, hparams, AdamStatic(amsgrad, maximize, decoupled_weight_decay))


def adamw(
    lr: Number = 1e-3,
    betas: tuple[Number, Number] = (0.9, 0.999),
    eps: Number = 1e-8,
    weight_decay: Number = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    ``theta <- theta * (1 - lr * weight_decay)`` before the Adam step; the decay never enters
    the moments.
    """
    return adam(lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True)

"""Adafactor as a functional optimizer (math in :mod:`functional_optim._kernels.adafactor`)."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import OptimizerDefinition, make_transformation
from ._kernels.adafactor import adafactor_kernel
from .base import GradientTransformation

Number = Union[float, Tensor]

__all__ = ["adafactor", "AdafactorHParams", "AdafactorState", "AdafactorStatic", "ADAFACTOR"]


class AdafactorHParams(NamedTuple):
    """Adafactor's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor;
    ``eps[0]`` may be ``None`` (the parameter dtype's ``finfo.eps``)."""

    lr: Number = 1e-2
    beta2_decay: Number = -0.8
    eps: tuple[Optional[Number], Number] = (None, 1e-3)
    d: Number = 1.0
    weight_decay: Number = 0.0


class AdafactorStatic(NamedTuple):
    """Choices fixed when the optimizer is made."""

    maximize: bool = False


class AdafactorState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.Adafactor``'s ``state[p]``.

    A parameter with two or more dims keeps only the factors ``row_var`` (shape ``[..., m, 1]``)
    and ``col_var`` (``[..., 1, n]``): m + n numbers for an m x n matrix. A 0-d or 1-d parameter
    keeps a full ``variance``. A slot that does not apply to a leaf holds no tensor.
    """

    step: object
    row_var: object
    col_var: object
    variance: object


def _init_slots(p: Tensor, hparams: AdafactorHParams, static: AdafactorStatic) -> dict:
    if p.dim() > 1:
        return {
            "row_var": p.new_zeros((*p.shape[:-1], 1)),
            "col_var": p.new_zeros((*p.shape[:-2], 1, p.shape[-1])),
            "variance": None,
        }
    return {"row_var": None, "col_var": None, "variance": torch.zeros_like(p, memory_format=torch.preserve_format)}


def _slot_shapes(shape: torch.Size, static: AdafactorStatic) -> dict:
    if len(shape) > 1:
        return {"row_var": (*shape[:-1], 1), "col_var": (*shape[:-2], 1, shape[-1]), "variance": None}
    return {"row_var": None, "col_var": None, "variance": shape}


def _check_grad(grad: Tensor, hparams, static) -> None:
    if torch.is_complex(grad):
        raise RuntimeError("Adafactor does not support complex parameters")
    if grad.is_sparse:
        raise RuntimeError("Adafactor does not support sparse gradients")


ADAFACTOR = OptimizerDefinition(
    name="adafactor",
    hparams_type=AdafactorHParams,
    static_type=AdafactorStatic,
    state_type=AdafactorState,
    init_slots=_init_slots,
    kernel=adafactor_kernel,
    supports_complex=False,
    check_grad=_check_grad,
    slot_shapes=_slot_shapes,
)


def validate(hparams: AdafactorHParams) -> None:
    """torch.optim.Adafactor's hyperparameter checks (same exception types and messages)."""
    _validate.check_adafactor(hparams.lr, hparams.beta2_decay, hparams.eps, hparams.d, hparams.weight_decay)


def adafactor(
    lr: Number = 1e-2,
    beta2_decay: Number = -0.8,
    eps: tuple[Optional[Number], Number] = (None, 1e-3),
    d: Number = 1.0,
    weight_decay: Number = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adafactor (Shazeer & Stern, 2018), equal to ``torch.optim.Adafactor`` step by step.

    Second moments of parameters with two or more dims are kept factored (a row and a column
    mean of G^2 over the last two dims), so an m x n matrix costs m + n numbers of state. The
    step is ``max(eps2, RMS(theta)) * min(lr, 1/sqrt(t))`` times the update ``G / sqrt(V)``
    clipped to RMS ``d``; ``weight_decay`` is decoupled (``theta *= 1 - lr * weight_decay``).
    ``beta2_decay`` sets the second-moment rate ``1 - beta2_t = t^beta2_decay``.

    ``update(grads, state, params, hparams=None)`` takes an :class:`AdafactorHParams` to change
    the numbers between steps (floats, or 0-d tensors to avoid recompiling under torch.compile).
    """
    hparams = AdafactorHParams(lr, beta2_decay, eps, d, weight_decay)
    validate(hparams)
    return make_transformation(ADAFACTOR, hparams._replace(eps=tuple(eps)), AdafactorStatic(maximize))

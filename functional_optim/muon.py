"""Muon as a functional optimizer (math in :mod:`functional_optim._kernels.muon`)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from ._definition import OptimizerDefinition, check_params, make_transformation, pack_field
from ._kernels.muon import NS_COEFFICIENTS, NS_EPS, NS_STEPS, check_newton_schulz_args, muon_kernel, newton_schulz
from ._validate import scalar_hparams
from .base import GradientTransformation
from .tree import flatten, flatten_plain, lazy_paths

Number = Union[float, Tensor]

__all__ = ["muon", "MuonHParams", "MuonState", "MuonStatic", "MUON", "newton_schulz", "muon_transformation"]


class MuonHParams(NamedTuple):
    """Muon's numeric hyperparameters (torch's defaults). Each may be a float or a 0-d tensor."""

    lr: Number = 1e-3
    weight_decay: Number = 0.1
    momentum: Number = 0.95
    eps: Number = NS_EPS


class MuonStatic(NamedTuple):
    """Choices fixed when the optimizer is made: the code path and the Newton–Schulz iteration."""

    nesterov: bool = True
    ns_coefficients: tuple = NS_COEFFICIENTS
    ns_steps: int = NS_STEPS
    adjust_lr_fn: Optional[str] = None


class MuonState(NamedTuple):
    """Per-parameter state, keyed like ``torch.optim.Muon``'s ``state[p]`` (no step counter:
    torch keeps none, the math needs none)."""

    momentum_buffer: object


def _init_slots(p: Tensor, hparams, static) -> dict:
    return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}


def _check_grad(grad: Tensor, hparams, static) -> None:
    if grad.is_sparse:
        raise RuntimeError("Muon does not support sparse gradients")


MUON = OptimizerDefinition(
    name="muon",
    hparams_type=MuonHParams,
    static_type=MuonStatic,
    state_type=MuonState,
    init_slots=_init_slots,
    kernel=muon_kernel,
    supports_complex=False,
    check_grad=_check_grad,
)

#: torch >= 2.14 adds ``"spectral_unclamped"``; it is accepted here with any torch
_ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "spectral_unclamped")


def validate(hparams: MuonHParams, adjust_lr_fn: Optional[str]) -> None:
    """torch.optim.Muon's constructor checks (same order, exception types and messages)."""
    lr = hparams.lr
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not 0.0 <= hparams.momentum:
        raise ValueError(f"momentum should be >= 0 but is: {hparams.momentum}")
    if not 0.0 <= hparams.weight_decay:
        raise ValueError(f"weight decay should be >= 0 but is: {hparams.weight_decay}")
    if adjust_lr_fn not in _ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")


def _check_matrices(leaves: list, paths) -> None:
    """Muon orthogonalises matrices: every parameter must be 2-D (torch's rule, with the path)."""
    for i, p in enumerate(leaves):
        if isinstance(p, Tensor) and p.dim() != 2:
            raise ValueError(
                f"muon: params at {paths()[i]} has shape {tuple(p.shape)}; Muon only supports 2D parameters "
                f"(optimize the others with e.g. AdamW: fo.partition)"
            )


def muon_transformation(hparams: MuonHParams, static: MuonStatic) -> GradientTransformation:
    """The pure ``init``/``update`` of Muon for checked ``hparams``/``static`` (what :func:`muon`
    returns; ``compat.Muon.to_functional`` builds the same)."""
    hparams = scalar_hparams(hparams, MUON.name)
    inner = make_transformation(MUON, hparams, static)

    def init(params: Any) -> MuonState:
        leaves, spec = flatten(params)
        paths = lazy_paths(params)
        check_params(MUON.name, leaves, paths, MUON.supports_complex)
        _check_matrices(leaves, paths)
        return MuonState(momentum_buffer=pack_field(spec, [_init_slots(p, hparams, static)["momentum_buffer"]
                                                           for p in leaves]))

    def update(grads: Any, state: MuonState, params: Any = None, hparams_now: Optional[MuonHParams] = None):
        if params is not None:
            _check_matrices(flatten_plain(params)[0], lazy_paths(params))
        return inner.update(grads, state, params, hparams_now)

    return GradientTransformation(init, update, hparams)


def muon(
    lr: Number = 1e-3,
    weight_decay: Number = 0.1,
    momentum: Number = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple = NS_COEFFICIENTS,
    eps: Number = NS_EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: Optional[str] = None,
) -> GradientTransformation:
    """Muon (Jordan et al., 2024), equal to ``torch.optim.Muon`` step by step (torch's arguments).

    For each matrix parameter: momentum ``B <- mu B + (1 - mu) g`` (Nesterov: the direction is
    ``g + mu (B - g)``), orthogonalised by ``ns_steps`` Newton–Schulz iterations in bfloat16
    (:func:`newton_schulz`: ``ns_coefficients`` and ``eps`` as torch), decoupled weight decay
    ``theta <- theta (1 - lr wd)`` and ``theta <- theta - lr * r * O`` with the shape factor
    ``r`` of ``adjust_lr_fn`` (``None``/``"original"``: ``sqrt(max(1, m / n))``;
    ``"match_rms_adamw"``: ``0.2 sqrt(max(m, n))``, Liu et al. 2025; ``"spectral_unclamped"``:
    ``sqrt(m / n)``, Bernstein's spectral scaling, torch >= 2.14, accepted here with any torch).

    Only 2-D parameters (``ValueError`` naming the path otherwise); give biases, norms and
    embeddings another optimizer, e.g. ``fo.partition({"muon": fo.muon(), "adamw": fo.adamw()},
    fo.by_name(lambda name, p: "muon" if p.ndim == 2 else "adamw"))``. Complex parameters and
    sparse gradients are refused as in torch.

    State :class:`MuonState` ``(momentum_buffer,)`` per leaf, as torch's ``state[p]``;
    ``update(grads, state, params, hparams=None)`` takes a :class:`MuonHParams` (``lr``,
    ``weight_decay``, ``momentum``, ``eps``; floats or 0-d tensors). The update is pure and runs
    under ``torch.compile`` and ``vmap``; it is differentiable, but the orthogonalisation computes
    in bfloat16, so gradients through it are bfloat16-accurate.
    """
    hparams = MuonHParams(lr, weight_decay, momentum, eps)
    validate(hparams, adjust_lr_fn)
    check_newton_schulz_args(ns_coefficients, ns_steps)  # torch raises these at its first step
    return muon_transformation(hparams, MuonStatic(nesterov, tuple(ns_coefficients), ns_steps, adjust_lr_fn))

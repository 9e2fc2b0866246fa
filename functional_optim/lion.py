"""Lion (EvoLved Sign Momentum): the ``scale_by_lion`` block and the ``lion`` alias built from it.

Chen et al., "Symbolic Discovery of Optimization Algorithms" (2023), https://arxiv.org/abs/2302.06675.
Reference implementation: ``lion_pytorch.Lion`` (PyPI ``lion-pytorch``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _validate
from .base import GradientTransformation
from .combine import chain, map_updates
from .transforms import _like, _map_state, add_decayed_weights, scale_by_learning_rate
from .tree import check_state_like, check_state_type

Number = Union[float, Tensor]

__all__ = ["ScaleByLionHParams", "ScaleByLionState", "scale_by_lion", "lion"]


class ScaleByLionHParams(NamedTuple):
    """``betas = (b1, b2)``: the interpolation for the update's sign and the momentum's decay.

    The field is ``betas`` (as ``lion_pytorch.Lion``'s param groups) so that
    ``compat.Lion``'s ``group["betas"]`` drives it."""

    betas: tuple


class ScaleByLionState(NamedTuple):
    """The momentum, one tensor per leaf (``lion_pytorch``'s ``exp_avg``)."""

    mu: Any


def _check_betas(betas: Any) -> None:
    for i, beta in enumerate(betas):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def scale_by_lion(b1: Number = 0.9, b2: Number = 0.99, mu_dtype: Optional[torch.dtype] = None) -> GradientTransformation:
    """Lion's direction: ``u <- sgn(b1 * mu + (1 - b1) * g)``, then ``mu <- b2 * mu + (1 - b2) * g``.

    As optax's ``scale_by_lion``: the update is the sign of an interpolation between the
    momentum and the gradient, and the momentum is an EMA of the gradients with its own
    decay ``b2`` (no bias correction, no step count). ``torch.sgn`` is used, so a complex
    leaf gets ``z / |z|``. Add weight decay and the learning rate after it (see :func:`lion`).

    ``mu_dtype`` (optax's option, e.g. ``torch.bfloat16``) stores the momentum in that dtype: it
    is read back in the gradient's dtype, the step is computed there, and the new momentum is
    rounded to ``mu_dtype`` (round to nearest).

    Paper: Chen et al., 2023, https://arxiv.org/abs/2302.06675.

    Example::

        tx = fo.chain(fo.scale_by_lion(0.9, 0.99), fo.scale_by_learning_rate(1e-4))
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
    """
    _check_betas((b1, b2))
    defaults = _validate.scalar_hparams(ScaleByLionHParams((b1, b2)), "scale_by_lion")

    def init(params):
        return ScaleByLionState(map_updates(lambda p: torch.zeros_like(p, dtype=mu_dtype), params))

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("scale_by_lion", defaults, hparams)
        check_state_type(state, ScaleByLionState, "scale_by_lion")
        check_state_like(updates, state.mu, "scale_by_lion: state.mu", dtype=mu_dtype)
        beta1, beta2 = hp.betas

        def direction(g, m):
            b = _like(beta1, m)
            if isinstance(b, Tensor):
                return torch.sgn(m * b + (1 - b) * g)
            return torch.sgn(torch.add(m * b, g, alpha=1 - b))

        def moment(g, m):
            b = _like(beta2, m)
            if isinstance(b, Tensor):
                return m * b + (1 - b) * g
            return torch.add(m * b, g, alpha=1 - b)

        if mu_dtype is None:
            out = map_updates(direction, updates, state.mu)
            return out, ScaleByLionState(_map_state(moment, updates, state.mu))
        out = map_updates(lambda g, m: direction(g, m.to(g.dtype)), updates, state.mu)
        return out, ScaleByLionState(_map_state(lambda g, m: moment(g, m.to(g.dtype)).to(mu_dtype), updates, state.mu))

    return GradientTransformation(init, update, defaults)


def lion(lr: Number = 1e-4, betas: tuple = (0.9, 0.99), weight_decay: Number = 0.0, *,
         mu_dtype: Optional[torch.dtype] = None, mask: Any = None) -> GradientTransformation:
    """Lion: ``p <- p - lr * (sgn(b1 * mu + (1 - b1) * g) + weight_decay * p)``; ``mu <- b2 * mu + (1 - b2) * g``.

    A composition (as optax's ``lion``)::

        chain(scale_by_lion(*betas), add_decayed_weights(weight_decay), scale_by_learning_rate(lr))

    Adding ``weight_decay * p`` to the sign *after* ``scale_by_lion`` and before the learning
    rate is ``lion_pytorch.Lion``'s step weight decay ``p <- p * (1 - lr * wd)`` (decoupled from
    the momentum, scaled by ``lr``). Its numbers equal ``lion_pytorch.Lion(lr, betas,
    weight_decay)`` step by step up to rounding (``p - lr * (s + wd * p)`` against
    ``p * (1 - lr * wd) - lr * s``: a few ulps). ``lion_pytorch``'s
    ``decoupled_weight_decay=True`` divides ``weight_decay`` by the initial ``lr``: pass
    ``weight_decay / lr`` here (``compat.Lion`` does that for you).

    ``mu_dtype`` is :func:`scale_by_lion`'s; ``mask`` limits the weight decay to some leaves (as
    optax's ``lion(..., mask=)``, see :func:`~functional_optim.add_decayed_weights`).

    Defaults are ``lion_pytorch``'s. Paper: Chen et al., 2023, https://arxiv.org/abs/2302.06675.

    Example::

        opt = fo.lion(lr=1e-4, weight_decay=1.0)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    """
    if not lr > 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    b1, b2 = betas
    return chain(scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask), scale_by_learning_rate(lr))

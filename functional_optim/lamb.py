"""LAMB as a composition of building blocks (optax's ``lamb``)."""

from __future__ import annotations

from typing import Any, Union

from torch import Tensor

from .base import GradientTransformation
from .combine import named_chain
from .scaling import scale_by_adam, scale_by_trust_ratio
from .transforms import add_decayed_weights, scale_by_learning_rate

Number = Union[float, Tensor]

__all__ = ["lamb"]


def lamb(lr: Number = 1e-3, b1: Number = 0.9, b2: Number = 0.999, eps: Number = 1e-6, eps_root: Number = 0.0,
         weight_decay: Number = 0.0, mask: Any = None) -> GradientTransformation:
    """LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
    2019, https://arxiv.org/abs/1904.00962), as optax's ``lamb``: a composition ::

        named_chain(("adam", scale_by_adam(b1, b2, eps, eps_root)),
                    ("decay", add_decayed_weights(weight_decay, mask)),
                    ("trust_ratio", scale_by_trust_ratio()),
                    ("lr", scale_by_learning_rate(lr)))

    i.e. per leaf ``r = adam_update + wd p``, ``p <- p - lr * (||p|| / ||r||) * r`` (ratio 1 where
    either norm is 0). The Adam moments are bias-corrected (optax; paper's v3 has no bias
    correction). ``compat.Lamb`` is ``pytorch_optimizer.Lamb``, which differs (no second-moment
    correction, ``||p||`` clamped at 10, ``eps`` in the ratio, decoupled decay by default).

    Example::

        opt = fo.lamb(lr=1e-3, weight_decay=0.01)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    """
    return named_chain(("adam", scale_by_adam(b1, b2, eps, eps_root)),
                       ("decay", add_decayed_weights(weight_decay, mask)),
                       ("trust_ratio", scale_by_trust_ratio()),
                       ("lr", scale_by_learning_rate(lr)))

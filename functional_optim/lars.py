"""LARS as a composition of building blocks (optax's ``lars``)."""

from __future__ import annotations

from typing import Any, Union

from torch import Tensor

from .base import GradientTransformation
from .combine import masked, named_chain
from .scaling import scale_by_trust_ratio
from .transforms import add_decayed_weights, scale_by_learning_rate, trace

Number = Union[float, Tensor]

__all__ = ["lars"]


def lars(lr: Number = 1e-3, weight_decay: Number = 0.0, weight_decay_mask: Any = True,
         trust_coefficient: Number = 0.001, eps: Number = 0.0, trust_ratio_mask: Any = True,
         momentum: Number = 0.9, nesterov: bool = False) -> GradientTransformation:
    """LARS (You et al., "Large Batch Training of Convolutional Networks", 2017,
    https://arxiv.org/abs/1708.03888), as optax's ``lars``: a composition ::

        named_chain(("decay", add_decayed_weights(weight_decay, weight_decay_mask)),
                    ("trust_ratio", masked(scale_by_trust_ratio(trust_coefficient=tc, eps=eps),
                                           trust_ratio_mask)),
                    ("lr", scale_by_learning_rate(lr)),
                    ("momentum", trace(momentum, nesterov)))

    i.e. ``r = g + wd p``, ``r <- tc ||p|| / (||r|| + eps) * r`` (ratio 1 where a norm is 0),
    ``m <- momentum m - lr r``, ``p <- p + m`` (or Nesterov's ``p - lr r + momentum m``).
    The masks (``True``: every leaf; a bool tree or a function of the params) say which leaves
    are decayed / get the trust ratio; :func:`functional_optim.by_name` builds them by name,
    e.g. ``lambda ps: optree.tree_map(lambda p: p.ndim > 1, ps)`` to skip biases and norms.

    As in optax the learning rate is applied *before* the momentum trace (a changing lr
    therefore scales new steps only). ``compat.Lars`` is ``pytorch_optimizer.LARS``, which takes
    the paper's ratio ``tc ||p|| / (||g|| + wd ||p||)`` and skips vectors and scalars.

    Example: ``opt = fo.lars(lr=0.1, weight_decay=1e-4)``.
    """
    decay = add_decayed_weights(weight_decay, None if weight_decay_mask is True else weight_decay_mask)
    ratio = scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    if trust_ratio_mask is not True:
        ratio = masked(ratio, trust_ratio_mask)
    return named_chain(("decay", decay), ("trust_ratio", ratio), ("lr", scale_by_learning_rate(lr)),
                       ("momentum", trace(momentum, nesterov)))

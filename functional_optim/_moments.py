"""Shared pieces of the moment-based building blocks (``scale_by_belief``, ``scale_by_adopt``,
``scale_by_ademamix``, ``scale_by_adan``) and of their aliases.

* A step count shared by all leaves of a transformation (a 0-d int32 tensor, as optax's
  ``count``; ``pytorch_optimizer`` keeps the same number per param group in ``group["step"]``).
  Bias corrections and schedules are computed from it in float64 tensors, once per update, so
  a compiled step depends on the count only as data (no recompiles as it grows).
* Elementwise helpers that take a hyperparameter as a Python number (the exact torch op
  ``pytorch_optimizer`` uses, for the same rounding) or as a 0-d tensor (cast to the leaf's dtype).
* :func:`leafwise`: one function per leaf over the updates and any number of per-leaf state
  trees; ``None`` updates keep their state untouched.
* :func:`decayed_chain`: the weight-decay variants of ``pytorch_optimizer`` (coupled L2,
  decoupled, decoupled and not scaled by the learning rate) written as compositions.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .base import GradientTransformation
from .combine import named_chain
from .transforms import _like, add_decayed_weights, flip_sign, scale_by_learning_rate
from .tree import flatten, unflatten


def first_device(tree: Any) -> torch.device:
    for leaf in flatten(tree)[0]:
        if isinstance(leaf, Tensor):
            return leaf.device
    return torch.device("cpu")


def zero_count(params: Any) -> Tensor:
    return torch.zeros((), dtype=torch.int32, device=first_device(params))


def as_float64(count: Tensor) -> Tensor:
    return count.to(torch.float64)


def pow_(base: Any, t: Tensor) -> Tensor:
    """``base ** t`` for a number or 0-d tensor ``base`` and a float64 0-d ``t`` (a float64 tensor)."""
    if isinstance(base, Tensor):
        return torch.pow(base.to(torch.float64), t)
    return torch.pow(float(base), t)


def log_(x: Any) -> Any:
    return torch.log(x.to(torch.float64)) if isinstance(x, Tensor) else math.log(x)


def bias_correction(beta: Any, t: Tensor) -> Tensor:
    """``1 - beta ** t`` as a float64 0-d tensor."""
    return 1.0 - pow_(beta, t)


def lerp(start: Tensor, end: Tensor, weight: Any) -> Tensor:
    """``torch.lerp`` with a number or 0-d tensor weight (torch's formula, its switch at 0.5 included)."""
    return torch.lerp(start, end, _like(weight, start))


def addcmul(x: Tensor, a: Tensor, b: Tensor, value: Any) -> Tensor:
    """``x + value * a * b``: ``torch.addcmul`` for a number ``value``, the same products otherwise."""
    if isinstance(value, Tensor):
        return x + _like(value, x) * a * b
    return torch.addcmul(x, a, b, value=value)


def mul(x: Tensor, value: Any) -> Tensor:
    return x * _like(value, x)


def add(x: Tensor, value: Any) -> Tensor:
    return x + _like(value, x)


def leafwise(fn: Callable, updates: Any, *states: Any, n_out: int) -> tuple:
    """``fn(u, *s) -> (new_u, *new_s)`` on every leaf where the update is a tensor.

    Where the update is ``None`` the update stays ``None`` and each state leaf is returned as it
    is. A complex leaf is stepped on its real view (see :func:`_on_real_view`): each output
    position matches an input position (update, then the states in order). ``states`` are per-leaf trees with the structure of ``updates`` (checked by the caller);
    returns ``n_out`` trees (the updates first, then the new states).
    """
    u_leaves, spec = flatten(updates)
    s_leaves = [flatten(s)[0] for s in states]
    outs: list[list] = [[] for _ in range(n_out)]
    for i, u in enumerate(u_leaves):
        old = [s[i] for s in s_leaves]
        if u is None:
            new = [None, *old, *([None] * (n_out - 1 - len(old)))]
        elif u.is_complex():
            new = _on_real_view(fn, u, old)
        else:
            new = fn(u, *old)
        for o, v in zip(outs, new):
            o.append(v)
    return tuple(unflatten(spec, o) for o in outs)


def _is_complex(x: Any) -> bool:
    return isinstance(x, Tensor) and x.is_complex()


def _on_real_view(fn: Callable, u: Tensor, old: list) -> list:
    """A complex leaf as ``pytorch_optimizer`` steps one: on ``torch.view_as_real`` of the update
    and of every complex state (real and imaginary parts as independent reals)."""
    inputs = [u, *old]
    res = fn(*[torch.view_as_real(x) if _is_complex(x) else x for x in inputs])
    return [torch.view_as_complex(r) if _is_complex(x) else r for r, x in zip(res, inputs)]


def decayed_chain(name: str, block: GradientTransformation, lr: Any, weight_decay: Any, *,
                  weight_decouple: bool, fixed_decay: bool = False, maximize: bool = False,
                  mask: Any = None) -> GradientTransformation:
    """``pytorch_optimizer``'s ``apply_weight_decay`` variants around a scaling ``block``.

    * ``weight_decouple=False`` (L2 penalty in the gradient): ``decay -> block -> lr``;
    * ``weight_decouple=True`` (AdamW): ``block -> decay -> lr``, i.e. ``p - lr (u + wd p)``;
    * ``weight_decouple=True, fixed_decay=True``: ``p - lr u - wd p`` (decay not scaled by lr),
      ``block -> lr (unflipped) -> decay -> flip_sign``.

    ``maximize`` puts ``flip_sign`` first. The parts are named (``"maximize"``, ``"decay"``,
    ``name``, ``"lr"``, ``"flip"``), so the state reads ``state[name].mu`` and hyperparameters
    are set by field name (``lr``, ``weight_decay``, the block's).
    """
    decay = add_decayed_weights(weight_decay, mask)
    parts: list = [("maximize", flip_sign())] if maximize else []
    if not weight_decouple:
        parts += [("decay", decay), (name, block), ("lr", scale_by_learning_rate(lr))]
    elif not fixed_decay:
        parts += [(name, block), ("decay", decay), ("lr", scale_by_learning_rate(lr))]
    else:
        parts += [(name, block), ("lr", scale_by_learning_rate(lr, flip_sign=False)), ("decay", decay),
                  ("flip", flip_sign())]
    return named_chain(*parts)


def check_betas_range(betas: Sequence[Any], names: Sequence[str], closed_last: bool = False) -> None:
    """``pytorch_optimizer``'s ``validate_betas``: each in ``[0, 1)`` (the third in ``[0, 1]`` with ``closed_last``)."""
    for i, (beta, n) in enumerate(zip(betas, names)):
        if beta is None:
            continue
        last = closed_last and i == 2
        ok = 0.0 <= beta <= 1.0 if last else 0.0 <= beta < 1.0
        if not ok:
            raise ValueError(f"{n} must be in the range [0.0, 1.0{']' if last else ')'}")


def check_non_negative(x: Any, name: str) -> None:
    if x is not None and x < 0.0:
        raise ValueError(f"{name} must be non-negative")

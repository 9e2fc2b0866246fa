"""The transformation type and ``apply_updates``.

A :class:`GradientTransformation` is a pair of pure functions, as in optax:

* ``init(params) -> state``
* ``update(grads, state, params=None, hparams=None) -> (updates, new_state)``

``updates`` has the structure of ``params``; :func:`apply_updates` adds them. A ``None`` leaf in
``updates`` (a parameter whose gradient was ``None``) leaves that parameter as it is.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .tree import check_same_structure, flatten, unflatten

Params = Any
Updates = Any
State = Any

__all__ = ["GradientTransformation", "apply_updates", "Params", "Updates", "State"]


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params=None, hparams=None) -> (updates, state)``.

    ``hparams`` is the record of default hyperparameters that ``update`` uses when it is given
    none (``None`` for a transformation without numeric hyperparameters; a tuple or dict of the
    parts' records for a combinator). Passing a record of the same shape to ``update`` changes
    the numbers for that call; :func:`functional_optim.inject_hyperparams` and
    ``compat.TransformationOptimizer`` find the fields to set through it.
    """

    init: Callable[[Params], State]
    update: Callable[..., tuple[Updates, State]]
    hparams: Any = None


def apply_updates(params: Params, updates: Updates) -> Params:
    """Return ``params + updates`` leaf by leaf; ``None`` updates keep the parameter unchanged.

    The result keeps each parameter's dtype (an update computed in a wider dtype is cast back).
    """
    check_same_structure(params, updates, "params", "updates")
    p_leaves, spec = flatten(params)
    u_leaves, _ = flatten(updates)
    out = [p if u is None else (p + u).to(p.dtype) for p, u in zip(p_leaves, u_leaves)]
    return unflatten(spec, out)

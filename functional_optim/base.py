"""The transformation type and ``apply_updates``.

A :class:`GradientTransformation` is a pair of pure functions, as in optax:

* ``init(params) -> state``
* ``update(grads, state, params=None, hparams=None) -> (updates, new_state)``

``updates`` has the structure of ``params``; :func:`apply_updates` adds them. A ``None`` leaf in
``updates`` (a parameter whose gradient was ``None``) leaves that parameter as it is.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ._kernels.eager import FOREACH_PURE, eager_ops_for
from ._kernels.grouped import add_lists
from .tree import flatten_like, flatten_plain, unflatten

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
    p_leaves, spec = flatten_plain(params)
    u_leaves = flatten_like(spec, params, updates, "params", "updates")
    active = [i for i, u in enumerate(u_leaves) if u is not None]
    olds, deltas = [p_leaves[i] for i in active], [u_leaves[i] for i in active]
    out = list(p_leaves)
    ops = eager_ops_for(olds, deltas)
    sums = ([] if not active else add_lists(olds, deltas, ops.add) if ops is FOREACH_PURE
            else ops.add(olds, deltas))
    for i, new in zip(active, sums):
        out[i] = new if new.dtype == p_leaves[i].dtype else new.to(p_leaves[i].dtype)
    return unflatten(spec, out)

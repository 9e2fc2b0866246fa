"""The transformation type and ``apply_updates``.

A :class:`GradientTransformation` is a pair of pure functions, as in optax:

* ``init(params) -> state``
* ``update(grads, state, params=None, hparams=None) -> (updates, new_state)``

``updates`` has the structure of ``params``; :func:`apply_updates` adds them. A ``None`` leaf in
``updates`` (a parameter whose gradient was ``None``) leaves that parameter as it is.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch

from ._kernels.eager import FOREACH_PURE, eager_ops_for
from ._kernels import runs
from ._kernels.grouped import MIN_GROUP, add_lists
from .rounding import Key, add_stochastic_flat, check_key, fold_in, stochastic_round
from .tree import flatten_like, flatten_plain, leaf_paths, unflatten

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


def apply_updates(params: Params, updates: Updates, *, stochastic_rounding_key: Optional[Key] = None) -> Params:
    """Return ``params + updates`` leaf by leaf; ``None`` updates keep the parameter unchanged.

    The result keeps each parameter's dtype (an update computed in a wider dtype is cast back).

    ``stochastic_rounding_key`` (a 0-d integer tensor or an int; default ``None``: round to
    nearest, as above): each **bfloat16** parameter becomes ``stochastic_round(float32(p) +
    float32(u))`` (:func:`functional_optim.stochastic_round`, unbiased), so updates smaller than
    half a bfloat16 ulp still move it in expectation; leaf ``i`` (its position among the flattened
    params) draws its bits from ``fold_in(key, i)``. Other dtypes are added as without a key.
    Give a new key every step, e.g. ``fo.fold_in(seed, step)``: the same key rounds the same way.
    It helps only where ``updates`` are the unrounded steps, as the building blocks return them
    (``fo.chain(fo.scale_by_adam(), ..., fo.scale_by_learning_rate(lr))``): the torch-exact aliases
    (``fo.adam``, ``fo.sgd`` ...) compute the new parameter in its dtype as torch does and return
    the difference, which on bfloat16 params has already lost what is below half an ulp.
    """
    p_leaves, spec = flatten_plain(params)
    u_leaves = flatten_like(spec, params, updates, "params", "updates")
    _check_updates(params, p_leaves, u_leaves)
    rounded = []  # the bfloat16 leaves rounded stochastically
    if stochastic_rounding_key is not None:
        check_key(stochastic_rounding_key)
        rounded = [i for i, (p, u) in enumerate(zip(p_leaves, u_leaves)) if u is not None and p.dtype == torch.bfloat16]
    skipped = set(rounded)
    active = [i for i, u in enumerate(u_leaves) if u is not None and i not in skipped]
    olds, deltas = [p_leaves[i] for i in active], [u_leaves[i] for i in active]
    out = list(p_leaves)
    ops = eager_ops_for(olds, deltas)
    sums = ([] if not active else add_lists(olds, deltas, ops.add) if ops is FOREACH_PURE
            else ops.add(olds, deltas))
    for i, new in zip(active, sums):
        out[i] = new if new.dtype == p_leaves[i].dtype else new.to(p_leaves[i].dtype)
    if rounded:
        _add_stochastically(p_leaves, u_leaves, stochastic_rounding_key, rounded, out)
    return unflatten(spec, out)


def _check_updates(params: Params, p_leaves: list, u_leaves: list) -> None:
    """Each update a tensor of its parameter's shape (or ``None``) that the parameter's dtype can
    hold: ``p + u`` would broadcast an update of another shape into the parameter (a ``(4,)``
    update across every row of a ``(3, 4)`` weight) or return a parameter of another shape for a
    larger one, and the cast back to the parameter's dtype would drop a complex update's
    imaginary part or truncate an update to an integer parameter. Raises naming the path, before
    anything is computed. (A float update of another width is cast back, as documented.)"""
    p_run, u_run = runs.known(p_leaves), runs.known(u_leaves)
    if p_run is not None and u_run is not None and u_run.shapes == p_run.shapes and _holds(p_run.dtype, u_run.dtype):
        return  # (the eager update's own views: the updates and params of its last step)
    for i, (p, u) in enumerate(zip(p_leaves, u_leaves)):
        if u is None:
            continue
        if isinstance(u, torch.Tensor) and isinstance(p, torch.Tensor) and u.shape == p.shape:
            if u.dtype == p.dtype or _holds(p.dtype, u.dtype):
                continue
        path = leaf_paths(params)[i]
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params at {path} must be a Tensor to be updated, got {type(p).__name__}")
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"updates at {path} must be a Tensor or None, got {type(u).__name__}")
        if u.shape != p.shape:
            raise ValueError(f"updates at {path} has shape {tuple(u.shape)}, expected {tuple(p.shape)} "
                             f"(its parameter's)")
        raise ValueError(f"updates at {path} has dtype {u.dtype}, which its parameter's dtype {p.dtype} cannot "
                         f"hold (a real floating-point parameter takes real floating-point updates, a complex one "
                         f"real or complex ones)")


def _holds(param_dtype: torch.dtype, update_dtype: torch.dtype) -> bool:
    """Whether ``param + update`` cast back to ``param_dtype`` keeps the update's kind of number."""
    if param_dtype.is_complex:
        return update_dtype.is_complex or update_dtype.is_floating_point
    return param_dtype.is_floating_point and update_dtype.is_floating_point


def _add_stochastically(p_leaves: list, u_leaves: list, key: Key, indices: list, out: list) -> None:
    """``out[i] = stochastic_round(float32(p_i) + float32(u_i), bfloat16, fold_in(key, i))`` for each
    ``i`` in ``indices``; eagerly, many contiguous parameters on one device with updates of one
    dtype are done as one flat buffer (the same bits: :func:`~functional_optim.rounding.add_stochastic_flat`)."""
    olds, deltas = [p_leaves[i] for i in indices], [u_leaves[i] for i in indices]
    if (len(indices) >= MIN_GROUP and eager_ops_for(olds, deltas) is FOREACH_PURE
            and all(p.is_contiguous() for p in olds) and len({u.dtype for u in deltas}) == 1):
        for i, new in zip(indices, add_stochastic_flat(olds, deltas, key, indices)):
            out[i] = new
        return
    for i, p, u in zip(indices, olds, deltas):
        out[i] = stochastic_round(p.to(torch.float32) + u.to(torch.float32), torch.bfloat16, fold_in(key, i))

"""One generic functional optimizer, parametrised by an :class:`OptimizerDefinition`.

Every optimizer in this library (Adam, AdamW, Adagrad, ...) is a definition: the names of its
per-parameter state slots (torch's ``state[p]`` keys), how to create them, and its step written
once over lists of tensors (``functional_optim._kernels``). This module turns a definition into

* a pure :class:`~functional_optim.base.GradientTransformation` (``init``/``update`` on pytrees),
* and the in-place machinery the ``compat`` classes use (same kernel, in-place ``Ops``).

State layout: a NamedTuple whose fields are ``step`` plus the slot names; each field is a pytree
with the structure of ``params`` (:data:`~functional_optim.tree.EMPTY` where a slot does not apply to that leaf, e.g.
Adafactor's ``row_var`` for a vector). ``step`` is one 0-d float32 tensor per leaf, so leaves that
get no gradient keep their own count, exactly like torch's per-parameter ``state[p]["step"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ._kernels.ops import PURE, Ops
from .base import GradientTransformation
from .tree import EMPTY, is_empty, check_leaves_match, check_same_structure, flatten, leaf_paths, unflatten

# kernel(ops, params, grads, state, hparams, static) -> (new_params, new_state)
#   params/grads: lists of real tensors; state: dict slot name -> list (incl. "step")
Kernel = Callable[..., tuple[list, dict]]


@dataclasses.dataclass(frozen=True)
class OptimizerDefinition:
    """What distinguishes one optimizer from another."""

    name: str
    hparams_type: type  # NamedTuple of numbers (float or 0-d tensor), torch's defaults
    static_type: type  # NamedTuple of choices fixed at construction (amsgrad, maximize, ...)
    state_type: type  # NamedTuple with fields ("step", *slots)
    init_slots: Callable[[Tensor, Any, Any], dict]  # (param, hparams, static) -> {slot: Tensor | None}
    kernel: Kernel
    supports_complex: bool = True
    supports_sparse: bool = False
    check_grad: Optional[Callable[[Tensor, Any, Any], None]] = None  # raises torch's errors

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(f for f in self.state_type._fields if f != "step")


def new_step(param: Tensor, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """A per-parameter step counter: a 0-d tensor holding 0."""
    return torch.zeros((), dtype=dtype, device=param.device if device is None else device)


def _as_real(t):
    return torch.view_as_real(t) if isinstance(t, Tensor) and torch.is_complex(t) else t


def _like_original(new, original):
    if isinstance(original, Tensor) and torch.is_complex(original) and not torch.is_complex(new):
        return torch.view_as_complex(new)
    return new


def run_kernel(definition: OptimizerDefinition, ops: Ops, params: list, grads: list, state: dict,
               hparams: Any, static: Any) -> tuple[list, dict]:
    """Run ``definition.kernel`` on lists, viewing complex tensors as real around it (as torch does).

    Leaves with a sparse gradient are passed as they are: torch's sparse paths (Adagrad) work on
    complex values directly.
    """
    if not any(torch.is_complex(p) for p in params):  # the common case: nothing to view
        new_params, new_state = definition.kernel(ops, list(params), list(grads), dict(state), hparams, static)
        return new_params, {k: new_state.get(k, v) for k, v in state.items()}
    dense = [not (isinstance(g, Tensor) and g.is_sparse) for g in grads]
    as_real = lambda ts: [_as_real(t) if d else t for t, d in zip(ts, dense)]  # noqa: E731
    real_state = {k: as_real(v) for k, v in state.items()}
    new_params, new_state = definition.kernel(ops, as_real(params), as_real(grads), real_state, hparams, static)
    new_params = [_like_original(n, o) for n, o in zip(new_params, params)]
    new_state = {k: [_like_original(n, o) for n, o in zip(new_state[k], v)] if k in new_state else v
                 for k, v in state.items()}
    return new_params, new_state


def pack_field(spec, leaves: list) -> Any:
    """A state field from per-leaf values: :data:`EMPTY` for a slot absent on every leaf (e.g.
    ``max_exp_avg_sq`` without AMSGrad), else a tree like the params with ``EMPTY`` where absent."""
    if all(x is None for x in leaves):
        return EMPTY
    return unflatten(spec, [EMPTY if x is None else x for x in leaves])


def unpack_field(params: Any, field: Any, name: str) -> list:
    """Per-leaf values of a state field (``None`` where absent), its structure checked against params."""
    if is_empty(field):
        return [None] * len(flatten(params)[0])
    check_same_structure(params, field, "params", name)
    return [None if is_empty(x) else x for x in flatten(field)[0]]


def check_hparams_type(definition: OptimizerDefinition, hparams: Any) -> None:
    if not isinstance(hparams, definition.hparams_type):
        raise TypeError(
            f"{definition.name}.update expects hparams of type {definition.hparams_type.__name__}, "
            f"got {type(hparams).__name__}"
        )


def make_transformation(definition: OptimizerDefinition, hparams: Any, static: Any) -> GradientTransformation:
    """Build the pure ``init``/``update`` pair for ``definition`` with default ``hparams``."""

    def init(params):
        leaves, spec = flatten(params)
        for path, p in zip(leaf_paths(params), leaves):
            if not isinstance(p, Tensor):
                raise TypeError(f"{definition.name}.init: params at {path} must be a Tensor, got {type(p).__name__}")
            if torch.is_complex(p) and not definition.supports_complex:
                raise RuntimeError(f"{definition.name} does not support complex parameters")
        fields = {"step": unflatten(spec, [new_step(p) for p in leaves])}
        per_leaf = [definition.init_slots(p, hparams, static) for p in leaves]
        for slot in definition.slots:
            fields[slot] = pack_field(spec, [s[slot] for s in per_leaf])
        return definition.state_type(**fields)

    def update(grads, state, params=None, hparams_now=None):
        hp = hparams if hparams_now is None else hparams_now
        check_hparams_type(definition, hp)
        if params is None:
            raise ValueError(f"{definition.name}.update needs params (its step depends on them)")
        if not isinstance(state, definition.state_type):
            raise TypeError(
                f"{definition.name}.update expects a {definition.state_type.__name__} state, got {type(state).__name__}"
            )
        check_same_structure(params, grads, "params", "grads")
        p_leaves, spec = flatten(params)
        g_leaves, _ = flatten(grads)
        fields = {}
        for name in state._fields:
            fields[name] = unpack_field(params, getattr(state, name), f"state.{name}")
        paths = leaf_paths(params) if not torch.compiler.is_compiling() else [""] * len(p_leaves)
        check_leaves_match(p_leaves, g_leaves, paths, "grads")
        if definition.check_grad is not None:
            for g in g_leaves:
                if g is not None:
                    definition.check_grad(g, hp, static)

        active = [i for i, g in enumerate(g_leaves) if g is not None]
        sub_state = {name: [leaves[i] for i in active] for name, leaves in fields.items()}
        new_p, new_state = run_kernel(
            definition, PURE, [p_leaves[i] for i in active], [g_leaves[i] for i in active], sub_state, hp, static
        )

        update_leaves: list = [None] * len(p_leaves)
        for j, i in enumerate(active):
            update_leaves[i] = new_p[j] - p_leaves[i]
        for name, leaves in fields.items():
            leaves = list(leaves)
            for j, i in enumerate(active):
                leaves[i] = new_state[name][j]
            fields[name] = pack_field(spec, leaves)
        return unflatten(spec, update_leaves), definition.state_type(**fields)

    return GradientTransformation(init, update, hparams)

"""Pytree helpers on top of ``optree``.

Every tree in this library is flattened with ``none_is_leaf=True`` so that a ``None`` gradient
(a parameter that received no gradient this step) keeps its slot and stays aligned with its
parameter and its optimizer state.

A state slot that does not apply to a leaf (AMSGrad's maximum when ``amsgrad=False``,
Adafactor's ``row_var`` for a vector) holds :data:`EMPTY`. Our helpers treat it as a leaf, so
state fields stay aligned with the params; every other pytree tool (``torch.func.vmap``,
``optree.tree_map``, ``torch.utils._pytree``) sees an empty node with nothing in it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import optree
import torch

__all__ = [
    "EMPTY",
    "Empty",
    "flatten",
    "unflatten",
    "leaf_paths",
    "check_same_structure",
    "check_leaves_match",
    "format_path",
]


class Empty(NamedTuple):
    """Marks a state slot that does not apply to its leaf (an empty pytree node)."""


EMPTY = Empty()


def is_empty(x: Any) -> bool:
    return isinstance(x, Empty)


def flatten(tree: Any) -> tuple[list[Any], optree.PyTreeSpec]:
    """Flatten ``tree`` keeping ``None`` and :data:`EMPTY` leaves in place."""
    return optree.tree_flatten(tree, is_leaf=is_empty, none_is_leaf=True)


def unflatten(spec: optree.PyTreeSpec, leaves: Sequence[Any]) -> Any:
    """Inverse of :func:`flatten`."""
    return optree.tree_unflatten(spec, list(leaves))


def format_path(path: tuple) -> str:
    """Render an optree path as ``tree['w'][0].bias`` style text (``<root>`` for a bare leaf)."""
    if not path:
        return "<root>"
    return "".join(f"[{key!r}]" for key in path)


def leaf_paths(tree: Any) -> list[str]:
    """Readable path of every leaf of ``tree`` (``None`` leaves included)."""
    return [format_path(p) for p in optree.tree_paths(tree, is_leaf=is_empty, none_is_leaf=True)]


def check_same_structure(reference: Any, other: Any, reference_name: str, other_name: str) -> None:
    """Raise ``ValueError`` naming the first path where ``other`` differs from ``reference``."""
    if torch.compiler.is_compiling():
        # dynamo can flatten any tree but cannot build treespecs or paths of every dict (optree's
        # key-order metadata); the full check runs eagerly, a traced call checks the leaf count
        if len(flatten(reference)[0]) == len(flatten(other)[0]):
            return
        raise ValueError(f"{other_name} does not match the structure of {reference_name}")
    else:
        ref_spec = optree.tree_structure(reference, is_leaf=is_empty, none_is_leaf=True)
        other_spec = optree.tree_structure(other, is_leaf=is_empty, none_is_leaf=True)
        if ref_spec == other_spec:
            return
    ref_paths = leaf_paths(reference)
    other_paths = leaf_paths(other)
    missing = [p for p in ref_paths if p not in set(other_paths)]
    extra = [p for p in other_paths if p not in set(ref_paths)]
    if missing:
        detail = f"{other_name} has no leaf at {missing[0]}"
    elif extra:
        detail = f"{other_name} has an extra leaf at {extra[0]}"
    else:
        detail = f"container types differ: {ref_spec} vs {other_spec}"
    raise ValueError(
        f"{other_name} does not match the structure of {reference_name}: {detail} "
        f"({len(other_paths)} leaves vs {len(ref_paths)})"
    )


def check_leaves_match(
    params: Sequence[torch.Tensor],
    others: Sequence[torch.Tensor | None],
    paths: Sequence[str],
    other_name: str,
    *,
    expected_shape: Callable[[torch.Tensor], torch.Size] | None = None,
) -> None:
    """Check that each non-``None`` leaf of ``others`` has its parameter's shape, dtype and device.

    Raises ``ValueError`` naming the path of the first offending leaf.
    """
    for path, p, o in zip(paths, params, others):
        if o is None:
            continue
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"{other_name} at {path} must be a Tensor or None, got {type(o).__name__}")
        if o.is_sparse:
            continue  # sparse gradients are checked by the optimizers that accept them
        shape = p.shape if expected_shape is None else expected_shape(p)
        if o.shape != shape:
            raise ValueError(f"{other_name} at {path} has shape {tuple(o.shape)}, expected {tuple(shape)}")
        if o.dtype != p.dtype:
            raise ValueError(f"{other_name} at {path} has dtype {o.dtype}, expected {p.dtype}")
        if o.device != p.device:
            raise ValueError(f"{other_name} at {path} is on {o.device}, expected {p.device}")

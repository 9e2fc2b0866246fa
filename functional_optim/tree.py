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

from typing import Any, Callable, NamedTuple, Optional, Sequence

import optree
import torch

__all__ = [
    "EMPTY",
    "Empty",
    "flatten",
    "flatten_plain",
    "flatten_like",
    "unflatten",
    "leaf_paths",
    "check_same_structure",
    "check_leaves_match",
    "check_params_match",
    "lazy_paths",
    "check_state_like",
    "check_state_type",
    "check_counters",
    "format_path",
]


class Empty(NamedTuple):
    """Marks a state slot that does not apply to its leaf (an empty pytree node)."""


EMPTY = Empty()


def is_empty(x: Any) -> bool:
    return isinstance(x, Empty)


def flatten(tree: Any) -> tuple[list[Any], optree.PyTreeSpec]:
    """Flatten ``tree`` keeping ``None`` and :data:`EMPTY` leaves in place.

    While Dynamo traces, the spec is a :class:`TracedSpec` (see there) that only
    :func:`unflatten` and ``num_leaves`` use."""
    if torch.compiler.is_compiling():
        leaves: list = []
        _traced_leaves(tree, leaves)
        return leaves, TracedSpec(tree, len(leaves))
    return optree.tree_flatten(tree, is_leaf=is_empty, none_is_leaf=True)


class TracedSpec(NamedTuple):
    """The spec :func:`flatten` returns under torch.compile: the flattened tree itself, which
    :func:`unflatten` rebuilds around new leaves in the same order.

    Dynamo runs optree's flatten through a Python polyfill, one traced call per node and a
    ``PyTreeSpec`` built in Python: about 6 ms a leaf, where walking lists, tuples, dicts and
    NamedTuples here costs a fraction of that (``update`` on 200 tensors flattens its trees about
    a dozen times: most of its tracing time). Any other node type goes to optree as before.
    """

    tree: Any
    num_leaves: int


def _is_leaf_node(node: Any) -> bool:
    """A leaf for :func:`flatten` that needs no lookup in optree's registry."""
    return node is None or isinstance(node, (torch.Tensor, Empty, int, float, bool, str))


def _is_namedtuple(node: Any) -> bool:
    """A NamedTuple instance. (``hasattr`` on the instance: Dynamo in torch 2.11 cannot trace
    ``hasattr`` on its class, and a graph break there broke every fullgraph compile.)"""
    return isinstance(node, tuple) and hasattr(node, "_fields")


def map_plain_containers(fn: Callable[[Any], Any], node: Any) -> Any:
    """``node`` with every list, tuple, NamedTuple and dict rebuilt and ``fn`` applied to
    everything else, walked in Python (traceable by Dynamo where optree's ``tree_map`` is not:
    torch 2.11's fails on a tuple; an optree-registered node is handed to ``fn`` whole)."""
    kind = type(node)
    if kind is list or kind is tuple:
        return kind(map_plain_containers(fn, child) for child in node)
    if _is_namedtuple(node):
        return kind(*(map_plain_containers(fn, child) for child in node))
    if kind is dict:
        return {key: map_plain_containers(fn, value) for key, value in node.items()}
    return fn(node)


def _traced_leaves(node: Any, out: list) -> None:
    """Append ``node``'s leaves to ``out`` in optree's order (dict keys sorted, NamedTuple fields
    in order), walking plain containers in Python and handing any other node to optree."""
    if _is_leaf_node(node):
        out.append(node)
    elif type(node) is list or type(node) is tuple or _is_namedtuple(node):
        for child in node:
            _traced_leaves(child, out)
    elif type(node) is dict:
        for key in optree.utils.total_order_sorted(node):
            _traced_leaves(node[key], out)
    else:
        out.extend(optree.tree_leaves(node, is_leaf=is_empty, none_is_leaf=True))


def flatten_plain(tree: Any) -> tuple[list[Any], optree.PyTreeSpec]:
    """:func:`flatten` for a tree that holds no :data:`EMPTY` (params, grads, updates): the same
    result without calling back into Python at every node (the fast path of every update)."""
    if torch.compiler.is_compiling():
        return flatten(tree)
    return optree.tree_flatten(tree, none_is_leaf=True)


def flatten_like(reference_spec: optree.PyTreeSpec, reference: Any, tree: Any, reference_name: str,
                 tree_name: str) -> list[Any]:
    """The leaves of ``tree`` aligned with those of ``reference`` (whose spec, from
    :func:`flatten_plain`, is ``reference_spec``), :data:`EMPTY` entries kept as leaves.

    Raises ``ValueError`` naming the path where the structures differ (:func:`check_same_structure`).
    A tree without ``EMPTY`` entries takes one C++ flatten and a spec comparison.
    """
    if not torch.compiler.is_compiling():
        leaves, spec = optree.tree_flatten(tree, none_is_leaf=True)
        if spec == reference_spec:
            return leaves
        check_same_structure(reference, tree, reference_name, tree_name)
        return flatten(tree)[0]
    leaves = flatten(tree)[0]  # traced: the leaf count is checked (see check_same_structure)
    if len(leaves) != reference_spec.num_leaves:
        raise ValueError(f"{tree_name} does not match the structure of {reference_name}")
    return leaves


def unflatten(spec: optree.PyTreeSpec | TracedSpec, leaves: Sequence[Any]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(spec, TracedSpec):
        return _rebuild(spec.tree, iter(leaves))
    return optree.tree_unflatten(spec, list(leaves))


def rebuild_like(tree: Any, spec: optree.PyTreeSpec, leaves: Sequence[Any]) -> Any:
    """``unflatten(spec, leaves)`` for ``spec = flatten(tree)[1]``, also under torch.compile when
    the new leaves of a dict are all constants (e.g. every leaf of a submodule replaced by a
    placeholder node).

    Dynamo (torch 2.13) constant-folds the unflatten of such a dict by calling optree's own
    ``_dict_unflatten`` with its polyfill's metadata, which fails (``unhashable type: 'list'``);
    while compiling, dicts are therefore rebuilt here from ``tree``, in :func:`flatten`'s
    (sorted-key) order.
    """
    if not torch.compiler.is_compiling():
        return unflatten(spec, leaves)
    return _rebuild(tree, iter(leaves))


def _rebuild(node: Any, remaining: Any) -> Any:
    """``node`` with its leaves replaced, in :func:`flatten`'s order, by those of ``remaining``."""
    if _is_leaf_node(node):
        return next(remaining)
    if type(node) is list or type(node) is tuple:
        return type(node)(_rebuild(child, remaining) for child in node)
    if _is_namedtuple(node):
        return type(node)(*(_rebuild(child, remaining) for child in node))
    if optree.tree_is_leaf(node, none_is_leaf=True):
        return next(remaining)
    if type(node) is dict:
        rebuilt = {key: _rebuild(node[key], remaining) for key in optree.utils.total_order_sorted(node)}
        return {key: rebuilt[key] for key in node}
    children, metadata, _, unflatten_fn = optree.tree_flatten_one_level(node, none_is_leaf=True)
    return unflatten_fn(metadata, [_rebuild(child, remaining) for child in children])


def entry_name(entry: Any) -> str:
    """The name of one optree path entry: a NamedTuple's field name, else the key or index."""
    return str(getattr(entry, "field", entry.entry))


def format_path(path: tuple) -> str:
    """Render an optree path as ``tree['w'][0].bias`` style text (``<root>`` for a bare leaf)."""
    if not path:
        return "<root>"
    return "".join(f"[{key!r}]" for key in path)


def leaf_paths(tree: Any) -> list[str]:
    """Readable path of every leaf of ``tree`` (``None`` leaves included)."""
    return [format_path(p) for p in optree.tree_paths(tree, is_leaf=is_empty, none_is_leaf=True)]


def check_same_structure(reference: Any, other: Any, reference_name: str, other_name: str, who: str = "") -> None:
    """Raise ``ValueError`` naming the first path where ``other`` differs from ``reference`` (the
    message starts with ``who: `` where one is given)."""
    prefix = f"{who}: " if who else ""
    if torch.compiler.is_compiling():
        # dynamo can flatten any tree but cannot build treespecs or paths of every dict (optree's
        # key-order metadata); the full check runs eagerly, a traced call checks the leaf count
        if len(flatten(reference)[0]) == len(flatten(other)[0]):
            return
        raise ValueError(f"{prefix}{other_name} does not match the structure of {reference_name}")
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
        f"{prefix}{other_name} does not match the structure of {reference_name}: {detail} "
        f"({len(other_paths)} leaves vs {len(ref_paths)})"
    )


def lazy_paths(tree: Any) -> Callable[[], list[str]]:
    """``leaf_paths(tree)``, computed only when an error message needs it (and at most once)."""
    cache: list = []

    def paths() -> list[str]:
        if not cache:
            cache.append(leaf_paths(tree))
        return cache[0]

    return paths


def check_leaves_match(
    params: Sequence[torch.Tensor],
    others: Sequence[torch.Tensor | None],
    paths: Sequence[str] | Callable[[], Sequence[str]],
    other_name: str,
    *,
    expected_shape: Callable[[torch.Tensor], torch.Size] | None = None,
    check_dtype: bool = True,
) -> None:
    """Check that each non-``None`` leaf of ``others`` has its parameter's shape, dtype (unless
    ``check_dtype`` is false) and device.

    Raises ``ValueError`` naming the path of the first offending leaf (``paths`` may be a
    function returning them, called only then).
    """
    def path_of(i: int) -> str:  # computed only for an error message
        return (paths() if callable(paths) else paths)[i]

    for i, (p, o) in enumerate(zip(params, others)):
        if o is None:
            continue
        if (type(o) is torch.Tensor and (o.dtype == p.dtype or not check_dtype) and o.device == p.device
                and not o.is_sparse and o.shape == (p.shape if expected_shape is None else expected_shape(p))):
            continue  # the common case, checked without building a message
        if isinstance(o, torch.Tensor) and o.is_sparse:
            continue  # sparse gradients are checked by the optimizers that accept them
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"{other_name} at {path_of(i)} must be a Tensor or None, got {type(o).__name__}")
        shape = p.shape if expected_shape is None else expected_shape(p)
        if o.shape != shape:
            raise ValueError(f"{other_name} at {path_of(i)} has shape {tuple(o.shape)}, expected {tuple(shape)}")
        if check_dtype and o.dtype != p.dtype:
            raise ValueError(f"{other_name} at {path_of(i)} has dtype {o.dtype}, expected {p.dtype}")
        if o.device != p.device:
            raise ValueError(f"{other_name} at {path_of(i)} is on {o.device}, expected {p.device}")


def check_params_match(tree: Any, params: Any, who: str, what: str = "updates", *, same_dtype: bool = False) -> None:
    """``tree`` (the updates, by default) must have the structure of ``params`` and, leaf by leaf
    where both hold tensors, their shape and device (and dtype, with ``same_dtype``; ``None``
    leaves are skipped). A transformation that combines the two (``u + wd * p``, a trust ratio)
    would otherwise pair leaves by position or broadcast a leaf of another shape into the
    parameter's. Raises ``ValueError`` naming ``who``, ``what`` and the path; only structures,
    shapes, dtypes and devices are compared (resolved at trace time under ``torch.compile``)."""
    check_same_structure(params, tree, "params", what, who)
    p_leaves = flatten(params)[0]
    leaves = [x if isinstance(p, torch.Tensor) else None for x, p in zip(flatten(tree)[0], p_leaves)]
    check_leaves_match(p_leaves, leaves, lazy_paths(params), f"{who}: {what}", check_dtype=same_dtype)


def check_state_like(reference: Any, state_field: Any, what: str, *, scalar: bool = False,
                     dtype: Optional[torch.dtype] = None) -> None:
    """Check a per-leaf state field against ``reference`` (the updates or params it belongs to).

    ``state_field`` must have ``reference``'s structure, and wherever both hold tensors the state
    leaf must have the reference leaf's shape (``()`` with ``scalar``, for per-leaf flags and
    counters), dtype (any, with ``scalar``; exactly ``dtype`` where one is given, for state kept in
    its own dtype such as ``mu_dtype``) and device. Raises ``ValueError`` naming ``what`` and the
    path before anything is computed; only shapes, dtypes and devices are compared.
    """
    check_same_structure(reference, state_field, "the updates", what)
    refs, values = flatten(reference)[0], flatten(state_field)[0]
    paths = lazy_paths(reference)
    for i, (r, v) in enumerate(zip(refs, values)):
        if not isinstance(r, torch.Tensor) or v is None:
            continue
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{what} at {paths()[i]} must be a Tensor, got {type(v).__name__}")
        shape = () if scalar else r.shape
        if v.shape != shape:  # (say where the expectation comes from: the updates may be the wrong ones)
            source = "" if scalar else " (the updates' shape there)"
            raise ValueError(f"{what} at {paths()[i]} has shape {tuple(v.shape)}, expected {tuple(shape)}{source}")
        expected = r.dtype if dtype is None else dtype
        if not scalar and v.dtype != expected:
            source = " (the updates' dtype there)" if dtype is None else ""
            raise ValueError(f"{what} at {paths()[i]} has dtype {v.dtype}, expected {expected}{source}")
        if v.device != r.device:
            raise ValueError(f"{what} at {paths()[i]} is on {v.device}, expected {r.device}")


def check_state_type(state: Any, state_type: type, name: str) -> None:
    """``TypeError`` unless ``state`` is a ``state_type`` (the NamedTuple ``init`` returns)."""
    if not isinstance(state, state_type):
        raise TypeError(f"{name}.update expects a {state_type.__name__} state, got {type(state).__name__}")


def check_counters(name: str, state: Any, fields: Sequence[str]) -> None:
    """The named fields of ``state`` are 0-d tensors (step counters and flags)."""
    for field in fields:
        value = getattr(state, field)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}: state.{field} must be a 0-d tensor, got {got}")

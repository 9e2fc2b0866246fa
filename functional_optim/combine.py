"""Putting transformations together: ``chain``, ``named_chain``, ``masked``, ``partition``.

Every combinator returns a :class:`~functional_optim.base.GradientTransformation` whose
``update(grads, state, params=None, hparams=None)`` hands each part its own piece of the state
and of ``hparams``:

* ``chain`` / ``named_chain``: ``hparams`` is a tuple (one entry per part) or a dict keyed by
  the parts' names; a missing or ``None`` entry means that part's defaults;
* ``masked``: the inner transformation's record;
* ``partition``: a dict keyed by label.

The ``hparams`` field of the returned transformation holds the parts' default records in the
same shape, so :func:`functional_optim.replace_hparams` can set a field by name anywhere in it.

A part that sees only some leaves (``masked``, ``partition``) gets the tree with the other
leaves replaced by :class:`MaskedNode`, an empty node that has no leaves: ``init`` creates no
state for them and ``update`` never sees them. ``None`` gradients pass through every combinator
unchanged: the leaf's update is ``None`` and its state is left as it is.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import optree
import torch
from torch import Tensor

from .base import GradientTransformation
from .tree import (check_params_match, check_same_structure, check_state_type, entry_name, flatten, leaf_paths,
                   rebuild_like, unflatten)

__all__ = [
    "MaskedNode",
    "MaskedState",
    "PartitionState",
    "chain",
    "named_chain",
    "masked",
    "partition",
    "by_name",
    "leaf_names",
    "tree_get",
    "tree_set",
]


class MaskedNode(NamedTuple):
    """Stands in for a leaf that a masked part does not see (a pytree node with no leaves)."""


class MaskedState(NamedTuple):
    """State of :func:`masked`: the inner transformation's state over the selected leaves."""

    inner_state: Any


class PartitionState(NamedTuple):
    """State of :func:`partition`: each label's inner state, over that label's leaves."""

    inner_states: dict


# ---------------------------------------------------------------------------- tree helpers
def map_updates(fn: Callable, updates: Any, *rest: Any) -> Any:
    """``fn(u, *r)`` on every leaf of ``updates``; ``None`` leaves stay ``None``.

    ``rest`` are trees with the structure of ``updates`` (params, state fields).
    """
    leaves, spec = flatten(updates)
    for k, r in enumerate(rest):  # (zip would pair leaves by position and drop the extra ones)
        check_same_structure(updates, r, "the updates", f"map_updates: tree {k + 1} mapped with the updates")
    others = [flatten(r)[0] for r in rest]
    return unflatten(spec, [None if u is None else fn(u, *r) for u, *r in zip(leaves, *others)])


def select_tree(pred: Tensor, on_true: Any, on_false: Any) -> Any:
    """``torch.where(pred, a, b)`` leaf by leaf on two trees of the same structure.

    ``pred`` is a 0-d bool tensor; nothing is read back to the host, so the choice compiles
    into the graph. Non-tensor leaves (``None``, empty slots, numbers) are taken from
    ``on_true`` as they are (the same objects, so compiled code is not re-guarded).
    """
    new, spec = flatten(on_true)
    old = flatten(on_false)[0]
    return unflatten(spec, [torch.where(pred.to(a.device), a, b) if isinstance(a, Tensor) else a
                            for a, b in zip(new, old)])


def leaf_names(tree: Any) -> list[str]:
    """Dotted name of every leaf: ``{"enc": {"weight": w}}`` -> ``"enc.weight"``; list items by index.

    For ``dict(model.named_parameters())`` these are the module's parameter names.
    """
    return [".".join(entry_name(e) for e in acc) for acc in optree.tree_accessors(tree, none_is_leaf=True)]


_NO_DEFAULT = object()
Rules = Union[Callable[[str, Any], Any], Mapping[str, Any], Sequence[tuple[str, Any]]]


def by_name(rules: Rules, default: Any = _NO_DEFAULT) -> Callable[[Any], Any]:
    """A function ``params -> tree`` giving each leaf a value from its dotted name (see :func:`leaf_names`).

    ``rules`` is either ``fn(name, leaf) -> value`` or glob patterns mapped to values, tried in
    order (first match wins; leaves matching none get ``default``, and without a default that
    raises ``ValueError``). Use it for the ``mask`` of :func:`masked` or the labels of
    :func:`partition`::

        decay_mask = by_name({"*bias": False, "*norm*": False}, default=True)
        labels = by_name(lambda name, p: "decay" if p.ndim >= 2 else "no_decay")
    """
    if callable(rules):
        rule_fn = rules
    else:
        pairs = list(rules.items()) if isinstance(rules, Mapping) else list(rules)

        def rule_fn(name, leaf):
            for pattern, value in pairs:
                if _glob_matches(pattern, name):
                    return value
            if default is _NO_DEFAULT:
                raise ValueError(f"no rule matches the parameter named {name!r} and no default was given")
            return default

    return _NamedRules(rule_fn)


@torch.compiler.assume_constant_result
def _glob_matches(pattern: str, name: str) -> bool:
    """``fnmatch.fnmatchcase(name, pattern)``, run as plain Python while tracing too: the names
    and patterns are constants, and Dynamo in torch 2.11 cannot trace ``re.Pattern.match``."""
    return fnmatch.fnmatchcase(name, pattern)


class _NamedRules:
    """What :func:`by_name` returns: called on params it gives the tree of values;
    :func:`_resolve` asks for the flat values directly (``leaf_values``), since under
    torch.compile dynamo cannot rebuild a dict whose leaves are all constants (labels, bools)."""

    def __init__(self, rule_fn: Callable[[str, Any], Any]) -> None:
        self._rule_fn = rule_fn

    def leaf_values(self, params: Any) -> list:
        return [self._rule_fn(n, p) for n, p in zip(leaf_names(params), flatten(params)[0])]

    def __call__(self, params: Any) -> Any:
        return unflatten(flatten(params)[1], self.leaf_values(params))


def _resolve(spec_or_fn: Any, tree: Any) -> list:
    """Leaf values (bools or labels) of a mask/labels tree or function, one per leaf of ``tree``.

    A tree may be a prefix of ``tree`` (``{"encoder": False}`` covers the whole encoder).
    """
    if isinstance(spec_or_fn, (_NamedRules, _PrefixTree)):
        return spec_or_fn.leaf_values(tree)
    return _broadcast(spec_or_fn(tree), tree)


def _broadcast(values: Any, tree: Any) -> list:
    """The leaves of the prefix tree ``values`` repeated over the leaves of ``tree`` below each."""
    try:
        full = optree.tree_broadcast_prefix(values, tree, none_is_leaf=True)
    except ValueError as e:
        raise ValueError(f"the mask/labels tree does not match the structure of the params: {e}") from None
    # flatten_up_to the params' structure rather than flatten(full): under torch.compile, dynamo
    # cannot flatten a dict whose leaves are all constants (bools, labels) with optree >= 0.19
    return optree.tree_structure(tree, none_is_leaf=True).flatten_up_to(full)


def _prepared(spec_or_fn: Any) -> Any:
    """A literal mask/labels tree as a :class:`_PrefixTree`; functions as they are."""
    return spec_or_fn if callable(spec_or_fn) else _PrefixTree(spec_or_fn)


class _PrefixTree:
    """A literal mask/labels tree, read once when the combinator is built.

    Under torch.compile, dynamo cannot rebuild a dict whose leaves are all constants (what
    ``tree_broadcast_prefix`` of a literal tree does), so a params leaf takes the value of the
    literal leaf whose path (``optree.tree_paths``, which traces) starts its own path. Outside
    of compilation the structure is checked as :func:`_broadcast` does.
    """

    def __init__(self, values: Any) -> None:
        self._values = values
        self._rules = list(zip(optree.tree_paths(values, none_is_leaf=True),
                               optree.tree_leaves(values, none_is_leaf=True)))

    def leaf_values(self, tree: Any) -> list:
        if not torch.compiler.is_compiling():
            return _broadcast(self._values, tree)
        return [self._value_at(path) for path in optree.tree_paths(tree, none_is_leaf=True)]

    def _value_at(self, path: tuple) -> Any:
        for prefix, value in self._rules:
            if path[:len(prefix)] == prefix:
                return value
        raise ValueError(f"the mask/labels tree does not match the structure of the params: no entry for {path}")


def _keep(tree: Any, keep: Sequence[bool]) -> Any:
    """``tree`` with the leaves not kept replaced by :class:`MaskedNode`."""
    leaves, spec = flatten(tree)
    return rebuild_like(tree, spec, [leaf if k else MaskedNode() for leaf, k in zip(leaves, keep)])


def _sub_leaves(full: Any, sub: Any) -> list:
    """The leaves of ``sub`` (which has ``full``'s structure with some leaves masked) aligned with ``full``'s."""
    return optree.tree_structure(full, none_is_leaf=True).flatten_up_to(sub)


def _params_or_updates(params: Any, updates: Any) -> Any:
    return updates if params is None else params


# ---------------------------------------------------------------------------- hparams
def _part_hparams(hparams: Any, index: int, key: Any) -> Any:
    """One part's record from a tuple (by position) or dict (by key) of records; ``None`` = defaults."""
    if hparams is None:
        return None
    if isinstance(hparams, Mapping):
        return hparams.get(key)
    return hparams[index]


def _check_hparams_container(name: str, hparams: Any, keys: Sequence) -> None:
    if hparams is None:
        return
    if isinstance(hparams, Mapping):
        unknown = [k for k in hparams if k not in keys]
        if unknown:
            raise ValueError(f"{name}: hparams for unknown part(s) {unknown}; parts are {list(keys)}")
    elif isinstance(hparams, (tuple, list)):
        if len(hparams) != len(keys):
            raise ValueError(f"{name}: expected hparams for {len(keys)} parts, got {len(hparams)}")
    else:
        raise TypeError(f"{name}: hparams must be a tuple or dict of the parts' records, got {type(hparams).__name__}")


def _check_parts_state(name: str, state: Any, keys: Sequence, container: type) -> None:
    """A combinator's state holds one entry per part: a tuple of that length, or a dict with those keys."""
    if container is tuple:
        if not isinstance(state, tuple) or hasattr(state, "_fields") or len(state) != len(keys):
            got = f"{len(state)} entries" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(f"{name}: state must be a tuple of {len(keys)} part states, got {got}")
    elif not isinstance(state, Mapping) or set(state) != set(keys):
        got = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{name}: state must be a dict of part states keyed by {list(keys)}, got {got}")


# ---------------------------------------------------------------------------- combinators
def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` one after the other: each part's updates are the next part's input.

    ``chain(clip_by_global_norm(1.0), adamw(lr=1e-3))`` clips the gradient, then takes an AdamW
    step on the clipped gradient. Every part receives the same ``params``. The state is a tuple
    of the parts' states; ``hparams`` a tuple of the parts' records (``None`` for defaults).

    Differs from optax in one respect that follows from how this library's optimizers work:
    ``adam`` & co. return ``new_params - params`` (learning rate and sign included), so they are
    normally the *last* part; a part after them transforms the final step.
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransformation):
            raise TypeError(f"chain: part {i} is a {type(t).__name__}, not a GradientTransformation")
    return _chain("chain", tuple(range(len(transforms))), transforms, tuple)


def named_chain(*named: tuple[str, GradientTransformation]) -> GradientTransformation:
    """:func:`chain` whose parts have names: its state and ``hparams`` are dicts keyed by them.

    ``named_chain(("clip", clip_by_global_norm(1.0)), ("adam", adam()))`` has state
    ``{"clip": ..., "adam": AdamState(...)}``; ``state["adam"].exp_avg`` reads a moment, and
    :func:`tree_get` finds a part's state by name in any nesting.
    """
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain: names must be unique, got {names}")
    for n, t in named:
        if not isinstance(n, str) or not isinstance(t, GradientTransformation):
            raise TypeError("named_chain takes (name, GradientTransformation) pairs")
    return _chain("named_chain", tuple(names), tuple(t for _, t in named), dict)


def _chain(name: str, keys: tuple, transforms: tuple, container: type) -> GradientTransformation:
    def pack(values):
        return tuple(values) if container is tuple else dict(zip(keys, values))

    def init(params):
        return pack(t.init(params) for t in transforms)

    def update(grads, state, params=None, hparams=None):
        _check_hparams_container(name, hparams, keys)
        _check_parts_state(name, state, keys, container)
        if params is not None:  # before any part: a part's state check would blame its state instead
            check_params_match(grads, params, name)
        new_states = []
        for i, (key, t) in enumerate(zip(keys, transforms)):
            grads, s = t.update(grads, state[key], params, _part_hparams(hparams, i, key))
            new_states.append(s)
        return grads, pack(new_states)

    return GradientTransformation(init, update, pack(t.hparams for t in transforms))


def masked(inner: GradientTransformation, mask: Any) -> GradientTransformation:
    """Apply ``inner`` to the leaves where ``mask`` is ``True``; the others pass through unchanged.

    ``mask`` is a tree of bools with the structure of the params (or a prefix of it), or a
    function ``params -> tree of bools`` such as :func:`by_name`. ``inner`` never sees the other
    leaves (they are :class:`MaskedNode` in its input and state). A function mask is called on
    ``params`` (or on the updates when ``update`` is given no ``params``), so it may look at
    names, shapes and dtypes, but not at values that change. Example, L2 decay on matrices only::

        chain(masked(add_decayed_weights(1e-4), by_name(lambda n, p: p.ndim >= 2)), adam())

    As in optax, unmasked leaves keep their *input* update (here: the raw gradient).
    """
    mask = _prepared(mask)

    def init(params):
        return MaskedState(inner.init(_keep(params, _mask_values(mask, params))))

    def update(grads, state, params=None, hparams=None):
        check_state_type(state, MaskedState, "masked")
        keep = _mask_values(mask, _params_or_updates(params, grads))
        sub_params = None if params is None else _keep(params, keep)
        sub_updates, inner_state = inner.update(_keep(grads, keep), state.inner_state, sub_params, hparams)
        leaves, spec = flatten(grads)
        inner_leaves = _sub_leaves(grads, sub_updates)
        out = [u if k else g for g, u, k in zip(leaves, inner_leaves, keep)]
        return unflatten(spec, out), MaskedState(inner_state)

    return GradientTransformation(init, update, inner.hparams)


def _mask_values(mask: Any, tree: Any) -> list:
    """The mask's value for each leaf of ``tree``, each a Python ``bool`` (``TypeError`` naming the
    path otherwise: a 0, a string or a tensor would select by its truthiness)."""
    keep = _resolve(mask, tree)
    for i, k in enumerate(keep):
        if type(k) is not bool:
            raise TypeError(f"masked: the mask at {leaf_paths(tree)[i]} must be True or False, got {type(k).__name__}"
                            f" {k!r:.40}")
    return keep


def partition(transforms: Mapping[Any, GradientTransformation], param_labels: Any) -> GradientTransformation:
    """Give each leaf to the transformation of its label: ``transforms[label]``.

    ``param_labels`` is a tree of labels with the params' structure (or a prefix of it), or a
    function ``params -> labels`` (e.g. :func:`by_name`). Each transformation sees only its own
    leaves, so it keeps state only for them; this is what torch's param groups do::

        partition({"decay": adamw(weight_decay=0.1), "no_decay": adamw(weight_decay=0.0),
                   "frozen": set_to_zero()},
                  by_name({"*bias": "no_decay", "*norm*": "no_decay", "embed.*": "frozen"},
                          default="decay"))

    ``hparams`` is a dict keyed by label (missing labels use their defaults). Unlike optax's
    ``partition``, the state holds each label's inner state directly (no wrapper per label).
    """
    transforms = dict(transforms)
    labels_set = list(transforms)
    param_labels = _prepared(param_labels)

    def labels_of(tree):
        labels = _resolve(param_labels, tree)
        unknown = [lbl for lbl in dict.fromkeys(labels) if lbl not in transforms]
        if unknown:
            raise ValueError(f"partition: labels {unknown} have no transformation; known labels: {labels_set}")
        return labels

    def init(params):
        labels = labels_of(params)
        return PartitionState({k: t.init(_keep(params, [lbl == k for lbl in labels])) for k, t in transforms.items()})

    def update(grads, state, params=None, hparams=None):
        _check_hparams_container("partition", hparams, labels_set)
        if hparams is not None and not isinstance(hparams, Mapping):
            raise TypeError("partition: hparams must be a dict keyed by label")
        check_state_type(state, PartitionState, "partition")
        _check_parts_state("partition", state.inner_states, labels_set, dict)
        labels = labels_of(_params_or_updates(params, grads))
        leaves, spec = flatten(grads)
        out = list(leaves)
        new_states = {}
        for i, (k, t) in enumerate(transforms.items()):
            keep = [lbl == k for lbl in labels]
            sub_params = None if params is None else _keep(params, keep)
            sub_updates, new_states[k] = t.update(
                _keep(grads, keep), state.inner_states[k], sub_params, _part_hparams(hparams, i, k)
            )
            for j, u in enumerate(_sub_leaves(grads, sub_updates)):
                if keep[j]:
                    out[j] = u
        return unflatten(spec, out), PartitionState(new_states)

    return GradientTransformation(init, update, {k: t.hparams for k, t in transforms.items()})


# ---------------------------------------------------------------------------- state lookup
def _is_named_node(node: Any) -> bool:
    return isinstance(node, Mapping) or (isinstance(node, tuple) and hasattr(node, "_fields"))


def _named_children(node: Any):
    if isinstance(node, Mapping):
        return list(node.items())
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return [(f, getattr(node, f)) for f in node._fields]
    if isinstance(node, (tuple, list)):
        return list(enumerate(node))
    return []


def _find(node: Any, key: Any, found: list) -> None:
    for k, child in _named_children(node):
        if isinstance(key, type):
            if isinstance(child, key):
                found.append(child)
        elif k == key and _is_named_node(node):
            found.append(child)
        _find(child, key, found)


def tree_get(tree: Any, key: Union[str, type], default: Any = _NO_DEFAULT) -> Any:
    """The one value in ``tree`` stored under ``key``: a dict key, a NamedTuple field, or a type.

    ``tree_get(state, "adam")`` finds a :func:`named_chain` part's state at any depth;
    ``tree_get(state, ApplyIfFiniteState).total_notfinite`` the skip counter;
    ``tree_get(state, "hyperparams")["lr"]`` the current injected learning rate. Raises
    ``KeyError`` if nothing matches (unless ``default`` is given) and ``ValueError`` if several do.
    """
    found: list = []
    if isinstance(key, type) and isinstance(tree, key):
        found.append(tree)
    _find(tree, key, found)
    if not found:
        if default is not _NO_DEFAULT:
            return default
        raise KeyError(f"no entry {key!r} in the tree")
    if len(found) > 1:
        raise ValueError(f"{len(found)} entries match {key!r}; look inside a narrower part of the tree")
    return found[0]


def tree_set(tree: Any, **values: Any) -> Any:
    """A copy of ``tree`` with every dict key / NamedTuple field named in ``values`` replaced.

    A number replacing a tensor becomes a tensor of the same dtype and device, so a compiled
    step that reads it does not recompile: ``state = tree_set(state, lr=3e-4)`` sets an
    injected learning rate from outside. Raises ``KeyError`` if a name occurs nowhere.
    """
    seen: set = set()

    def convert(old, new):
        if isinstance(old, Tensor) and not isinstance(new, Tensor):
            return torch.as_tensor(new, dtype=old.dtype, device=old.device)
        if isinstance(old, tuple) and isinstance(new, tuple) and len(old) == len(new):
            return tuple(convert(o, n) for o, n in zip(old, new))
        return new

    def rebuild(node):
        """``node`` with the named entries replaced; the very same object where nothing changed
        (a compiled step guards on the identity of constant leaves such as empty slots)."""
        if isinstance(node, Mapping):
            items = {k: convert(v, values[k]) if k in values else rebuild(v) for k, v in node.items()}
            seen.update(k for k in node if k in values)
            if all(items[k] is v for k, v in node.items()):
                return node
            return items if type(node) is dict else type(node)(items)
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            fields = {f: convert(getattr(node, f), values[f]) if f in values else rebuild(getattr(node, f))
                      for f in node._fields}
            seen.update(f for f in node._fields if f in values)
            if all(fields[f] is getattr(node, f) for f in node._fields):
                return node
            return type(node)(**fields)
        if isinstance(node, (tuple, list)):
            items = [rebuild(v) for v in node]
            return node if all(a is b for a, b in zip(items, node)) else type(node)(items)
        return node

    out = rebuild(tree)
    missing = sorted(set(values) - seen)
    if missing:
        raise KeyError(f"no entries named {missing} in the tree")
    return out

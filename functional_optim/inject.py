"""Hyperparameters set by name, scheduled, or changed from outside while training.

Every transformation carries its default hyperparameters in ``tx.hparams``: a record such as
``AdamHParams(lr, betas, eps, weight_decay)``, or for a combinator a tuple/dict of its parts'
records. A hyperparameter is addressed by its field name (``"lr"`` sets every ``lr`` in the
tree, so one schedule drives all parts) or qualified by the chain/partition keys on its way
(``"decay.weight_decay"``, ``"1.lr"``).

* :func:`replace_hparams` builds a record tree with some fields replaced, to pass as the
  ``hparams`` argument of ``update``.
* :func:`inject_hyperparams` stores hyperparameters in the optimizer state as 0-d tensors and
  recomputes the scheduled ones from the step count at every update, so that a compiled step
  never recompiles when they change and ``tree_set(state, lr=...)`` changes them from outside.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor

from .base import GradientTransformation
from .tree import check_counters, check_state_type, flatten

__all__ = ["InjectHyperparamsState", "inject_hyperparams", "replace_hparams", "named_hparams"]


def _is_record(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _records(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, record)`` for every hparams record (a NamedTuple) in ``tree``; path = container keys."""
    if _is_record(tree):
        yield path, tree
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _records(v, path + (str(k),))
    elif isinstance(tree, (tuple, list)):
        for i, v in enumerate(tree):
            yield from _records(v, path + (str(i),))


def _matches(name: str, path: tuple, record: Any) -> bool:
    *qualifiers, field = name.split(".")
    if field not in record._fields:
        return False
    it = iter(path)
    return all(q in it for q in qualifiers)  # qualifiers appear in the path, in order


def replace_hparams(tree: Any, values: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> Any:
    """``tree`` (e.g. ``tx.hparams``) with the named fields replaced in every record they match.

    ``replace_hparams(tx.hparams, lr=1e-4)``; ``replace_hparams(tx.hparams, {"decay.weight_decay": 0.1})``.
    Raises ``ValueError`` for a name that matches no field.
    """
    values = {**(values or {}), **kwargs}
    used: set = set()

    def rebuild(node, path):
        if _is_record(node):
            fields = {}
            for name, v in values.items():
                if _matches(name, path, node):
                    fields[name.rsplit(".", 1)[-1]] = v
                    used.add(name)
            return node._replace(**fields) if fields else node
        if isinstance(node, Mapping):
            return {k: rebuild(v, path + (str(k),)) for k, v in node.items()}
        if isinstance(node, (tuple, list)):
            return type(node)(rebuild(v, path + (str(i),)) for i, v in enumerate(node))
        return node

    out = rebuild(tree, ())
    unknown = [n for n in values if n not in used]
    if unknown:
        known = sorted({f for _, r in _records(tree) for f in r._fields})
        raise ValueError(f"no hyperparameter named {unknown}; this transformation has {known}")
    return out


def named_hparams(tree: Any) -> dict[str, Any]:
    """``{field: default}`` for every field name whose defaults agree wherever it occurs in ``tree``."""
    seen: dict[str, list] = {}
    for _, record in _records(tree):
        for f in record._fields:
            seen.setdefault(f, []).append(getattr(record, f))
    out = {}
    for f, vals in seen.items():
        if all(v is vals[0] or (not isinstance(v, Tensor) and not isinstance(vals[0], Tensor) and v == vals[0])
               for v in vals):
            out[f] = vals[0]
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_hyperparam(x: Any) -> bool:
    """A number, a 0-d tensor, a schedule, or a tuple of those (``None`` allowed inside a tuple)."""
    if isinstance(x, tuple):
        return any(_is_hyperparam(v) for v in x) and all(v is None or _is_hyperparam(v) for v in x)
    return _is_number(x) or isinstance(x, Tensor) or callable(x)  # a Tensor is callable too: listed first


def _default_dtype(params: list) -> torch.dtype:
    """float64 if any parameter is float64/complex128 (exact hyperparameters for exact parity with
    torch's Python-float ones), else float32 (a 0-d float32 leaf is then never promoted)."""
    if any(p.dtype in (torch.float64, torch.complex128) for p in params):
        return torch.float64
    return torch.float32


class InjectHyperparamsState(NamedTuple):
    """``count``: updates so far (0-d int32); ``hyperparams``: name -> the value used by the last
    update (0-d tensors, tuples of them for ``betas``), settable with
    :func:`~functional_optim.tree_set`; ``inner_state``: the wrapped transformation's state."""

    count: Tensor
    hyperparams: dict
    inner_state: Any


def inject_hyperparams(inner: Union[GradientTransformation, Callable[..., GradientTransformation]],
                       /, *, hyperparam_dtype: Optional[torch.dtype] = None, **hyperparams: Any):
    """Keep hyperparameters of ``inner`` in its state, scheduled or set from outside while training.

    ``inject_hyperparams(chain(clip_by_global_norm(1.0), adamw(weight_decay=0.05)),
    lr=warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000), max_norm=1.0)``: each value is a
    schedule (a function of the update count, see :mod:`functional_optim.schedules`), or a
    number / 0-d tensor kept constant unless changed in the state
    (``state = tree_set(state, max_norm=0.5)``). Names address fields of ``inner.hparams`` as
    in :func:`replace_hparams`; with none given, every field whose name is unambiguous is
    injected. Stored values are 0-d tensors of ``hyperparam_dtype`` (default: float64 if a
    parameter is float64, else float32) on the first parameter's device: changing them never recompiles a compiled step.

    Also accepts a factory, as optax does: ``inject_hyperparams(adamw)(lr=schedule,
    weight_decay=0.1)`` calls ``adamw`` once with the initial values and injects the arguments
    that are hyperparameter fields (the others, e.g. ``amsgrad``, just go to the factory).
    Unlike optax, the factory is not called again at each update: the numbers reach the
    transformation through its ``hparams`` argument.
    """
    if not isinstance(inner, GradientTransformation):
        if not callable(inner):
            raise TypeError("inject_hyperparams takes a GradientTransformation or a factory returning one")
        return _from_factory(inner, hyperparam_dtype, hyperparams)
    if not hyperparams:
        hyperparams = {k: v for k, v in named_hparams(inner.hparams).items() if _is_hyperparam(v)}
    for name, value in hyperparams.items():
        if not _is_hyperparam(value):
            raise TypeError(f"hyperparameter {name!r} must be a number, a 0-d tensor or a schedule, "
                            f"got {type(value).__name__}")
    replace_hparams(inner.hparams, hyperparams)  # raises for unknown names

    def value_at(spec, count, stored):
        """This update's value: a schedule at ``count``, else the stored (possibly externally set) one."""
        if isinstance(spec, tuple):
            return tuple(None if sp is None else value_at(sp, count, st) for sp, st in zip(spec, stored))
        if callable(spec) and not isinstance(spec, Tensor):
            return torch.as_tensor(spec(count)).to(dtype=stored.dtype, device=stored.device)
        return stored

    def init(params):
        leaves = [p for p in flatten(params)[0] if isinstance(p, Tensor)]
        device = leaves[0].device if leaves else torch.device("cpu")
        dtype = hyperparam_dtype or _default_dtype(leaves)
        count = torch.zeros((), dtype=torch.int32, device=device)
        like = torch.zeros((), dtype=dtype, device=device)

        def initial(spec):
            if isinstance(spec, tuple):
                return tuple(None if s is None else initial(s) for s in spec)
            if callable(spec) and not isinstance(spec, Tensor):
                return value_at(spec, count, like)
            return torch.as_tensor(spec).to(dtype=dtype, device=device).reshape(())

        values = {name: initial(spec) for name, spec in hyperparams.items()}
        return InjectHyperparamsState(count, values, inner.init(params))

    def update(grads, state, params=None, hparams=None):
        check_state_type(state, InjectHyperparamsState, "inject_hyperparams")
        check_counters("inject_hyperparams", state, ("count",))
        if not isinstance(state.hyperparams, dict) or set(state.hyperparams) != set(hyperparams):
            got = sorted(state.hyperparams) if isinstance(state.hyperparams, dict) else type(state.hyperparams).__name__
            raise ValueError(f"inject_hyperparams: state.hyperparams holds {got}, expected {sorted(hyperparams)}")
        values = {name: value_at(spec, state.count, state.hyperparams[name]) for name, spec in hyperparams.items()}
        tree = replace_hparams(inner.hparams if hparams is None else hparams, values)
        updates, inner_state = inner.update(grads, state.inner_state, params, tree)
        return updates, InjectHyperparamsState(state.count + 1, values, inner_state)

    return GradientTransformation(init, update, inner.hparams)


def _from_factory(factory: Callable[..., GradientTransformation], hyperparam_dtype, _given: dict):
    if _given:
        raise TypeError("with a factory, pass the hyperparameters to the function inject_hyperparams returns")

    def initial(value):
        if isinstance(value, tuple):
            return tuple(initial(v) for v in value)
        return value(0) if callable(value) and not isinstance(value, Tensor) else value

    def make(*args, **kwargs) -> GradientTransformation:
        candidates = {k: v for k, v in kwargs.items() if _is_hyperparam(v)}
        tx = factory(*args, **{k: initial(v) if k in candidates else v for k, v in kwargs.items()})
        fields = {f for _, r in _records(tx.hparams) for f in r._fields}
        injected = {k: v for k, v in candidates.items() if k in fields}
        stray = [k for k, v in candidates.items() if k not in fields and callable(v)]
        if stray:
            raise ValueError(f"{stray} are not hyperparameters of {getattr(factory, '__name__', factory)} "
                             f"and cannot be scheduled")
        return inject_hyperparams(tx, hyperparam_dtype=hyperparam_dtype, **injected)

    return make

"""``compat.TransformationOptimizer``: any functional transformation as a ``torch.optim.Optimizer``.

    opt = TransformationOptimizer(model.parameters(),
                                  fo.chain(fo.clip_by_global_norm(1.0), fo.adamw(weight_decay=0.1)),
                                  lr=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    loss.backward(); opt.step(); sched.step(); opt.zero_grad()

Hyperparameters are param-group entries: every field name of ``transformation.hparams`` whose
default is the same wherever it occurs (``lr``, ``betas``, ``max_norm`` ...) becomes a group key
with that default, and keyword arguments add or override keys (qualified names such as
``"decay.weight_decay"`` too, see :func:`functional_optim.replace_hparams`). Each ``step`` passes
each group's current values to ``update`` as its ``hparams``, so LR schedulers (which write
``group["lr"]``, or ``group["betas"]`` for momentum cycling) drive the transformation directly.

A hyperparameter that the transformation injects itself (:func:`functional_optim.inject_hyperparams`
with a schedule) follows its schedule: the group value for that name is overridden.

Each param group is a separate functional state over the list of its parameters, like torch's
per-group hyperparameters; a transformation that looks at all leaves (``clip_by_global_norm``,
``apply_if_finite``) sees one group at a time.

State layout, for ``state_dict``: the transformation's state is flattened; a leaf that belongs
to one parameter (a slot in a list over the group's parameters) is stored in ``state[p]`` under
its dotted path with the list index left out (``"exp_avg"``, ``"1.exp_avg"``, ``"adam.step"``);
a leaf shared by the group (a step count, an injected hyperparameter, a skip counter) is stored
in ``state[first param of the group]`` under its full path. The state of a group is created
for all its parameters at its first step. ``load_state_dict`` checks keys and shapes before
changing anything and restores every leaf's own dtype and device (torch would cast floating
state to the parameter's dtype).

``stochastic_rounding_seed=<int>`` adds each update to a **bfloat16** parameter with stochastic
rounding (:func:`functional_optim.stochastic_round` of ``float32(p) + float32(u)``, unbiased), as
torchao's ``bf16_stochastic_round`` and heavyball do, so that a pure-bfloat16 model keeps learning
where its updates are below half an ulp; other dtypes are added as before. The key of group ``i``'s
``n``-th step is ``fold_in(fold_in(seed, i), n)``, with ``n`` kept in the group as
``"stochastic_rounding_step"`` (so ``state_dict`` carries it and a resumed run draws the same bits);
within a step, parameter ``j`` of the group uses ``fold_in(key, j)`` as
:func:`functional_optim.apply_updates` does. It needs a transformation that returns the update
itself, such as a chain of building blocks (``fo.chain(fo.scale_by_adam(), fo.add_decayed_weights(wd),
fo.scale_by_learning_rate(lr))`` is AdamW): the torch-exact aliases (``fo.adam``, ``fo.sgd`` ...)
compute the new parameter in its own dtype as torch does and return the difference, so on bfloat16
parameters their sub-ulp updates are already rounded away.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import optree
import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from functional_optim import _validate
from functional_optim.base import GradientTransformation, apply_updates
from functional_optim.inject import named_hparams, replace_hparams
from functional_optim.rounding import fold_in
from functional_optim.tree import _is_namedtuple, entry_name, flatten, map_plain_containers

from .optimizer import check_grad_shapes, floats_as_tensors

__all__ = ["TransformationOptimizer"]


#: the param-group entry counting a group's stochastically rounded steps
STOCHASTIC_ROUNDING_STEP = "stochastic_rounding_step"


class _Slot(NamedTuple):
    param_index: Optional[int]  # None: shared by the group, stored with its first parameter
    key: str


class _Layout(NamedTuple):
    n_params: int
    spec: optree.PyTreeSpec
    slots: list  # one per leaf: a _Slot, or None for a leaf that is always None
    skeleton: Any  # the state's containers with every leaf None (rebuilt by _refill under compile)


def _leaves(tree: Any) -> list:
    """Leaves in the order of :func:`_layout` (empty nodes such as masked slots have none)."""
    return optree.tree_leaves(tree, none_is_leaf=True)


def _child(node: Any, entry: Any) -> Any:
    """``entry(node)``: the child of ``node`` at an optree path entry. (Read through ``entry.entry``:
    Dynamo in torch 2.11 fails inlining the entry's ``__call__``, "object has no attribute 'entry'".)"""
    key = entry.entry
    return getattr(node, key) if isinstance(entry, optree.GetAttrEntry) else node[key]


def _layout(template: Any, n_params: int) -> _Layout:
    """Where each leaf of a group's state lives in ``optimizer.state`` (see the module docstring)."""

    def per_param(node):  # a list over the group's parameters: tensors, None or empty nodes
        return isinstance(node, list) and len(node) == n_params and all(
            x is None or isinstance(x, Tensor) or (isinstance(x, tuple) and len(x) == 0) for x in node)

    accessors, leaves, spec = optree.tree_flatten_with_accessor(template, none_is_leaf=True)
    slots = []
    for leaf, accessor in zip(leaves, accessors):
        if leaf is None:
            slots.append(None)
            continue
        node, index, parts = template, None, []
        for entry in accessor:
            if index is None and per_param(node):
                index = entry.entry
            else:
                parts.append(entry_name(entry))
            node = _child(node, entry)
        slots.append(_Slot(index, ".".join(parts) or "state"))
    return _Layout(n_params, spec, slots, _skeleton(template))


def _skeleton(node: Any) -> Any:
    """``node``'s containers with every leaf ``None`` (no tensor kept alive), walked in Python:
    under torch.compile, unflattening a spec around constant leaves is what Dynamo's optree
    polyfill gets wrong (see :func:`_refill`)."""
    return map_plain_containers(_skeleton_leaf, node)


def _skeleton_leaf(node: Any) -> Any:
    """``None`` for a leaf; another container type is kept as it is (:func:`_refill` hands it to optree)."""
    if node is None or isinstance(node, Tensor) or optree.tree_is_leaf(node, none_is_leaf=True):
        return None
    return node


def _refill(node: Any, leaves: Any) -> Any:
    """``node`` (a :class:`_Layout` skeleton) with its leaves, in :func:`_layout`'s order, taken from
    the iterator ``leaves``: what ``optree.tree_unflatten(layout.spec, ...)`` gives, built without
    the spec. A layout made while Dynamo (torch 2.13) traced holds a spec of its optree polyfill,
    whose dict unflatten fails (``ValueError: length mismatch``), also after the compiled frame
    (compat.SophiaH estimating its Hessian from ``backward(create_graph=True)``, whose step
    breaks the graph between making a layout and reading it)."""
    if node is None:
        return next(leaves)
    kind = type(node)
    if kind is list or kind is tuple:
        return kind(_refill(child, leaves) for child in node)
    if _is_namedtuple(node):  # (an empty one has no leaves)
        return kind(*(_refill(child, leaves) for child in node))
    if kind is dict:
        rebuilt = {key: _refill(node[key], leaves) for key in optree.utils.total_order_sorted(node)}
        return {key: rebuilt[key] for key in node}
    spec = optree.tree_structure(node, none_is_leaf=True)
    return optree.tree_unflatten(spec, [next(leaves) for _ in range(spec.num_leaves)])


def _rebuilt(cls: type, construction: tuple, torch_state: dict) -> "TransformationOptimizer":
    """An unpickled subclass optimizer: made by its constructor on the pickled parameters, then
    given the pickled ``defaults``, ``state`` and ``param_groups`` (torch's ``__setstate__``)."""
    args, kwargs = construction
    params = [p for group in torch_state["param_groups"] for p in group["params"]]
    optimizer = cls(params, *args, **kwargs)
    optimizer.__setstate__(torch_state)
    optimizer._layouts = {}  # the groups are the pickled ones now: layouts are made again
    return optimizer


def _torch_managed(attribute: str) -> bool:
    """Attributes ``torch.optim.Optimizer`` sets up itself (hooks, profiling names, warnings)."""
    return attribute.startswith("_optimizer_") or attribute in (
        "_zero_grad_profile_name", "_warned_capturable_if_run_uncaptured", "defaults", "state", "param_groups")


class TransformationOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` that steps with a functional :class:`GradientTransformation`.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        transformation: any transformation of this library (an optimizer, a ``chain``,
            ``partition``, ``MultiSteps(...).gradient_transformation()``, ...).
        stochastic_rounding_seed: ``None`` (default): updates are added to the parameters with
            round to nearest; an ``int``: bfloat16 parameters are updated with stochastic rounding
            drawn from this seed (see the module docstring).
        **hyperparams: group defaults that override or add to the transformation's own.

    ``step(closure=None)`` runs ``transformation.update`` per group on the parameters' ``.grad``
    (``None`` for parameters without one) and adds the updates in place. Hooks, ``zero_grad``,
    ``add_param_group``, ``state_dict`` and LR schedulers work as for torch's optimizers. A
    hyperparameter set to a tensor is passed as is; floats recompile a compiled transformation
    when they change, which does not matter here (``step`` runs eagerly).
    """

    #: ``None``: round to nearest; see ``__init__`` (a class default for subclasses that set up
    #: the instance themselves)
    stochastic_rounding_seed: Optional[int] = None

    def __init__(self, params: ParamsT, transformation: GradientTransformation, *,
                 stochastic_rounding_seed: Optional[int] = None, **hyperparams: Any) -> None:
        if not isinstance(transformation, GradientTransformation):
            raise TypeError(f"transformation must be a GradientTransformation, got {type(transformation).__name__}")
        if stochastic_rounding_seed is not None and (
                isinstance(stochastic_rounding_seed, bool) or not isinstance(stochastic_rounding_seed, int)):
            raise TypeError(f"stochastic_rounding_seed must be an int or None, got "
                            f"{type(stochastic_rounding_seed).__name__}")
        defaults = named_hparams(transformation.hparams)
        defaults.update(hyperparams)
        replace_hparams(transformation.hparams, defaults)  # unknown names raise here
        if "lr" in defaults:
            _validate.check_lr(defaults["lr"])
        self.transformation = transformation
        self.stochastic_rounding_seed = stochastic_rounding_seed
        self._hparam_names = tuple(defaults)
        self._layouts: dict[int, _Layout] = {}
        super().__init__(params, defaults)

    def _step_hparams(self, group: dict) -> Any:
        """:meth:`_hparams` for a step: under torch.compile every Python-float hyperparameter
        as a 0-d tensor (:func:`compat.optimizer.floats_as_tensors`: a scheduler's changing float
        would otherwise be specialized, recompiling the step at every new value)."""
        hparams = self._hparams(group)
        if not torch.compiler.is_compiling():
            return hparams
        return floats_as_tensors(hparams)

    def __getstate__(self) -> dict:
        """torch's state (``defaults``, ``state``, ``param_groups``) plus this object's own
        attributes (the transformation, layouts, a subclass's settings), so ``copy.deepcopy``
        gives an optimizer that steps; torch's hooks are left out, as torch leaves them out."""
        own = {k: v for k, v in self.__dict__.items() if not _torch_managed(k)}
        return {**super().__getstate__(), **own}

    def __new__(cls, *args: Any, **kwargs: Any):
        """A subclass's instance records its constructor arguments (all but ``params``): a
        transformation is a pair of closures, which ``pickle`` cannot store, so a pickled
        optimizer of a subclass (``pickle``, ``torch.save(opt)``, ``copy.deepcopy``) is made again
        by its constructor and then given torch's state (see :meth:`__reduce_ex__`)."""
        self = super().__new__(cls)
        if cls is not TransformationOptimizer:
            if "params" in kwargs:
                kwargs = {k: v for k, v in kwargs.items() if k != "params"}
            else:
                args = args[1:]
            self.__dict__["_construction"] = (args, kwargs)
        return self

    def __reduce_ex__(self, protocol: Any):
        construction = self.__dict__.get("_construction")
        if construction is None:  # TransformationOptimizer itself: pickled with its transformation
            return super().__reduce_ex__(protocol)
        return _rebuilt, (type(self), construction, Optimizer.__getstate__(self))

    # ------------------------------------------------------------------ state <-> pytree
    def _group_layout(self, index: int, params: list) -> _Layout:
        layout = self._layouts.get(index)
        if layout is None or layout.n_params != len(params):
            layout = self._layouts[index] = _layout(self.transformation.init(params), len(params))
        return layout

    def _read(self, params: list, layout: _Layout) -> Any:
        leaves = [None if s is None else self.state[params[0 if s.param_index is None else s.param_index]][s.key]
                  for s in layout.slots]
        if torch.compiler.is_compiling() or not isinstance(layout.spec, optree.PyTreeSpec):
            # (a layout made while Dynamo traced holds its polyfill's spec, which unflattens wrongly)
            return _refill(layout.skeleton, iter(leaves))
        return optree.tree_unflatten(layout.spec, leaves)

    def _write(self, params: list, layout: _Layout, state: Any) -> None:
        for slot, leaf in zip(layout.slots, _leaves(state)):
            if slot is not None:
                self.state[params[0 if slot.param_index is None else slot.param_index]][slot.key] = leaf

    def _hparams(self, group: dict) -> Any:
        values = {}
        for name in self._hparam_names:
            v = group[name]
            values[name] = tuple(map(_validate.squeeze_scalar, v)) if isinstance(v, tuple) else _validate.squeeze_scalar(v)
        return replace_hparams(self.transformation.hparams, values)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._apply_step()
        return loss

    def _apply_step(self) -> None:
        """The step on the current gradients (after the closure), without torch's step hooks; a
        group whose gradients are all ``None`` is skipped."""
        self._update_then_write(skip_without_grads=True)

    def _update_then_write(self, skip_without_grads: bool) -> None:
        """Every group's update is computed (the transformation is pure) before any group is
        written, so an update that raises (a gradient the transformation refuses) changes nothing;
        the updates of all groups are alive together for that moment."""
        check_grad_shapes(self)
        computed = []
        for index, group in enumerate(self.param_groups):
            params = list(group["params"])
            grads = [p.grad for p in params]
            if skip_without_grads and all(g is None for g in grads):
                continue
            if not self.state.get(params[0]):
                state = self.transformation.init(params)
                layout = _layout(state, len(params))
            else:
                layout = self._group_layout(index, params)
                state = self._read(params, layout)
            updates, state = self.transformation.update(grads, state, params, self._step_hparams(group))
            computed.append((index, group, params, layout, flatten(updates)[0], state))
        for index, group, params, layout, updates, state in computed:
            self._layouts[index] = layout
            if self.stochastic_rounding_seed is not None:
                updates = self._add_stochastically(index, group, params, updates)
            for p, u in zip(params, updates):
                if u is not None:
                    p.add_(u.to(p.dtype))
            self._write(params, layout, state)

    def _add_stochastically(self, index: int, group: dict, params: list, updates: list) -> list:
        """Write ``p + u`` stochastically rounded into each bfloat16 parameter (this group's next key);
        returns the updates left to add as usual (``None`` where done)."""
        to_round = [u if u is not None and p.dtype == torch.bfloat16 else None for p, u in zip(params, updates)]
        if all(u is None for u in to_round):
            return updates
        step = group.get(STOCHASTIC_ROUNDING_STEP, 0)
        key = fold_in(fold_in(self.stochastic_rounding_seed, index), step)
        for p, new, u in zip(params, apply_updates(params, to_round, stochastic_rounding_key=key), to_round):
            if u is not None:
                p.copy_(new)
        group[STOCHASTIC_ROUNDING_STEP] = step + 1
        return [None if r is not None else u for u, r in zip(updates, to_round)]

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict saved by this class; a mismatched one raises ``ValueError`` and changes nothing."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("optimizer state dict must be a dict with 'state' and 'param_groups' keys")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(g["params"]) != len(s["params"]) for g, s in zip(self.param_groups, saved_groups)):
            super().load_state_dict(state_dict)  # torch's own checks raise its messages
            return
        saved_state = state_dict["state"]
        plans = []
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            params, ids = list(group["params"]), list(saved["params"])
            if not any(pid in saved_state for pid in ids):
                plans.append((index, params, None, None))
                continue
            template = self.transformation.init(params)
            layout = _layout(template, len(params))
            expected: dict = {}
            for slot, like in zip(layout.slots, _leaves(template)):
                if slot is not None:
                    pos = 0 if slot.param_index is None else slot.param_index
                    expected.setdefault(pos, {})[slot.key] = like
            for pos, pid in enumerate(ids):
                got = saved_state.get(pid, {})
                want = expected.get(pos, {})
                if set(got) != set(want):
                    raise ValueError(f"state of parameter {pid} has keys {sorted(got)}, expected {sorted(want)} "
                                     f"for this transformation")
                for key, like in want.items():
                    value = got[key]
                    if isinstance(like, Tensor) and (not isinstance(value, Tensor) or value.shape != like.shape):
                        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                        raise ValueError(f"state '{key}' of parameter {pid} is {shape}, expected shape "
                                         f"{tuple(like.shape)}")
            plans.append((index, params, layout, template))
        super().load_state_dict(state_dict)
        for (index, params, layout, template), saved in zip(plans, saved_groups):
            if layout is None:
                continue
            self._layouts[index] = layout
            for slot, like in zip(layout.slots, _leaves(template)):
                if slot is None:
                    continue
                pos = 0 if slot.param_index is None else slot.param_index
                value = saved_state[saved["params"][pos]][slot.key]
                if isinstance(like, Tensor):
                    value = value.to(dtype=like.dtype, device=like.device)
                self.state[params[pos]][slot.key] = value

"""Move a run between the two APIs: a compat optimizer's state <-> the functional state.

``transformation, state = to_functional(optimizer, params)`` gives the functional optimizer with
the optimizer's hyperparameters and a state shaped like ``params`` (any pytree whose leaves are
the optimizer's parameters, e.g. ``dict(model.named_parameters())``);
``load_functional(optimizer, params, state)`` writes a functional state back in torch's layout.
Continuing in either API after a conversion gives the same numbers as never converting.
"""

from __future__ import annotations

from typing import Any

import torch

from functional_optim._definition import make_transformation, new_step, pack_field, unpack_field
from functional_optim.base import GradientTransformation
from functional_optim.tree import flatten, leaf_paths


def _groups_of(optimizer, params: Any) -> tuple[list, Any, list, list]:
    leaves, spec = flatten(params)
    paths = leaf_paths(params)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    groups = []
    for path, p in zip(paths, leaves):
        if id(p) not in group_of:
            raise ValueError(f"params at {path} is not a parameter of this optimizer")
        groups.append(group_of[id(p)])
    return leaves, spec, paths, groups


def _common_config(optimizer, groups: list, paths: list) -> tuple[Any, Any]:
    """The hparams/static shared by every group that holds one of ``params``."""
    hparams, static = optimizer._hparams(groups[0]), optimizer._static(groups[0])
    for path, group in zip(paths, groups):
        for name, ours, theirs in (("hyperparameters", hparams, optimizer._hparams(group)),
                                   ("options", static, optimizer._static(group))):
            for field, a, b in zip(ours._fields, ours, theirs):
                if not _same(a, b):
                    raise ValueError(
                        f"param groups differ in {field!r} ({a} vs {b} at {path}): one functional "
                        f"optimizer has one set of {name}; convert each group separately"
                    )
    return hparams, static


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and bool(torch.equal(a, b))
    return a == b


def to_functional(optimizer, params: Any) -> tuple[GradientTransformation, Any]:
    """The functional optimizer and state equivalent to ``optimizer`` for the leaves of ``params``.

    Tensors are copied (the two states never alias). Parameters the optimizer has not stepped yet
    get a fresh state, exactly what the functional ``init`` would give. ``params`` only says which
    parameters (e.g. ``dict(model.named_parameters())``); continue the functional loop with
    detached ones (``{k: p.detach() for k, p in params.items()}``), else every eager update is
    recorded by autograd on top of the previous one (``functional_optim.AutogradChainWarning``).
    """
    definition = optimizer.definition
    leaves, spec, paths, groups = _groups_of(optimizer, params)
    hparams, static = _common_config(optimizer, groups, paths)
    fields = {name: [] for name in definition.state_type._fields}
    for p in leaves:
        torch_state = optimizer.state.get(p) or {}
        # the functional layout, filled with the optimizer's values (copied, cast, moved)
        layout = {"step": new_step(p), **definition.init_slots(p, hparams, static)}
        for name in definition.state_type._fields:
            value = layout[name]
            if value is not None and name in torch_state:
                value.copy_(torch_state[name])
            fields[name].append(value)
    state = definition.state_type(**{k: pack_field(spec, v) for k, v in fields.items()})
    return make_transformation(definition, hparams, static), state


def load_functional(optimizer, params: Any, state: Any) -> None:
    """Write the functional ``state`` (shaped like ``params``) into ``optimizer`` in torch's layout.

    Everything is checked before anything is written; on error the optimizer is unchanged.
    """
    definition = optimizer.definition
    if not isinstance(state, definition.state_type):
        raise TypeError(f"expected a {definition.state_type.__name__}, got {type(state).__name__}")
    leaves, _, paths, groups = _groups_of(optimizer, params)
    field_leaves = {}
    for name in definition.state_type._fields:
        field_leaves[name] = unpack_field(params, getattr(state, name), f"state.{name}")
    new_states = []
    for i, (path, p, group) in enumerate(zip(paths, leaves, groups)):
        entry = optimizer._init_param_state(p, group)  # torch's layout: keys, dtypes, devices
        for name, target in entry.items():
            value = field_leaves[name][i]
            if not torch.is_tensor(value) or value.shape != target.shape:
                raise ValueError(f"state.{name} at {path} must be a tensor of shape {tuple(target.shape)}")
            target.copy_(value.detach())
        new_states.append((p, entry))
    for p, entry in new_states:
        optimizer.state[p] = entry

"""A ``TransformationOptimizer`` whose param groups use a reference package's keys.

``pytorch_optimizer.AdaBelief(params, lr, betas, weight_decay, weight_decouple, ...)`` keeps
``betas`` (a tuple), ``eps``, flags ... in each param group. The compat classes built on
:class:`ReferenceOptimizer` keep exactly those group keys and defaults (so schedulers, param
group dicts and ``state_dict()["param_groups"]`` look like the reference's) and translate a
group into the transformation's hyperparameters (``b1``, ``b2``, ``eps_root`` ...) at each step.

Flags that change the transformation's structure (``weight_decouple``, ``ams_bound`` ...) are
fixed at construction: a param group that sets another value is refused with ``ValueError``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import torch
from torch.optim.optimizer import Optimizer, ParamsT

from functional_optim import _validate
from functional_optim.base import GradientTransformation
from functional_optim.inject import replace_hparams

from .transformation import TransformationOptimizer

__all__ = ["ReferenceOptimizer", "ReferenceLayout"]


class ReferenceLayout(NamedTuple):
    """How the reference stores the state, for ``state_dict`` / ``load_state_dict``.

    ``count``: our key of the shared step count, which the reference keeps as ``group["step"]``
    (an int); ``names``: our per-parameter key -> the reference's; ``to_ref`` / ``from_ref``:
    value conversions by our key (e.g. a sign); ``derived``: our per-parameter keys the
    reference does not store, ``key -> f(param, has_state)``; ``keep``: whether a parameter's
    state is written out (the reference has state only for parameters that had a gradient).
    """

    count: str
    names: Mapping[str, str]
    to_ref: Mapping[str, Callable] = {}
    from_ref: Mapping[str, Callable] = {}
    derived: Mapping[str, Callable] = {}
    keep: Optional[Callable[[dict], bool]] = None


class ReferenceOptimizer(TransformationOptimizer):
    """``TransformationOptimizer`` with reference group keys.

    Args:
        params: parameters or param groups.
        transformation: the functional optimizer (its static flags fixed).
        defaults: the reference's group defaults (``{"lr": 1e-3, "betas": (0.9, 0.999), ...}``).
        translate: ``group -> {hparam field name: value}`` for ``replace_hparams``.
        static_keys: group keys whose value must stay the constructor's (structure flags).
        layout: the reference's state layout: ``state_dict()`` is written in it (per-parameter
            keys such as ``exp_avg``, the step count as ``group["step"]``) and
            ``load_state_dict`` reads it (and this class's own internal layout), so checkpoints
            cross-load with the reference both ways.
    """

    def __init__(self, params: ParamsT, transformation: GradientTransformation, defaults: Mapping[str, Any],
                 translate: Callable[[dict], dict], static_keys: Sequence[str] = (),
                 layout: Optional[ReferenceLayout] = None) -> None:
        if not isinstance(transformation, GradientTransformation):
            raise TypeError(f"transformation must be a GradientTransformation, got {type(transformation).__name__}")
        self.transformation = transformation
        self._translate = translate
        self._static = {k: defaults[k] for k in static_keys}
        self._hparam_names = ()
        self._layouts = {}
        self._ref_layout = layout
        Optimizer.__init__(self, params, dict(defaults))

    def add_param_group(self, param_group: dict) -> None:
        if isinstance(param_group, dict):
            for key, value in self._static.items():
                if param_group.get(key, value) != value:
                    raise ValueError(f"{type(self).__name__}: a param group cannot change {key!r} "
                                     f"({param_group[key]!r}, the optimizer was built with {value!r})")
        super().add_param_group(param_group)

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
        self._step_groups()
        return loss

    def _step_groups(self) -> None:
        """The step on the current gradients (the closure already run): the update, then the
        counts of the groups without gradients, so that an update that raises (a gradient of a
        wrong shape in any group) leaves every group's count as it was."""
        # TransformationOptimizer's step without torch's step hooks (this class's own step runs
        # them), called directly: reaching it through the hook wrapper's ``__wrapped__`` broke
        # Dynamo's graph there, and the frame before the break, which reads a scheduler's float
        # ``lr`` without using it, made Dynamo's float-tensorify pass specialize ``lr`` for the
        # frame after it too (one graph per lr: compat.Lamb)
        self._apply_step()
        if self._ref_layout is not None:
            for index, group in enumerate(self.param_groups):
                if group["params"] and all(p.grad is None for p in group["params"]):
                    self._advance_count(index, list(group["params"]))

    def _advance_count(self, index: int, params: list) -> None:
        """A group without gradients: the reference still counts the step (``group["step"] += 1``)."""
        from .transformation import _layout

        if not self.state.get(params[0]):
            state = self.transformation.init(params)
            self._layouts[index] = layout = _layout(state, len(params))
            self._write(params, layout, state)
        key = self._ref_layout.count
        self.state[params[0]][key] = self.state[params[0]][key] + 1

    # ------------------------------------------------------------------ reference state layout
    def state_dict(self) -> dict:
        sd = super().state_dict()
        spec = self._ref_layout
        if spec is None:
            return sd
        state = {}
        groups = []
        for group in sd["param_groups"]:
            group = dict(group)
            ids = group["params"]
            first = sd["state"].get(ids[0], {}) if ids else {}
            if spec.count in first:
                group["step"] = int(first[spec.count])
            for pid in ids:
                ours = sd["state"].get(pid)
                if ours is None or (spec.keep is not None and not spec.keep(ours)):
                    continue
                state[pid] = {spec.names[k]: spec.to_ref.get(k, _same)(v) for k, v in ours.items() if k in spec.names}
            groups.append(group)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        spec = self._ref_layout
        if spec is None or not isinstance(state_dict, dict) or "param_groups" not in state_dict or \
                "state" not in state_dict or len(state_dict["param_groups"]) != len(self.param_groups):
            return super().load_state_dict(state_dict)
        saved_state = state_dict["state"]
        if any(spec.count in v for v in saved_state.values() if isinstance(v, dict)):
            return super().load_state_dict(state_dict)  # this class's internal layout
        back = {v: k for k, v in spec.names.items()}
        state, groups = {}, []
        for index, (group, saved) in enumerate(zip(self.param_groups, state_dict["param_groups"])):
            saved = dict(saved)
            step = saved.pop("step", None)
            ids = list(saved["params"])
            groups.append(saved)
            if step is None or len(ids) != len(group["params"]):
                for pid in ids:
                    if pid in saved_state:
                        state[pid] = dict(saved_state[pid])
                continue
            template = self._template_keys(group["params"])
            for pos, (pid, p) in enumerate(zip(ids, group["params"])):
                got = saved_state.get(pid)
                ours = {}
                for ref_key, value in (got or {}).items():
                    key = back.get(ref_key, ref_key)
                    ours[key] = spec.from_ref.get(key, _same)(value)
                for key in template[pos]:
                    if key in spec.derived:
                        ours[key] = spec.derived[key](p, got is not None)
                    elif key not in ours and key != spec.count:
                        ours[key] = torch.zeros_like(p)
                if pos == 0:
                    ours[spec.count] = torch.tensor(int(step), dtype=torch.int32)
                state[pid] = ours
        super().load_state_dict({"state": state, "param_groups": groups})

    def _template_keys(self, params: list) -> list[set]:
        """Our state keys per parameter position of a group (from the transformation's init)."""
        from .transformation import _layout

        layout = _layout(self.transformation.init(list(params)), len(params))
        keys: list[set] = [set() for _ in params]
        for slot in layout.slots:
            if slot is not None:
                keys[0 if slot.param_index is None else slot.param_index].add(slot.key)
        return keys

    def _hparams(self, group: dict) -> Any:
        values = {}
        for name, v in self._translate(group).items():
            values[name] = tuple(map(_validate.squeeze_scalar, v)) if isinstance(v, tuple) else _validate.squeeze_scalar(v)
        return replace_hparams(self.transformation.hparams, values)


def _same(x: Any) -> Any:
    return x


def check_lr(lr: Any) -> None:
    """``pytorch_optimizer``'s learning-rate check (its ``NegativeLRError`` message, as a ``ValueError``)."""
    if lr is not None and lr < 0.0:
        raise ValueError(f"learning rate must be positive. ({lr} > 0)")


def check_extra(name: str, kwargs: Mapping[str, Any], supported: Sequence[str] = ()) -> None:
    """``pytorch_optimizer`` classes take ``**kwargs`` as extra group keys, some of which switch on
    variants (``adanorm``, ``cautious``, ``adam_debias`` ...). Those not reproduced are refused."""
    for key, value in kwargs.items():
        if key not in supported and value:
            raise ValueError(f"{name}: {key}={value!r} is not supported by this compat class")

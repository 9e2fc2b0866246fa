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

from ._kernels import runs
from ._kernels.eager import FOREACH_PURE, eager_ops_for
from ._kernels.grouped import step_lists
from ._kernels.ops import Ops
from .base import GradientTransformation
from ._autograd import warn_if_chaining_graphs
from ._validate import check_hparams_record, scalar_hparams
from .tree import EMPTY, Empty, check_leaves_match, flatten, flatten_like, flatten_plain, is_empty, lazy_paths, unflatten

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
    #: ``check_grad`` refuses nothing but sparse gradients (compat then checks a group whose
    #: gradients are all dense in one fast pass, without calling it per parameter)
    check_grad_refuses_only_sparse: bool = False
    #: (param shape, static) -> {slot: shape, or None where the slot is absent}; by default every
    #: slot has the param's shape (``scalar_slots`` are 0-d). Must agree with ``init_slots``
    #: (tested); it lets ``update`` check a state without creating anything.
    slot_shapes: Optional[Callable[[torch.Size, Any], dict]] = None
    #: per-parameter 0-d slots kept in their own float dtype, like ``step`` (NAdam's ``mu_product``)
    scalar_slots: tuple[str, ...] = ()
    #: the step is elementwise given the per-parameter scalars (no reduction over, or use of, a
    #: parameter's shape), so parameters sharing those scalars may be stepped as one flat buffer
    #: (:mod:`functional_optim._kernels.grouped`)
    elementwise: bool = False

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(f for f in self.state_type._fields if f != "step")

    def expected_slot_shapes(self, shape: torch.Size, static: Any) -> dict:
        """Each slot's shape for a parameter of ``shape`` (``None``: no tensor in that slot)."""
        if self.slot_shapes is not None:
            return dict(self.slot_shapes(shape, static))
        return {s: (() if s in self.scalar_slots else tuple(shape)) for s in self.slots}


def new_step(param: Tensor, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """A per-parameter step counter: a 0-d tensor holding 0."""
    return torch.zeros((), dtype=dtype, device=param.device if device is None else device)


def _one_accelerator(params: list) -> Optional[torch.device]:
    """The accelerator every one of (at least two) ``params`` is on, where state made for them is
    remembered with its values on the host (eagerly, outside CUDA graph capture); else ``None``."""
    device = params[0].device if len(params) > 1 else None
    if (device is None or device.type == "cpu" or torch.compiler.is_compiling() or runs.capturing(device)
            or any(p.device != device for p in params)):
        return None
    return device


def new_steps(params: list) -> list:
    """A step counter per parameter (:func:`new_step`). Many on one accelerator are the 0-d views
    of one buffer, remembered as a run with their values on the host (:mod:`._kernels.runs`), so
    the eager update does its per-parameter scalar math on the host without reading the device."""
    device = _one_accelerator(params)
    if device is None:
        return [new_step(p) for p in params]
    counters = torch.zeros(len(params), dtype=torch.float32, device=device)
    return runs.record(list(counters.unbind()), counters, runs.Layout.scalars(len(params)),
                       host=torch.zeros(len(params), dtype=torch.float32))


def host_scalar_slots(definition: OptimizerDefinition, params: list, per_leaf: list, hparams: Any, static: Any) -> None:
    """On one accelerator, replace each scalar slot's initial values in ``per_leaf`` (NAdam's
    ``mu_product``, ASGD's ``eta`` and ``mu``) by the 0-d views of one buffer made on the host and
    copied to the device, remembered with their host values (:mod:`._kernels.runs`), as torch
    makes such state on the CPU: the eager update then does its scalar math with them on the host.
    The host values come from ``init_slots`` on an empty CPU stand-in of each parameter (the
    scalar slots depend on the hyperparameters only); nothing is read from the device. Anything
    else (the CPU, mixed devices, tensor hyperparameters on a device, under compile or capture)
    keeps ``init_slots``' own values."""
    device = _one_accelerator(params) if definition.scalar_slots else None
    if device is None or any(isinstance(h, Tensor) and not h.is_cpu for h in flatten(hparams)[0]):
        return
    stand_ins = [definition.init_slots(torch.empty(0, dtype=p.dtype), hparams, static) for p in params]
    for slot in definition.scalar_slots:
        host = [s[slot] for s in stand_ins]
        if not all(type(h) is Tensor and h.dim() == 0 and h.is_cpu and h.dtype == leaf[slot].dtype
                   for h, leaf in zip(host, per_leaf)):
            continue
        host = torch.stack(host)
        buffer = host.to(device, non_blocking=True)  # (staged from pageable memory at once)
        for leaf, view in zip(per_leaf, runs.record(list(buffer.unbind()), buffer, runs.Layout.scalars(len(params)),
                                                    host=host)):
            leaf[slot] = view


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
        new_params, new_state = definition.kernel(ops, ops.base(list(params)), list(grads), dict(state), hparams, static)
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


def unpack_field(params: Any, field: Any, name: str, params_spec=None) -> list:
    """Per-leaf values of a state field (``None`` where absent), its structure checked against
    params (``params_spec``: their spec from :func:`flatten_plain`, if already computed)."""
    if params_spec is None:
        params_spec = flatten_plain(params)[1]
    if is_empty(field):
        return [None] * params_spec.num_leaves
    return [None if isinstance(x, Empty) else x for x in flatten_like(params_spec, params, field, "params", name)]


def check_params(name: str, params: list, paths: Callable[[], list], supports_complex: bool = True) -> None:
    """Parameters must be floating-point (or complex) tensors: integer ones would be truncated."""
    run = runs.known(params)
    if run is not None and run.dtype.is_floating_point:
        return  # (the eager update's own views, of its own floating-point buffer)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}: params at {paths()[i]} must be a Tensor, got {type(p).__name__}")
        if not (p.is_floating_point() or p.is_complex()):
            raise ValueError(
                f"{name}: params at {paths()[i]} has dtype {p.dtype}; optimizers need floating-point "
                f"(or complex) parameters"
            )
        if p.is_complex() and not supports_complex:
            raise RuntimeError(f"{name} does not support complex parameters")


def _scalar_slot_problem(value: Any, param: Tensor) -> Optional[str]:
    """What is wrong with a per-parameter 0-d counter (``step``, ``mu_product``), or ``None``."""
    if not isinstance(value, Tensor):
        return f"must be a 0-d tensor, got {'no tensor' if value is None else type(value).__name__}"
    if value.dim() != 0:
        return f"has shape {tuple(value.shape)}, expected a 0-d tensor"
    if not value.is_floating_point():
        return f"has dtype {value.dtype}, expected a floating-point dtype"
    if value.device != param.device and value.device.type != "cpu":
        return f"is on {value.device}, expected {param.device} (or the CPU)"
    return None


def _slot_problem(value: Any, param: Tensor, shape: Optional[tuple]) -> Optional[str]:
    """What is wrong with a state slot that should hold a tensor of ``shape`` with the param's
    dtype and device (or nothing, when ``shape`` is ``None``), or ``None``."""
    if shape is None:
        return None if value is None else "holds a value where this optimizer keeps none"
    if not isinstance(value, Tensor):
        return f"must be a tensor of shape {tuple(shape)}, got {'no tensor' if value is None else type(value).__name__}"
    if value.shape != shape:
        return f"has shape {tuple(value.shape)}, expected {tuple(shape)}"
    if value.dtype != param.dtype:
        return f"has dtype {value.dtype}, expected {param.dtype}"
    if value.device != param.device:
        return f"is on {value.device}, expected {param.device}"
    return None


def check_state(definition: OptimizerDefinition, static: Any, params: list, fields: dict,
                paths: Callable[[], list]) -> None:
    """Every state leaf against its parameter: presence, shape, dtype and device.

    Raises ``ValueError`` naming the field and path before anything is computed (a state made
    for other shapes would otherwise broadcast into the parameters). Only Python comparisons of
    shapes, dtypes and devices: no tensor is read or created, so it costs little and is resolved
    at trace time under ``torch.compile``.
    """
    scalars = {"step", *definition.scalar_slots}
    params_run = runs.known(params)
    if params_run is not None:  # the fields that are known runs as expected need no reading
        fields = {name: leaves for name, leaves in fields.items()
                  if not _known_as_expected(definition, static, params_run, name in scalars, name, leaves)}
        if not fields:
            return
    layouts: dict = {}  # param shape -> slot shapes (computed once per distinct shape)
    for i, p in enumerate(params):
        shape, dtype, device = p.shape, p.dtype, p.device
        layout = layouts.get(shape)
        if layout is None:
            layout = layouts[shape] = definition.expected_slot_shapes(shape, static)
        for name, leaves in fields.items():
            value = leaves[i]
            if name in scalars:
                if (type(value) is Tensor and value.dim() == 0 and value.is_floating_point()
                        and (value.is_cpu or value.device == device)):
                    continue  # the common case, checked without building a message
                problem = _scalar_slot_problem(value, p)
            else:
                expected = layout[name]
                if (expected is not None and type(value) is Tensor and value.shape == expected
                        and value.dtype == dtype and value.device == device) or (expected is None and value is None):
                    continue
                problem = _slot_problem(value, p, expected)
            if problem is not None:
                raise ValueError(f"{definition.name}: state.{name} at {paths()[i]} {problem}")


def _known_as_expected(definition: OptimizerDefinition, static: Any, params_run: runs.Run, scalar: bool,
                       name: str, leaves: list) -> bool:
    """Whether state field ``name`` is a known run (:mod:`._kernels.runs`) that :func:`check_state`
    would pass: 0-d floating-point counters on the CPU or the params' device (``scalar``), or
    tensors of the params' dtype and device in the shapes the definition expects of this slot."""
    if scalar:
        run = runs.known_scalars(leaves)
        return (run is not None and run.dtype.is_floating_point
                and (run.device.type == "cpu" or run.device == params_run.device))
    run = runs.known(leaves)
    if run is None:
        return False
    if run.dtype != params_run.dtype or run.device != params_run.device:
        return False
    expected = {shape: definition.expected_slot_shapes(shape, static)[name] for shape in set(params_run.shapes)}
    if all(slot == shape for shape, slot in expected.items()):
        return run.shapes == params_run.shapes
    return run.shapes == tuple(expected[shape] for shape in params_run.shapes)


def make_transformation(definition: OptimizerDefinition, hparams: Any, static: Any) -> GradientTransformation:
    """Build the pure ``init``/``update`` pair for ``definition`` with default ``hparams``."""
    hparams = scalar_hparams(hparams, definition.name)

    def init(params):
        leaves, spec = flatten(params)
        check_params(definition.name, leaves, lazy_paths(params), definition.supports_complex)
        fields = {"step": unflatten(spec, new_steps(leaves))}
        per_leaf = [definition.init_slots(p, hparams, static) for p in leaves]
        host_scalar_slots(definition, leaves, per_leaf, hparams, static)
        for slot in definition.slots:
            fields[slot] = pack_field(spec, [s[slot] for s in per_leaf])
        return definition.state_type(**fields)

    def update(grads, state, params=None, hparams_now=None):
        hp = check_hparams_record(definition.name, hparams, hparams_now)
        if params is None:
            raise ValueError(f"{definition.name}.update needs params (its step depends on them)")
        if not isinstance(state, definition.state_type):
            raise TypeError(
                f"{definition.name}.update expects a {definition.state_type.__name__} state, got {type(state).__name__}"
            )
        p_leaves, spec = flatten_plain(params)
        g_leaves = flatten_like(spec, params, grads, "params", "grads")
        fields = {}
        for name in state._fields:
            fields[name] = unpack_field(params, getattr(state, name), f"state.{name}", spec)
        paths = lazy_paths(params)
        check_params(definition.name, p_leaves, paths, definition.supports_complex)
        check_leaves_match(p_leaves, g_leaves, paths, "grads")
        check_state(definition, static, p_leaves, fields, paths)
        if definition.check_grad is not None:
            for g in g_leaves:
                if g is not None:
                    definition.check_grad(g, hp, static)
        warn_if_chaining_graphs(definition.name, p_leaves, g_leaves, hp)

        active = [i for i, g in enumerate(g_leaves) if g is not None]
        sub_state = {name: [leaves[i] for i in active] for name, leaves in fields.items()}
        active_params = [p_leaves[i] for i in active]
        ops = eager_ops_for(active_params, g_leaves, flatten(hp)[0], *sub_state.values())
        new_updates, new_state = step_lists(definition, ops, run_kernel, active_params,
                                            [g_leaves[i] for i in active], sub_state, hp, static,
                                            flat=ops is FOREACH_PURE)

        update_leaves: list = [None] * len(p_leaves)
        for i, u in zip(active, new_updates if active else []):
            update_leaves[i] = u
        for name, leaves in fields.items():
            leaves = list(leaves)
            for j, i in enumerate(active):
                leaves[i] = new_state[name][j]
            fields[name] = pack_field(spec, leaves)
        return unflatten(spec, update_leaves), definition.state_type(**fields)

    return GradientTransformation(init, update, hparams)

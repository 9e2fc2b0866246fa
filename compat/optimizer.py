"""The one adapter between ``torch.optim.Optimizer`` and the functional optimizers.

A compat class (``compat.Adam`` ...) is a thin subclass of :class:`FunctionalOptimizer` that gives
torch's constructor (signature, defaults, validation) and names its
:class:`~functional_optim._definition.OptimizerDefinition`. Everything else lives here:

* ``param_groups`` <-> kernel arguments: a group's keys are named like the definition's hparams
  and static fields, so ``hparams = definition.hparams_type(**group)`` needs no per-class code;
* lazy per-parameter state in torch's layout (``state[p]`` keys, dtypes, devices, ``step`` on the
  CPU unless ``capturable``/``fused``), so ``state_dict()`` is torch's byte for byte;
* dispatch to the for-loop (:class:`LoopOps`), foreach (:class:`ForeachOps`) or fused kernels with
  torch's default rules, ``capturable``, ``differentiable`` and the GradScaler contract;
* ``load_state_dict`` that validates the incoming state before anything is changed.

Hooks, ``zero_grad``, ``add_param_group``, named parameters and ``state_dict`` come from
``torch.optim.Optimizer`` itself.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    _default_to_fused_or_foreach,
    _device_dtype_check_for_fused,
    _get_capturable_supported_devices,
    _get_scalar_dtype,
    _use_grad_for_differentiable,
)

from functional_optim._definition import OptimizerDefinition, run_kernel
from functional_optim._kernels.ops import ForeachOps, LoopOps, nonzero
from functional_optim.tree import map_plain_containers
from functional_optim._validate import float64_scalar, squeeze_scalar

from . import convert

FusedStep = Callable[..., None]

#: (major, minor) of the installed torch, for the few places where compat follows a version's behaviour
TORCH_VERSION = tuple(int(x) for x in torch.__version__.split(".")[:2])

#: param (and step) dtypes for which CPU foreach rounds as torch's for-loop (``_foreach_is_torch_loop``)
_LOOP_EQUAL_FOREACH_DTYPES = (torch.float32, torch.float64)


def traceable_float(value: float) -> Tensor:
    """A Python-float hyperparameter (a scheduler's ``lr``) as a 0-d float64 tensor, for a step
    being compiled.

    Dynamo traces a float that changed between calls (a scheduler's ``lr``) as a symbolic float,
    and Inductor specializes one that reaches a kernel as a scalar argument (``alpha=``,
    ``value=``, ``clamp``'s bound, a foreach scalar): ``torch.compile(opt.step)`` then recompiled
    at every new ``lr`` (measured: SGD, RMSprop, Adadelta, Adafactor and foreach Adam, one graph
    per step; torch's own compiled SGD, RMSprop and Adadelta do the same). ``ones * lr`` is exact and
    stays symbolic, and the kernels take a tensor ``lr`` as torch's capturable code does, so the
    compiled step has one graph for every ``lr``. Eager steps are unchanged
    (:func:`functional_optim._validate.float64_scalar`)."""
    return float64_scalar(value)


#: Why a fused group's step runs outside a compiled graph: torch.compile does not trace into torch's
#: fused optimizer functions either (``torch._dynamo`` wraps ``torch.optim.adam._fused_adam`` and its
#: siblings in ``torch.compiler.disable``), so ``torch.compile(opt.step)`` with ``fused=True`` runs
#: the fused kernels eagerly, as torch's does. Traced, the in-place fused op would mutate the
#: parameters (static attributes of the graph) from functionalized state tensors, which
#: functionalization refuses.
FUSED_UNDER_COMPILE = "the fused kernels run eagerly, as torch.optim's fused steps do under torch.compile"


#: The hyperparameters torch's LR schedulers change between steps: ``lr`` (every scheduler) and
#: the first of ``betas`` or ``momentum`` (``OneCycleLR``, and ``CyclicLR`` with ``cycle_momentum``).
#: Under torch.compile a compat step takes their float values as tensors, so that a scheduler's new
#: value does not recompile the step.
SCHEDULED_HPARAMS = ("lr", "betas", "momentum")


def floats_as_tensors(hparams: Any) -> Any:
    """Every Python float in ``hparams`` (a value, a tuple such as ``betas``, or a whole record) as
    :func:`traceable_float`, for a compiled step; tensors, ints and ``None`` as they are. Whether a
    group has momentum at all is read from the group itself (its static choices), not from here.
    Walked in Python (:func:`functional_optim.tree.map_plain_containers`)."""
    return map_plain_containers(lambda x: traceable_float(x) if isinstance(x, float) else x, hparams)


class FunctionalOptimizer(Optimizer):
    """``torch.optim.Optimizer`` whose ``step`` runs a functional optimizer's kernel in place."""

    definition: ClassVar[OptimizerDefinition]
    #: torch's fused kernel over one device/dtype group (steps already incremented), or None
    fused_step: ClassVar[Optional[FusedStep]] = None
    #: On CPU torch's default is the for-loop. Where the foreach path gives bitwise the same numbers
    #: there and is faster (Adam, AdamW, Adagrad, Adadelta; see :meth:`_cpu_default_foreach` for
    #: the params and states where that holds, ``tests/test_cpu_default.py`` for the proof), the
    #: default (``foreach=None, fused=None``) runs it; ``param_groups`` still say ``foreach=None``.
    cpu_default_foreach: ClassVar[bool] = False
    #: where a non-capturable ``step`` is created: ``None`` follows the default device (``torch.tensor``
    #: without a device, as most torch classes do); torch.optim.Adam/AdamW name ``"cpu"``
    cpu_step_device: ClassVar[Optional[str]] = None
    #: whether ``step`` may be captured (``capturable``) and where
    capturable_devices: ClassVar[Callable[[], list]] = staticmethod(lambda: _get_capturable_supported_devices())
    #: torch's for-loop adds the L2 term to a complex parameter's gradient as a complex number,
    #: before it views the tensors as real (Adam, Adagrad, Adadelta, RMSprop, Adamax): ``g + wd p``
    #: rounded twice, where ``add(alpha=)`` on the real views rounds once (a fused multiply-add);
    #: see :meth:`_complex_l2_decayed`
    complex_l2_before_real_view: ClassVar[bool] = False

    # ------------------------------------------------------------------ group <-> kernel args
    def _hparams(self, group: dict) -> Any:
        fields = self.definition.hparams_type._fields
        values = {}
        for f in fields:
            v = group[f]
            values[f] = tuple(squeeze_scalar(x) for x in v) if isinstance(v, tuple) else squeeze_scalar(v)
        return self.definition.hparams_type(**values)

    def _step_hparams(self, group: dict) -> Any:
        """:meth:`_hparams` for a step: under torch.compile the Python-float hyperparameters that
        torch's schedulers change as tensors (see :func:`traceable_float` and
        :data:`SCHEDULED_HPARAMS`). Only those: the kernels branch on the other hyperparameters
        being numbers (``weight_decay == 0`` skips the decay). A fused group keeps its floats, as
        torch's does: its kernels take ``betas`` and ``momentum`` as numbers only, and their
        tensor-``lr`` overloads have no fake implementation to trace with on the CPU."""
        hparams = self._hparams(group)
        if not torch.compiler.is_compiling() or group.get("fused"):
            return hparams
        # (built with the record's constructor: a ``_replace`` record that escapes a graph break
        # fails Dynamo's reconstruction in torch 2.11)
        return type(hparams)(*(floats_as_tensors(value) if name in SCHEDULED_HPARAMS else value
                               for name, value in zip(hparams._fields, hparams)))

    def _static(self, group: dict) -> Any:
        return self.definition.static_type(**{f: group[f] for f in self.definition.static_type._fields})

    # ------------------------------------------------------------------ state
    def _step_tensor(self, p: Tensor, group: dict) -> Tensor:
        """torch's placement: on the param's device when capturable or fused, else a CPU scalar
        (on the default device, unless ``cpu_step_device`` names one as torch's class does)."""
        if group.get("capturable") or group.get("fused"):
            return torch.zeros((), dtype=_get_scalar_dtype(is_fused=group.get("fused")), device=p.device)
        return torch.tensor(0.0, dtype=_get_scalar_dtype(), device=self.cpu_step_device)

    def _init_param_state(self, p: Tensor, group: dict) -> dict:
        if group.get("fused"):
            _device_dtype_check_for_fused(p)
        slots = self.definition.init_slots(p, self._hparams(group), self._static(group))
        state = {"step": self._step_tensor(p, group)}
        state.update((k, v) for k, v in slots.items() if v is not None)
        return state

    def _grad_checker(self, group: dict) -> Optional[Callable[[Tensor], None]]:
        """The check each gradient of ``group`` gets before anything is stepped, or ``None`` when
        the optimizer makes none; the group's static choices are read once per step, not once per
        parameter (1000 parameters: ~2 ms a step)."""
        check = self.definition.check_grad
        if check is None:
            return None
        static = self._static(group)
        checker = lambda p: check(p.grad, None, static)  # noqa: E731
        return SparseGradCheck(checker) if self.definition.check_grad_refuses_only_sparse else checker

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        """Per-step checks torch makes (override to add optimizer-specific ones)."""
        if group.get("differentiable") and any(s.requires_grad for s in state_steps):
            raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")
        self._check_capturable(group, params, state_steps)

    def _check_capturable(self, group: dict, params: list, state_steps: list) -> None:
        """torch's ``capturable`` device check (skipped while compiling, as torch does)."""
        if group.get("capturable") and not torch.compiler.is_compiling():
            supported = self.capturable_devices()
            if not all(p.device.type == s.device.type and p.device.type in supported
                       for p, s in zip(params, state_steps)):
                raise AssertionError(
                    f"If capturable=True, params and state_steps must be on supported devices: {supported}."
                )

    # ------------------------------------------------------------------ dispatch
    def _use_foreach(self, group: dict, params: list) -> bool:
        """torch's default rule: foreach when every param is on a foreach-capable device (CUDA)."""
        foreach = group.get("foreach")
        if group.get("fused") is None and foreach is None:
            _, foreach = _default_to_fused_or_foreach(params, group.get("differentiable", False), use_fused=False)
            if foreach and isinstance(group.get("lr"), Tensor) and not group.get("capturable"):
                foreach = False
        return bool(foreach) or self._cpu_default_foreach(group, params)

    def _cpu_default_foreach(self, group: dict, params: list) -> bool:
        """Whether the default implementation runs foreach on CPU (see ``cpu_default_foreach``):
        only with the default flags and where :meth:`_foreach_is_torch_loop` holds."""
        return (
            self.cpu_default_foreach
            and group.get("foreach") is None
            and not group.get("fused")
            and not group.get("differentiable")
            and not group.get("capturable")
            and not isinstance(group.get("lr"), Tensor)
            and not torch.compiler.is_compiling()
            and self._foreach_is_torch_loop(params)
        )

    def _foreach_is_torch_loop(self, params: list) -> bool:
        """Whether foreach on these CPU params computes bitwise what torch's for-loop computes.

        * float32/float64 params only: there each CPU ``torch._foreach_*`` op rounds as the
          per-tensor op, but for float16/bfloat16 ``_foreach_mul_(xs, scalar)`` does not round as
          ``x.mul_(scalar)`` (and complex params are decayed as complex numbers by torch's loop);
        * float32/float64 ``step`` tensors: a checkpoint may hold an int64 ``step``, which torch
          keeps on load and its for-loop counts in place, where foreach's count would fail;
        * no parameter twice: torch's loop finishes one occurrence's step (``step += 1`` included)
          before the next, foreach counts both first.
        """
        seen: set[int] = set()
        for p in params:
            if p.device.type != "cpu" or p.dtype not in _LOOP_EQUAL_FOREACH_DTYPES or id(p) in seen:
                return False
            if not _foreach_counts_like_loop(self.state.get(p, {}).get("step")):
                return False
            seen.add(id(p))
        return True

    def _check_grads(self) -> None:
        """Every gradient of every group checked before any group is stepped or any state is
        made: its shape (:func:`check_grad_shapes`) and the optimizer's own rules
        (:meth:`_grad_checker`, e.g. no sparse gradients), so a step that raises changes nothing.
        (torch checks each group as it comes to it, after the groups before it were stepped.)"""
        for g, group in enumerate(self.param_groups):
            check_group_grads(self, g, group, self._grad_checker(group))

    def _gather(self, group: dict) -> tuple[list, list, dict]:
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state.update(self._init_param_state(p, group))
            states.append(state)
        return params, grads, {k: [s.get(k) for s in states] for k in self.definition.state_type._fields}

    @_use_grad_for_differentiable
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_grads()
        for group in self.param_groups:
            params, grads, state = self._gather(group)
            if not params:
                continue
            self._check_group(group, params, state["step"])
            self._step_group(group, params, grads, state)
        return loss

    def _host_scalars(self, group: dict) -> bool:
        """Whether torch reads the per-parameter steps with ``.item()`` (unless capturable or differentiable)."""
        return not (group.get("capturable") or group.get("differentiable"))

    def _step_group(self, group: dict, params: list, grads: list, state: dict) -> None:
        hparams, static = self._step_hparams(group), self._static(group)
        # under torch.compile scalars stay tensors (no .item() graph breaks), as torch.optim does
        host_scalars = self._host_scalars(group) and not torch.compiler.is_compiling()
        if group.get("fused"):
            if group.get("differentiable"):
                raise RuntimeError(f"{type(self).__name__} with fused=True does not support differentiable=True")
            self._fused_group(params, grads, state, hparams, static)
        elif self._use_foreach(group, params):
            if group.get("differentiable"):
                raise AssertionError("_foreach ops don't support autograd")
            ops = ForeachOps(host_scalars=host_scalars)
            for g_params, g_grads, g_state in _by_device_and_dtype(params, grads, state):
                run_kernel(self.definition, ops, g_params, g_grads, g_state, hparams, static)
        else:
            self._loop_group(params, grads, state, hparams, static, host_scalars)

    def _loop_group(self, params: list, grads: list, state: dict, hparams: Any, static: Any,
                    host_scalars: bool) -> None:
        """torch's for-loop implementation: the kernel with :class:`LoopOps`, one chunk at a time
        (one parameter at a time where complex gradients are decayed first: :meth:`_complex_l2_decayed`)."""
        ops = LoopOps(host_scalars=host_scalars)
        decays_complex = self._decays_complex_grads(params, hparams, static)
        chunks = ([[i] for i in range(len(params))] if decays_complex  # in order: a listed-twice param sees its update
                  else self._loop_chunks(params, state, hparams, static, host_scalars))
        for chunk in chunks:
            c_params, c_grads = [params[i] for i in chunk], [grads[i] for i in chunk]
            c_hparams, c_static = hparams, static
            if decays_complex and c_params[0].is_complex():
                c_grads, c_hparams, c_static = self._complex_l2_decayed(c_params[0], c_grads[0], hparams, static)
            self._loop_kernel(ops, c_params, c_grads, {k: [v[i] for i in chunk] for k, v in state.items()},
                              c_hparams, c_static)

    def _loop_kernel(self, ops: LoopOps, params: list, grads: list, state: dict, hparams: Any, static: Any) -> None:
        """One chunk of the for-loop: the kernel, complex tensors viewed as real around it."""
        run_kernel(self.definition, ops, params, grads, state, hparams, static)

    def _decays_complex_grads(self, params: list, hparams: Any, static: Any) -> bool:
        """Whether this step decays complex gradients as torch's for-loop does, before the kernel
        (:attr:`complex_l2_before_real_view`, an L2 ``weight_decay``, a complex parameter)."""
        weight_decay = getattr(hparams, "weight_decay", 0)
        return (self.complex_l2_before_real_view and nonzero(weight_decay)
                and not getattr(static, "decoupled_weight_decay", False)
                and not (isinstance(weight_decay, Tensor) and weight_decay.requires_grad)
                and any(p.is_complex() for p in params))

    @staticmethod
    def _complex_l2_decayed(param: Tensor, grad: Tensor, hparams: Any, static: Any) -> tuple:
        """``([g + wd p], hparams, static)`` for one complex parameter, computed as torch's for-loop
        computes it (``grad.add(param, alpha=wd)`` on the complex tensors, after ``maximize``'s
        negation); the kernel then runs with neither weight decay nor ``maximize``."""
        decayed = (-grad if static.maximize else grad).add(param, alpha=hparams.weight_decay)
        return [decayed], hparams._replace(weight_decay=0.0), static._replace(maximize=False)

    def _loop_chunks(self, params: list, state: dict, hparams: Any, static: Any, host_scalars: bool) -> list:
        """Index chunks the for-loop kernel runs over, one after another (:func:`_cache_sized_chunks`;
        a subclass whose for-loop step allocates no temporaries may run the group as one chunk)."""
        return _cache_sized_chunks(params)

    @torch.compiler.disable(reason=FUSED_UNDER_COMPILE)
    def _fused_group(self, params, grads, state, hparams, static) -> None:
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        scale_by_device: dict = {}
        inf_by_device: dict = {}
        for g_params, g_grads, g_state in _by_device_and_dtype(params, grads, state):
            device = g_params[0].device
            if grad_scale is not None and device not in scale_by_device:
                scale_by_device[device] = grad_scale.to(device, non_blocking=True)
            if found_inf is not None and device not in inf_by_device:
                inf_by_device[device] = found_inf.to(device, non_blocking=True)
            hp = hparams
            if isinstance(hparams.lr, Tensor) and hparams.lr.device != device and hparams.lr.device.type != "cpu":
                hp = hparams._replace(lr=hparams.lr.to(device, non_blocking=True))
            steps, g_found_inf = g_state["step"], inf_by_device.get(device)
            torch._foreach_add_(steps, 1)
            type(self).fused_step(
                g_params, g_grads, g_state, hp, static,
                grad_scale=scale_by_device.get(device), found_inf=g_found_inf,
            )
            if g_found_inf is not None:  # a skipped step (inf/nan grads under GradScaler) is not counted
                torch._foreach_sub_(steps, [g_found_inf] * len(steps))

    # ------------------------------------------------------------------ the functional API
    def to_functional(self, params: Any):
        """``(transformation, state)``: this optimizer as a functional one over the pytree ``params``.

        See :mod:`compat.convert`; continuing with the functional update gives the same numbers.
        """
        return convert.to_functional(self, params)

    def load_functional(self, params: Any, state: Any) -> None:
        """Continue from a functional ``state`` shaped like ``params`` (see :mod:`compat.convert`)."""
        convert.load_functional(self, params, state)

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict) -> None:
        """Load a torch-format state dict; a malformed one raises and leaves this optimizer as it was."""
        self._validate_state_dict(state_dict)
        super().load_state_dict(state_dict)

    def _validate_state_dict(self, state_dict: dict) -> None:
        group_hparams: dict = {}  # id(group) -> (hparams, static), or (None, None) for unknown keys
        for group, saved, p, pid, entry in saved_state_entries(self, state_dict):
            if id(group) not in group_hparams:
                merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
                try:
                    group_hparams[id(group)] = (self._hparams(merged), self._static(merged))
                except KeyError:
                    group_hparams[id(group)] = (None, None)
            hparams, static = group_hparams[id(group)]
            if "step" not in entry:
                raise ValueError(f"state of parameter {pid} has no 'step'")
            _check_step_value(entry["step"], pid)
            if static is None:
                continue
            expected = self.definition.init_slots(torch.empty_like(p, device="meta"), hparams, static)
            for key, like in expected.items():
                if like is None:
                    continue
                value = entry.get(key)
                if not isinstance(value, Tensor):
                    raise ValueError(f"state of parameter {pid} is missing tensor '{key}'")
                if value.shape != like.shape:
                    raise ValueError(
                        f"state '{key}' of parameter {pid} has shape {tuple(value.shape)}, "
                        f"expected {tuple(like.shape)}"
                    )


def saved_state_entries(optimizer: Optimizer, state_dict: Any):
    """``(group, saved group, param, saved id, entry)`` for each saved per-parameter state of a
    torch-format state dict, after the checks every class makes first: a dict with ``state`` and
    ``param_groups``, each entry a dict. Stops where the group or parameter counts differ (torch's
    own ``load_state_dict`` then raises its message)."""
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("optimizer state dict must be a dict with 'state' and 'param_groups' keys")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        return
    for group, saved in zip(optimizer.param_groups, saved_groups):
        if len(group["params"]) != len(saved["params"]):
            return
        for p, pid in zip(group["params"], saved["params"]):
            entry = state_dict["state"].get(pid)
            if entry is None:
                continue
            if not isinstance(entry, dict):
                raise ValueError(f"state of parameter {pid} must be a dict, got {type(entry).__name__}")
            yield group, saved, p, pid, entry

def check_grad_shapes(optimizer: Optimizer) -> None:
    """Refuse a gradient whose shape differs from its parameter's, before anything is changed.

    ``p.grad.data = ...`` can give a parameter such a gradient. torch's in-place math then
    broadcasts it where it can (a ``(4,)`` grad into a ``(3, 4)`` parameter) and fails midway
    where it cannot (after earlier parameters were stepped); a compat optimizer raises first,
    naming the parameter. Shapes only are compared (no tensor is read).
    """
    for g, group in enumerate(optimizer.param_groups):
        check_group_grads(optimizer, g, group)


def check_group_grads(optimizer: Optimizer, group_index: int, group: dict,
                      check: Optional[Callable[[Tensor], None]] = None) -> None:
    """Each gradient of ``group`` has its parameter's shape (:func:`grad_shape_error` otherwise),
    and passes ``check`` (an optimizer's own rules, e.g. no sparse gradients), in one pass.

    Eagerly one ``Tensor.is_same_size`` per parameter (0.31 against 0.48 ms with ``.shape``
    comparisons on 1000 parameters, where torch's fused SGD step takes about 5 ms); under
    torch.compile, which cannot trace ``is_same_size``, the shapes are compared (at trace time,
    free at run time)."""
    params = group["params"]
    compiling = torch.compiler.is_compiling()
    if not compiling and (check is None or isinstance(check, SparseGradCheck)):
        dense_only = check is not None  # (a SparseGradCheck passes every dense gradient)
        if all(grad is None or (grad.is_same_size(p) and not (dense_only and grad.is_sparse))
               for grad, p in zip(map(_grad_of, params), params)):
            return
    for i, p in enumerate(params):
        grad = p.grad
        if grad is None:
            continue
        if grad_shape_differs(grad, p, compiling):
            raise grad_shape_error(optimizer, group_index, i)
        if check is not None:
            check(p)


class SparseGradCheck:
    """A gradient check that refuses nothing but sparse gradients (most of torch's optimizers
    refuse them): :func:`check_group_grads` skips it for a group whose gradients are all dense,
    in its one pass of ``is_same_size`` (compat's fused Adagrad and SGD steps on 1000 small
    parameters spent 0.3–0.5 ms of their 5–8 ms calling a check per parameter)."""

    __slots__ = ("check",)

    def __init__(self, check: Callable[[Tensor], None]) -> None:
        self.check = check

    def __call__(self, p: Tensor) -> None:
        self.check(p)


def grad_shape_differs(grad: Tensor, p: Tensor, compiling: bool) -> bool:
    """``grad.shape != p.shape``: one ``is_same_size`` eagerly, the shapes while compiling
    (``compiling``: ``torch.compiler.is_compiling()``, read once per loop by the caller)."""
    return (grad.shape != p.shape) if compiling else not grad.is_same_size(p)


def grad_shape_error(optimizer: Optimizer, group_index: int, index: int) -> RuntimeError:
    """The error for parameter ``index`` of param group ``group_index``, whose gradient's shape is
    not its own (:func:`check_grad_shapes`)."""
    p = optimizer.param_groups[group_index]["params"][index]
    return RuntimeError(
        f"{type(optimizer).__name__}: the gradient of parameter {index} of param group {group_index} has shape "
        f"{tuple(p.grad.shape)}, but the parameter has shape {tuple(p.shape)}; a gradient must have "
        f"its parameter's shape"
    )


_grad_of = operator.attrgetter("grad")


def _check_step_value(step: Any, pid: Any) -> None:
    """A loaded ``step`` must be a count torch can use: a real number (torch's ``__setstate__``
    turns it into a tensor) or a real tensor with one element (kept as it is, int64 included).

    Anything else would fail only after ``Optimizer.load_state_dict`` had replaced the state and
    param groups (a string, a list) or at the next ``step()`` (a tensor of several elements).
    """
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex():
            raise ValueError(
                f"'step' of parameter {pid} must be a real tensor with one element, got a "
                f"{step.dtype} tensor of shape {tuple(step.shape)}"
            )
    elif not isinstance(step, numbers.Real):
        raise ValueError(f"'step' of parameter {pid} must be a number or a tensor, got {type(step).__name__}")


def _foreach_counts_like_loop(step: Optional[Tensor]) -> bool:
    """Whether foreach counts this ``step`` as torch's loop does: none yet (it will be created
    as float32), or a float32/float64 tensor."""
    return step is None or (isinstance(step, Tensor) and step.dtype in _LOOP_EQUAL_FOREACH_DTYPES)


#: elements per for-loop chunk on the CPU: one large tensor at a time, small ones batched (see below)
LOOP_CHUNK_NUMEL = 1 << 16
#: elements per for-loop chunk on an accelerator, where a step is host-bound and a chunk's
#: temporaries (at most this many elements each) live in device memory, not in a CPU cache
ACCELERATOR_LOOP_CHUNK_NUMEL = 1 << 24


def _cache_sized_chunks(params: list) -> list[list[int]]:
    """Index chunks for the for-loop path: each op of the kernel runs over one chunk at a time.

    torch's for-loop finishes one tensor before starting the next, so its temporaries are one
    tensor's worth and stay in cache; running each op over every tensor first would hold
    temporaries for all of them. Small tensors are batched into one chunk (fewer Python calls),
    up to ``LOOP_CHUNK_NUMEL`` elements. The math is per tensor, so the numbers do not change.
    A parameter listed twice in a group starts a new chunk at its second occurrence: torch's loop
    steps it twice, one whole step (``step += 1`` included) after the other.

    On an accelerator (the group's first parameter not on the CPU) the chunks hold up to
    ``ACCELERATOR_LOOP_CHUNK_NUMEL`` elements: there the kernels run asynchronously and the
    step's time is the host's, and the kernel's Python per chunk (each op of the kernel a method
    call over the chunk's lists) is what a chunk per tensor pays once per tensor and operation:
    timed on the CPU with a chunk per tensor, 27 tiny parameters (``benchmarks.loop_host``),
    compat's for-loop Adam took 1.59x torch's for-loop (NAdam 1.69x, Adagrad 1.82x), as one
    chunk 0.99x (1.02x, 1.10x); the first are in the range the H200 run measured on CUDA for
    large tensors (1.14-1.74x). The cost is memory:
    a chunk's temporaries (Adam's denominators) live together, at most that many elements each.

    Under torch.compile the chunks are as large as that allows: Inductor fuses across tensors
    anyway, and each chunk would compute its per-parameter scalars through its own
    :meth:`~functional_optim._kernels.ops.Ops.realize` barrier (46 tiny matmuls in a compiled
    AdamW step on 27 tensors instead of 2).
    """
    if torch.compiler.is_compiling():
        limit = float("inf")
    else:
        limit = LOOP_CHUNK_NUMEL if not params or params[0].is_cpu else ACCELERATOR_LOOP_CHUNK_NUMEL
    numels = [p.numel() for p in params]
    ids = [id(p) for p in params]
    repeats = len(set(ids)) < len(ids)  # rare: only then is membership in the chunk tracked
    chunks: list[list[int]] = []
    current: list[int] = []
    in_current: set[int] = set()
    size = 0
    for i, numel in enumerate(numels):
        if current and (size + numel > limit or (repeats and ids[i] in in_current)):
            chunks.append(current)
            current, in_current, size = [], set(), 0
        current.append(i)
        size += numel
        if repeats:
            in_current.add(ids[i])
    if current:
        chunks.append(current)
    return chunks


def _by_device_and_dtype(params: list, grads: list, state: dict) -> list:
    """``(params, grads, state)`` sub-lists sharing one device and dtype, as torch groups them.
    (A list, not a generator: torch 2.11's Dynamo could not resume a generator after a graph
    break and ran the whole group step eagerly, reading the steps with ``.item()``.)"""
    if torch.compiler.is_compiling():
        return [(params, grads, state)]
    keys = [k for k, v in state.items() if any(t is not None for t in v)]  # None entries ride along
    lists = [params, grads] + [state[k] for k in keys]
    out = []
    for (g_params, g_grads, *g_slots), _ in Optimizer._group_tensors_by_device_and_dtype(lists).values():
        g_state = {k: [None] * len(g_params) for k in state}
        g_state.update(zip(keys, g_slots))
        out.append((g_params, g_grads, g_state))
    return out

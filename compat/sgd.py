"""``compat.SGD``: drop-in for ``torch.optim.SGD``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _default_to_fused_or_foreach,
    _device_dtype_check_for_fused,
    _use_grad_for_differentiable,
)

from functional_optim._definition import make_transformation, new_step, pack_field, unpack_field
from functional_optim._kernels.ops import ForeachOps, LoopOps
from functional_optim._kernels.sgd import sgd_fused_
from functional_optim.sgd import SGD as SGD_DEFINITION
from functional_optim.sgd import SPARSE_WEIGHT_DECAY_ERROR, SGDState, SGDStatic, validate

from . import convert
from .optimizer import (FUSED_UNDER_COMPILE, FunctionalOptimizer, _cache_sized_chunks, grad_shape_differs,
                        grad_shape_error, saved_state_entries)

__all__ = ["SGD"]


class _SparseForeachOps(ForeachOps):
    """torch's foreach SGD on a device group that holds a sparse gradient: the same foreach ops,
    except the parameter update, which it runs one tensor at a time ("foreach APIs don't support
    sparse")."""

    def scale_and_add_(self, xs, others, scales, scratch: bool = False):
        if any(o.is_sparse for o in others) and not any(x.is_sparse for x in xs):
            for x, o in zip(xs, others):
                x.add_(o, alpha=scales)
            return xs
        return super().scale_and_add_(xs, others, scales, scratch)


def _read_like_torch(hparams: Any, static: SGDStatic, loop: bool) -> Any:
    """``lr``/``weight_decay`` as torch's SGD reads them: a tensor becomes a number (it is passed as
    ``alpha=``), except one that requires grad in the for-loop (torch multiplies by it with
    ``addcmul_``) and anything while compiling. torch's foreach code passes even such a tensor
    as ``alpha=``, which its argument parser refuses: the same call raises the same ``TypeError``."""
    if torch.compiler.is_compiling():
        return hparams
    lr, weight_decay = hparams.lr, hparams.weight_decay
    if not loop:
        if isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
            foreach_add = torch._foreach_add_ if static.maximize else torch._foreach_add
            foreach_add([torch.zeros(1)], [torch.zeros(1)], alpha=weight_decay)
        if isinstance(lr, Tensor) and (-lr).requires_grad:
            torch._foreach_add_([torch.zeros(1)], [torch.zeros(1)], alpha=-lr)

    def read(x):
        if isinstance(x, Tensor) and not (loop and x.requires_grad):
            return x.item()
        return x

    return hparams._replace(lr=read(lr), weight_decay=read(weight_decay))


def _check_sparse(group: dict, has_sparse_grad: bool) -> None:
    """torch's errors for a sparse gradient: the fused kernel takes none, and with weight decay
    torch's ``grad.add(param)`` fails (torch raises at that gradient, midway; here before any
    group is stepped; ``weight_decay != 0`` as torch tests it, a tensor's value included)."""
    if not has_sparse_grad:
        return
    if group["fused"]:
        raise RuntimeError("`_fused_sgd` does not support sparse gradients")
    if group["weight_decay"] != 0:
        raise RuntimeError(SPARSE_WEIGHT_DECAY_ERROR)


class SGD(FunctionalOptimizer):
    """SGD with momentum with torch.optim.SGD's API; math in ``functional_optim.sgd``.

    See :func:`functional_optim.sgd` for the formula. Every argument means what it means in
    ``torch.optim.SGD`` (``foreach``/``fused`` pick the implementation, ``differentiable`` lets
    autograd through ``step``). As in torch, the state holds only ``momentum_buffer``, created at a
    parameter's first step as a copy of its gradient (nothing at all without momentum); sparse
    gradients are supported by the for-loop and foreach implementations (not with weight decay);
    ``fused=True`` runs ``torch._fused_sgd_`` with the GradScaler contract.
    """

    cpu_default_foreach = True
    definition = SGD_DEFINITION

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        validate(lr, momentum, dampening, weight_decay, nesterov)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)
        if fused:
            self._step_supports_amp_scaling = True
            self._need_device_dtype_check_for_fused = True
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _static(self, group: dict) -> SGDStatic:
        return SGDStatic(has_momentum=bool(group["momentum"] != 0), nesterov=group["nesterov"],
                         maximize=group["maximize"])

    # ------------------------------------------------------------------ step
    def _gather_group(self, group_index: int, group: dict) -> tuple[list, list, list, bool]:
        """The params with a gradient, their grads, (with momentum) their buffers or ``None``, and
        whether a gradient is sparse,
        as torch's ``_init_group`` gathers them, its fused device/dtype check included (named
        otherwise: torch.compile special-cases ``_init_group`` with torch's signature). Each
        gradient's shape is checked here (``check_grad_shapes``'s error), in the one pass over the
        parameters; nothing is written (the state is read with ``get``), so :meth:`step` gathers
        every group before it steps any."""
        params, grads, bufs = [], [], []
        has_sparse_grad = False
        has_momentum, fused = group["momentum"] != 0, group["fused"]
        compiling = torch.compiler.is_compiling()
        state = self.state
        check_fused = fused and getattr(self, "_need_device_dtype_check_for_fused", True)
        for i, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            if grad_shape_differs(grad, p, compiling):
                raise grad_shape_error(self, group_index, i)
            if check_fused:  # the first parameter with a gradient, once per optimizer (as torch)
                _device_dtype_check_for_fused(p)
                check_fused = False
                if not compiling:  # (a traced step checks at every trace; torch 2.11's Dynamo cannot set it)
                    self._need_device_dtype_check_for_fused = False
            params.append(p)
            grads.append(grad)
            if grad.is_sparse:
                has_sparse_grad = True
            if has_momentum:
                entry = state.get(p)
                bufs.append(None if entry is None else entry.get("momentum_buffer"))
        return params, grads, bufs, has_sparse_grad

    @_use_grad_for_differentiable
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gathered = [self._gather_group(g, group) for g, group in enumerate(self.param_groups)]
        for group, (_, _, _, has_sparse_grad) in zip(self.param_groups, gathered):
            _check_sparse(group, has_sparse_grad)  # every group's before any is stepped
        for group, (params, grads, bufs, has_sparse_grad) in zip(self.param_groups, gathered):
            if not params:
                continue
            bufs = self._sgd_group(group, params, grads, bufs, has_sparse_grad)
            if group["momentum"] != 0:
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
        return loss

    def _sgd_group(self, group: dict, params: list, grads: list, bufs: list, has_sparse_grad: bool) -> list:
        """One group's step by torch's choice of implementation; returns the momentum buffers."""
        hparams, static = self._step_hparams(group), self._static(group)
        if group["fused"]:
            return self._fused_sgd(group, params, grads, bufs, static)
        host_scalars = not torch.compiler.is_compiling()
        if self._use_foreach(group, params):
            hparams = _read_like_torch(hparams, static, loop=False)
            return self._foreach_sgd(params, grads, bufs, hparams, static, host_scalars)
        return self._loop_sgd(params, grads, bufs, _read_like_torch(hparams, static, loop=True), static, host_scalars)

    def _use_foreach(self, group: dict, params: list) -> bool:
        """torch.optim.sgd's rule: the default foreach choice (made with ``differentiable=False``,
        whatever the group says) only when neither ``foreach`` nor ``fused`` is set."""
        foreach = group["foreach"]
        if foreach is None and group["fused"] is None:
            _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        return bool(foreach) or self._cpu_default_foreach(group, params)

    def _cpu_default_foreach(self, group: dict, params: list) -> bool:
        """As for the other optimizers (see ``FunctionalOptimizer``), and not where torch's foreach
        code would write the Nesterov term into ``p.grad`` (its for-loop leaves the grads alone) nor
        with sparse gradients."""
        if not super()._cpu_default_foreach(group, params):
            return False
        if group["nesterov"] and not group["maximize"] and not group["weight_decay"] != 0:
            return False
        return not any(p.grad.is_sparse for p in params)

    def _kernel(self, ops, params: list, grads: list, bufs: list, hparams: Any, static: SGDStatic) -> list:
        state = {"momentum_buffer": bufs} if static.has_momentum else {}
        _, new_state = self.definition.kernel(ops, params, grads, state, hparams, static)
        return new_state.get("momentum_buffer", [])

    def _loop_sgd(self, params, grads, bufs, hparams, static, host_scalars: bool) -> list:
        """torch's for-loop (also ``differentiable``), over cache-sized chunks of parameters."""
        ops = LoopOps(host_scalars=host_scalars)
        new_bufs = list(bufs)
        for chunk in _cache_sized_chunks(params):
            out = self._kernel(ops, [params[i] for i in chunk], [grads[i] for i in chunk],
                               [bufs[i] for i in chunk] if static.has_momentum else [], hparams, static)
            for j, buf in zip(chunk, out):
                new_bufs[j] = buf
        return new_bufs

    def _foreach_sgd(self, params, grads, bufs, hparams, static, host_scalars: bool) -> list:
        """torch's foreach implementation, one device/dtype group at a time."""
        new_bufs = list(bufs)
        grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, bufs], with_indices=True)
        for (g_params, g_grads, g_bufs), indices in grouped.values():
            sparse = any(g.is_sparse for g in g_grads)
            ops = (_SparseForeachOps if sparse else ForeachOps)(host_scalars=host_scalars)
            out = self._kernel(ops, g_params, g_grads, g_bufs if static.has_momentum else [], hparams, static)
            for i, buf in zip(indices, out):
                new_bufs[i] = buf
        return new_bufs

    @torch.compiler.disable(reason=FUSED_UNDER_COMPILE)
    def _fused_sgd(self, group: dict, params: list, grads: list, bufs: list, static: SGDStatic) -> list:
        """``torch._fused_sgd_`` per device/dtype group, with GradScaler's ``grad_scale`` and
        ``found_inf`` (the kernel skips the update where ``found_inf`` is set). The buffers of a
        first step are allocated empty and filled by the kernel, as in torch."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        hparams = self._hparams(group)._replace(lr=group["lr"])  # handed over as torch does
        is_first_step = static.has_momentum and all(b is None for b in bufs)
        if is_first_step:
            bufs = [torch.empty_like(g) for g in grads]
        scale_by_device = {grad_scale.device: grad_scale} if grad_scale is not None else {}
        inf_by_device = {found_inf.device: found_inf} if found_inf is not None else {}
        grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, bufs], with_indices=False)
        for (device, _), ((g_params, g_grads, g_bufs), _) in grouped.items():
            g_scale = scale_by_device.setdefault(device, grad_scale.to(device)) if grad_scale is not None else None
            g_inf = inf_by_device.setdefault(device, found_inf.to(device)) if found_inf is not None else None
            sgd_fused_(g_params, g_grads, g_bufs if static.has_momentum else [], hparams, static,
                       is_first_step, grad_scale=g_scale, found_inf=g_inf)
        return bufs

    # ------------------------------------------------------------------ checkpoints
    def _validate_state_dict(self, state_dict: dict) -> None:
        """Check a torch-format SGD state dict before loading: each entry a dict whose
        ``momentum_buffer``, if any, is ``None`` or a tensor of its parameter's shape."""
        for _group, _saved, p, pid, entry in saved_state_entries(self, state_dict):
            buf = entry.get("momentum_buffer")
            if buf is None:
                continue
            if not isinstance(buf, Tensor):
                raise ValueError(f"state 'momentum_buffer' of parameter {pid} must be a tensor or None, "
                                 f"got {type(buf).__name__}")
            if buf.shape != p.shape:
                raise ValueError(f"state 'momentum_buffer' of parameter {pid} has shape {tuple(buf.shape)}, "
                                 f"expected {tuple(p.shape)}")

    # ------------------------------------------------------------------ the functional API
    def to_functional(self, params: Any):
        """``(transformation, state)`` as :func:`compat.convert.to_functional`. torch keeps no step
        count for SGD: a parameter with a momentum buffer gets ``step`` 1 (stepped before), one
        without gets 0 (its next step is its first); only that distinction enters the math."""
        leaves, spec, paths, groups = convert._groups_of(self, params)
        hparams, static = convert._common_config(self, groups, paths)
        steps, bufs = [], []
        for p in leaves:
            buf = (self.state.get(p) or {}).get("momentum_buffer")
            slot = self.definition.init_slots(p, hparams, static)["momentum_buffer"]
            if slot is not None and buf is not None:
                slot.copy_(buf.to_dense() if buf.is_sparse else buf)
            steps.append(new_step(p).fill_(0.0 if buf is None else 1.0))
            bufs.append(slot)
        state = SGDState(step=pack_field(spec, steps), momentum_buffer=pack_field(spec, bufs))
        return make_transformation(self.definition, hparams, static), state

    def load_functional(self, params: Any, state: Any) -> None:
        """Write a functional :class:`SGDState` back in torch's layout: a ``momentum_buffer`` for
        each parameter stepped before (``step > 0``) in a group with momentum, nothing otherwise
        (torch has no state there). Everything is checked before anything is written."""
        if not isinstance(state, SGDState):
            raise TypeError(f"expected a SGDState, got {type(state).__name__}")
        leaves, _, paths, groups = convert._groups_of(self, params)
        steps = unpack_field(params, state.step, "state.step")
        bufs = unpack_field(params, state.momentum_buffer, "state.momentum_buffer")
        updates = []
        for path, p, group, step, buf in zip(paths, leaves, groups, steps, bufs):
            if not torch.is_tensor(step) or step.dim() != 0:
                raise ValueError(f"state.step at {path} must be a 0-d tensor")
            if group["momentum"] == 0:
                updates.append((p, None))
                continue
            if not torch.is_tensor(buf) or buf.shape != p.shape:
                raise ValueError(f"state.momentum_buffer at {path} must be a tensor of shape {tuple(p.shape)}")
            stepped = float(step) > 0
            updates.append((p, buf.detach().to(dtype=p.dtype, device=p.device, copy=True) if stepped else None))
        for p, buf in updates:
            if buf is None:
                self.state.pop(p, None)
            else:
                self.state[p] = {"momentum_buffer": buf}

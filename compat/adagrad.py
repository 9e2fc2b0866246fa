"""``compat.Adagrad``: drop-in for ``torch.optim.Adagrad``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import (
    ParamsT,
    _default_to_fused_or_foreach,
    _device_dtype_check_for_fused,
    _get_scalar_dtype,
)

from functional_optim._definition import run_kernel
from functional_optim._kernels.adagrad import adagrad_fused_
from functional_optim._kernels.ops import ForeachOps
from functional_optim.adagrad import ADAGRAD, AdagradHParams, validate

from .optimizer import TORCH_VERSION, FunctionalOptimizer, SparseGradCheck, _by_device_and_dtype

__all__ = ["Adagrad"]

#: torch >= 2.12 runs Adagrad(fused=True) on CUDA too and lets GradScaler hand the fused step its
#: grad_scale/found_inf (``_step_supports_amp_scaling``); torch 2.11 refuses CUDA there and lets
#: GradScaler unscale the grads. As a drop-in, compat.Adagrad does what the installed torch does.
_FUSED_ON_CUDA = TORCH_VERSION >= (2, 12)


_FUSED_REFUSES = "`fused` does not support sparse grad or complex param"  # torch's message


def _refuse_sparse_when_fused(p: Tensor) -> None:
    """torch's error for a sparse gradient with ``fused=True`` (raised there when the group is
    stepped; here for every group before any is)."""
    if p.grad.is_sparse:
        raise RuntimeError(_FUSED_REFUSES)


class Adagrad(FunctionalOptimizer):
    """Adagrad (Duchi et al., 2011) with torch.optim.Adagrad's API; math in ``functional_optim.adagrad``.

    See :func:`functional_optim.adagrad` for the formula. Every argument means what it means in
    ``torch.optim.Adagrad``. As there, the state (``step`` and ``sum``) of every parameter is
    created by the constructor, sparse gradients are supported (for-loop and foreach; not with
    ``weight_decay`` nor ``fused``), and ``fused`` rejects complex parameters.
    """

    cpu_default_foreach = True
    definition = ADAGRAD
    complex_l2_before_real_view = True
    fused_step = staticmethod(adagrad_fused_)

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        validate(AdagradHParams(lr, lr_decay, weight_decay, eps), initial_accumulator_value)
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
            self._need_device_dtype_check_for_fused = True
            if _FUSED_ON_CUDA:
                self._step_supports_amp_scaling = True
        # torch creates every parameter's state here (no fused device/dtype check yet)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p].update(self._new_state(p, group))

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        fused = None
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            fused = group.setdefault("fused", None)
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    step_val = float(p_state["step"])
                    p_state["step"] = (
                        torch.tensor(step_val, dtype=_get_scalar_dtype(is_fused=fused), device=p.device)
                        if group["fused"]
                        else torch.tensor(step_val, dtype=_get_scalar_dtype())
                    )
        state_values = list(self.state.values())
        if state_values and not torch.is_tensor(state_values[0]["step"]):
            for s in state_values:
                s["step"] = torch.tensor(float(s["step"]), dtype=_get_scalar_dtype(is_fused=fused))

    def share_memory(self) -> None:
        """Calls tensor.share_memory_() on the state sum tensors."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    # ------------------------------------------------------------------ state
    def _new_state(self, p: Tensor, group: dict) -> dict:
        """``step`` and ``sum``; ``sum`` starts at the constructor's value for every group, as in torch."""
        static = self._static(group)._replace(initial_accumulator_value=self.defaults["initial_accumulator_value"])
        return {"step": self._step_tensor(p, group), **self.definition.init_slots(p, None, static)}

    def _init_param_state(self, p: Tensor, group: dict) -> dict:
        """State of a parameter added (``add_param_group``) after construction, made on its first step."""
        if group["fused"]:
            _device_dtype_check_for_fused(p, cuda_unsupported=not _FUSED_ON_CUDA)
        return self._new_state(p, group)

    # ------------------------------------------------------------------ per-step checks
    def _accelerator_graph_capture_health_check(self) -> None:
        """torch.optim.Adagrad has no ``capturable`` mode and makes no graph-capture check."""

    def _grad_checker(self, group: dict):
        """Fused: torch's device/dtype check of the first parameter with a gradient, once per
        optimizer; otherwise the sparse-gradient checks."""
        if group["fused"]:
            if getattr(self, "_need_device_dtype_check_for_fused", True):
                return self._check_fused_once
            return SparseGradCheck(_refuse_sparse_when_fused)

        def check(p: Tensor) -> None:
            if p.grad.is_sparse:
                self.definition.check_grad(p.grad, self._hparams(group), self._static(group))
        return SparseGradCheck(check)

    def _check_fused_once(self, p: Tensor) -> None:
        if getattr(self, "_need_device_dtype_check_for_fused", True):
            _device_dtype_check_for_fused(p, cuda_unsupported=not _FUSED_ON_CUDA)
            if not torch.compiler.is_compiling():  # (a traced step checks at every trace; torch 2.11's Dynamo cannot set it)
                self._need_device_dtype_check_for_fused = False
        _refuse_sparse_when_fused(p)

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        """torch.optim.Adagrad makes no per-group checks beyond those in :meth:`_step_group`."""

    # ------------------------------------------------------------------ dispatch
    def _host_scalars(self, group: dict) -> bool:
        # torch's Adagrad reads step with .item() also when differentiable (tensors only when compiling)
        return not torch.compiler.is_compiling()

    def _use_foreach(self, group: dict, params: list) -> bool:
        """torch's default rule (no exception for a tensor ``lr``: Adagrad has no ``capturable``)."""
        foreach = group["foreach"]
        if group["fused"] is None and foreach is None:
            _, foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)
        return bool(foreach) or self._cpu_default_foreach(group, params)

    def _step_group(self, group: dict, params: list, grads: list, state: dict) -> None:
        has_sparse_grad = any(g.is_sparse for g in grads)
        if group["fused"]:
            if has_sparse_grad or any(torch.is_complex(p) for p in params):
                raise RuntimeError(_FUSED_REFUSES)
            if group["differentiable"]:
                raise RuntimeError("adagrad with fused=True does not support differentiable=True")
        elif has_sparse_grad and self._use_foreach(group, params):
            self._foreach_step_with_sparse(group, params, grads, state)
            return
        super()._step_group(group, params, grads, state)

    def _foreach_step_with_sparse(self, group: dict, params: list, grads: list, state: dict) -> None:
        """Foreach, except that a device/dtype group holding a sparse grad runs one tensor at a time."""
        if group["differentiable"]:
            raise AssertionError("_foreach ops don't support autograd")
        hparams, static, host_scalars = self._step_hparams(group), self._static(group), self._host_scalars(group)
        for g_params, g_grads, g_state in _by_device_and_dtype(params, grads, state):
            if any(g.is_sparse for g in g_grads):
                self._loop_group(g_params, g_grads, g_state, hparams, static, host_scalars)
            else:
                run_kernel(self.definition, ForeachOps(host_scalars=host_scalars), g_params, g_grads, g_state,
                           hparams, static)

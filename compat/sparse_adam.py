"""``compat.SparseAdam``: drop-in for ``torch.optim.SparseAdam``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from functional_optim._definition import pack_field, unpack_field
from functional_optim._kernels.ops import LoopOps
from functional_optim._kernels.sparse_adam import sparse_adam_update
from functional_optim.sparse_adam import (
    DENSE_GRADIENT_ERROR,
    SPARSE_ADAM,
    SparseAdamHParams,
    SparseAdamState,
    SparseAdamStatic,
    sparse_adam,
    validate,
)

from . import convert
from .optimizer import FunctionalOptimizer

__all__ = ["SparseAdam"]


def _refuse_dense(p: torch.Tensor) -> None:
    """torch's error for a dense gradient."""
    if not p.grad.is_sparse:
        raise RuntimeError(DENSE_GRADIENT_ERROR)


class SparseAdam(FunctionalOptimizer):
    """SparseAdam with torch.optim.SparseAdam's API; math in ``functional_optim.sparse_adam``.

    See :func:`functional_optim.sparse_adam` for the formula. As torch: dense, real parameters
    (checked at construction), sparse gradients only (a dense one raises at ``step``, after the
    parameters before it in its group were counted), state ``{"step": int, "exp_avg",
    "exp_avg_sq"}`` created at a parameter's first gradient, one implementation (a loop).
    """

    definition = SPARSE_ADAM

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        validate(SparseAdamHParams(lr, betas, eps))
        defaults = {"lr": lr, "betas": betas, "eps": eps, "maximize": maximize}
        super().__init__(params, defaults)
        sparse_params, complex_params = [], []
        for index, group in enumerate(self.param_groups):
            for d_index, p in enumerate(group["params"]):
                if p.is_sparse:
                    sparse_params.append([index, d_index])
                if p.is_complex():
                    complex_params.append([index, d_index])
        if sparse_params:
            raise ValueError(f"Sparse params at indices {sparse_params}: SparseAdam requires dense parameter tensors")
        if complex_params:
            raise ValueError(
                f"Complex params at indices {complex_params}: SparseAdam does not support complex parameters"
            )

    def _init_param_state(self, p: Tensor, group: dict) -> dict:
        """torch's layout: a Python int ``step`` and dense moments."""
        return {"step": 0, **self.definition.init_slots(p, None, None)}

    def _grad_checker(self, group: dict):
        """torch's error for a dense gradient (:meth:`_check_grads` runs it on every group first)."""
        return _refuse_dense

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
        # every gradient of every group first: torch raises at a dense one midway, after counting
        # the steps of the parameters before it
        self._check_grads()
        ops = LoopOps()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                params.append(p)
                grads.append(p.grad)
                state = self.state[p]
                if len(state) == 0:
                    state.update(self._init_param_state(p, group))
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                state["step"] += 1  # counted while gathering, as torch
                steps.append(state["step"])
            static = SparseAdamStatic(maximize=group.get("maximize", False))
            sparse_adam_update(ops, params, grads, exp_avgs, exp_avg_sqs, steps, self._hparams(group), static)
        return loss

    # ------------------------------------------------------------------ the functional API
    def to_functional(self, params: Any):
        """``(fo.sparse_adam(...), SparseAdamState)`` for the leaves of ``params`` (the int steps
        become 0-d float32 tensors; see :mod:`compat.convert`)."""
        leaves, spec, paths, groups = convert._groups_of(self, params)
        hparams, static = convert._common_config(self, groups, paths)
        fields: dict = {name: [] for name in SparseAdamState._fields}
        for p in leaves:
            torch_state = self.state.get(p) or {}
            fresh = {"step": torch.zeros((), dtype=torch.float32, device=p.device), **self.definition.init_slots(p, None, None)}
            for name, value in fresh.items():
                if name in torch_state:
                    value.copy_(torch.as_tensor(torch_state[name]))
                fields[name].append(value)
        state = SparseAdamState(**{name: pack_field(spec, values) for name, values in fields.items()})
        transformation = sparse_adam(hparams.lr, hparams.betas, hparams.eps, maximize=static.maximize)
        return transformation, state

    def load_functional(self, params: Any, state: Any) -> None:
        """Continue from a functional ``SparseAdamState`` (checked first; the optimizer is unchanged on error)."""
        if not isinstance(state, SparseAdamState):
            raise TypeError(f"expected a SparseAdamState, got {type(state).__name__}")
        leaves, _, paths, _ = convert._groups_of(self, params)
        fields = {name: unpack_field(params, getattr(state, name), f"state.{name}") for name in state._fields}
        entries = []
        for i, (path, p) in enumerate(zip(paths, leaves)):
            step = fields["step"][i]
            if not (torch.is_tensor(step) and step.numel() == 1):
                raise ValueError(f"state.step at {path} must be a one-element tensor")
            entry = {"step": int(step.item())}
            for name in ("exp_avg", "exp_avg_sq"):
                value = fields[name][i]
                if not torch.is_tensor(value) or value.shape != p.shape:
                    raise ValueError(f"state.{name} at {path} must be a tensor of shape {tuple(p.shape)}")
                entry[name] = value.detach().to(device=p.device, dtype=p.dtype).clone(memory_format=torch.preserve_format)
            entries.append((p, entry))
        for p, entry in entries:
            self.state[p] = entry

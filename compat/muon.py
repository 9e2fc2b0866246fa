"""``compat.Muon``: drop-in for ``torch.optim.Muon`` (torch >= 2.9; this class works on any torch)."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

from typing import Any, Callable, Optional

import torch
from torch.optim.optimizer import ParamsT

from functional_optim._definition import run_kernel
from functional_optim._kernels.muon import NS_COEFFICIENTS, NS_EPS, NS_STEPS, check_newton_schulz_args
from functional_optim._kernels.ops import LoopOps
from functional_optim.muon import MUON, MuonHParams, muon_transformation, validate

from . import convert
from .optimizer import FunctionalOptimizer, _cache_sized_chunks, saved_state_entries

__all__ = ["Muon"]


class Muon(FunctionalOptimizer):
    """Muon (Jordan et al., 2024) with torch.optim.Muon's API; math in ``functional_optim.muon``.

    See :func:`functional_optim.muon` for the formula. As torch: 2-D parameters only (checked at
    construction), no complex parameters or sparse gradients (checked at ``step``), state
    ``{"momentum_buffer"}`` per parameter created at its first gradient, one implementation (the
    for-loop: torch has no foreach or fused Muon). Muon is meant for the hidden layers' matrices;
    optimize the other parameters with e.g. ``compat.AdamW``.
    """

    definition = MUON

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = NS_EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: str | None = None,
    ) -> None:
        validate(MuonHParams(lr, weight_decay, momentum, eps), adjust_lr_fn)
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_coefficients": ns_coefficients,
            "eps": eps,
            "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()}"
                    )

    # ------------------------------------------------------------------ state
    def _init_param_state(self, p: torch.Tensor, group: dict) -> dict:
        """``{"momentum_buffer": zeros}`` shaped (and strided) like the gradient, as torch; no step."""
        like = p.grad if p.grad is not None else p
        return {"momentum_buffer": torch.zeros_like(like, memory_format=torch.preserve_format)}

    def _grad_checker(self, group: dict):
        """torch's checks of each gradient, in its order (``_init_group``'s, then its step's 2-D
        check), run for every group before any is stepped: torch raises them midway, after
        stepping (or making the buffers of) the parameters before the offending one."""
        def check(p: torch.Tensor) -> None:
            if torch.is_complex(p):
                raise RuntimeError("Muon does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            if p.grad.dim() != 2:  # a vector added to the optimizer after construction
                raise ValueError("Param gradient must be a 2D matrix")
        return check

    def _gather(self, group: dict) -> tuple[list, list, dict]:
        """torch's ``_init_group``: the lazy buffer, parameter by parameter (the checks ran first)."""
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if "momentum_buffer" not in state:
                state.update(self._init_param_state(p, group))
            bufs.append(state["momentum_buffer"])
        return params, grads, {"momentum_buffer": bufs}

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
        self._check_grads()
        for group in self.param_groups:  # (changed in a group after construction: torch raises midway)
            check_newton_schulz_args(group["ns_coefficients"], group["ns_steps"])
        # under torch.compile scalars stay tensors (no .item() graph breaks)
        ops = LoopOps(host_scalars=not torch.compiler.is_compiling())
        for group in self.param_groups:
            params, grads, state = self._gather(group)
            hparams, static = self._step_hparams(group), self._static(group)
            # torch's loop finishes one parameter before the next; the kernel's math is per
            # parameter, so cache-sized chunks of them give the same numbers with one Python call
            # of each op per chunk instead of per parameter (many small matrices)
            for chunk in _cache_sized_chunks(params):
                run_kernel(self.definition, ops, [params[i] for i in chunk], [grads[i] for i in chunk],
                           {k: [v[i] for i in chunk] for k, v in state.items()}, hparams, static)
        return loss

    # ------------------------------------------------------------------ the functional API, checkpoints
    def to_functional(self, params: Any):
        """``(fo.muon(...), MuonState)`` for the leaves of ``params`` (see :mod:`compat.convert`)."""
        _, state = super().to_functional(params)
        leaves, _, paths, groups = convert._groups_of(self, params)
        hparams, static = convert._common_config(self, groups, paths)
        return muon_transformation(hparams, static), state

    def _validate_state_dict(self, state_dict: dict) -> None:
        """Refuse a malformed state dict before loading: each entry a dict whose ``momentum_buffer``
        (if any) is a tensor of its parameter's shape."""
        for _group, _saved, p, pid, entry in saved_state_entries(self, state_dict):
            buf = entry.get("momentum_buffer")
            if buf is not None and (not torch.is_tensor(buf) or buf.shape != p.shape):
                got = tuple(buf.shape) if torch.is_tensor(buf) else type(buf).__name__
                raise ValueError(
                    f"state 'momentum_buffer' of parameter {pid} must be a tensor of shape {tuple(p.shape)}, "
                    f"got {got}"
                )

"""``compat.Adam`` / ``compat.AdamW``: drop-ins for ``torch.optim.Adam`` / ``AdamW``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _get_scalar_dtype

from functional_optim import _validate
from functional_optim._kernels.adam import adam_fused_
from functional_optim.adam import ADAM

from .optimizer import TORCH_VERSION, FunctionalOptimizer

__all__ = ["Adam", "AdamW"]


def _check_tensor_hparams_for_foreach(lr, betas, foreach, capturable) -> None:
    """torch.optim.Adam's constructor rules for tensor ``lr``/``betas`` (same messages, same order)."""
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")


class Adam(FunctionalOptimizer):
    """Adam (Kingma & Ba, 2014) with torch.optim.Adam's API; math in ``functional_optim.adam``.

    See :func:`functional_optim.adam` for the formula. Every argument means what it means in
    ``torch.optim.Adam`` (``foreach``/``fused`` pick the implementation, ``capturable`` keeps the
    step on the device for CUDA graphs, ``differentiable`` lets autograd through ``step``).
    """

    cpu_default_foreach = True
    cpu_step_device = "cpu" if TORCH_VERSION >= (2, 13) else None  # torch 2.13 names the CPU
    definition = ADAM
    complex_l2_before_real_view = True
    fused_step = staticmethod(adam_fused_)

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        _check_tensor_hparams_for_foreach(lr, betas, foreach, capturable)
        _validate.check_lr(lr)
        _validate.check_eps(eps)
        _validate.check_betas(betas)
        _validate.check_weight_decay(weight_decay)
        _validate.check_betas_kind(betas)
        for i, beta in enumerate(betas):
            if isinstance(beta, Tensor):
                if not capturable and foreach:
                    raise ValueError(
                        f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True"
                    )
        betas = tuple(map(_validate.squeeze_scalar, betas))
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            self._step_supports_amp_scaling = True
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay", False)
            fused = group.setdefault("fused", None)
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    step_val = float(p_state["step"])
                    p_state["step"] = (
                        torch.tensor(step_val, dtype=_get_scalar_dtype(is_fused=fused), device=p.device)
                        if group["capturable"] or group["fused"]
                        else torch.tensor(step_val, dtype=_get_scalar_dtype())
                    )

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        super()._check_group(group, params, state_steps)
        if group["foreach"] and torch.is_tensor(group["lr"]) and not group["capturable"]:
            raise RuntimeError("lr as a Tensor is not supported for capturable=False and foreach=True")


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019) with torch.optim.AdamW's API: Adam with decoupled decay."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad,
            foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True

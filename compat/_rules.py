"""torch's per-class rules that several ``torch.optim`` classes repeat, shared by the compat classes:
the default implementation choice, the per-step checks, and the ``__setstate__`` upgrade of an
older checkpoint (missing group flags, counters stored as numbers)."""

from typing import Sequence

import torch
from torch.optim.optimizer import (
    _default_to_fused_or_foreach,
    _get_capturable_supported_devices,
    _get_scalar_dtype,
)

from .optimizer import FunctionalOptimizer

__all__ = ["default_foreach", "check_step", "upgrade_state"]


def default_foreach(group: dict, params: list) -> bool:
    """torch's choice of implementation for these optimizers: ``foreach`` as given, else foreach
    when every param is on a device torch's foreach supports (CUDA), whatever ``lr``'s type."""
    foreach = group["foreach"]
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)
    return bool(foreach)


def check_step(group: dict, params: list, tensors: Sequence[list], listed: str, foreach: bool,
               supports_xla: bool) -> None:
    """torch's per-step checks, in its order: foreach refuses ``differentiable``; ``capturable``
    needs ``params`` and the per-parameter ``tensors`` (steps ...) on one supported device type
    (``listed`` names them as torch's message does; not checked while compiling, as in torch)."""
    if foreach and group["differentiable"]:
        raise AssertionError("_foreach ops don't support autograd")
    if not group["capturable"] or torch.compiler.is_compiling():
        return
    supported = _get_capturable_supported_devices(supports_xla=supports_xla)
    for p, *others in zip(params, *tensors):
        if not (all(t.device.type == p.device.type for t in others) and p.device.type in supported):
            raise AssertionError(f"If capturable=True, {listed} must be on supported devices: {supported}.")


def upgrade_state(optimizer: FunctionalOptimizer, group_defaults: dict, scalar_keys: Sequence[str] = ("step",),
                  on_param_device: bool = False) -> None:
    """torch's ``__setstate__`` for an older checkpoint: missing group flags get their defaults and
    per-parameter counters stored as numbers become tensors of the scalar dtype (on the param's
    device if ``capturable``, or always with ``on_param_device``)."""
    for group in optimizer.param_groups:
        for key, value in group_defaults.items():
            group.setdefault(key, value)
        for p in group["params"]:
            p_state = optimizer.state.get(p, [])
            if len(p_state) == 0:
                continue
            for key in scalar_keys:
                if not torch.is_tensor(p_state[key]):
                    device = p.device if on_param_device or group.get("capturable", False) else None
                    p_state[key] = torch.tensor(float(p_state[key]), dtype=_get_scalar_dtype(), device=device)

"""What the installed torch does, for tests whose expectation depends on the torch version.

The suite supports torch >= 2.11 (CI pins 2.13). Where torch itself lacks a feature, a test skips
with the reason; where the installed torch behaves differently and compat follows it, the test
compares against the installed torch. Each probe asks the installed torch directly (no version
table), so a test follows whatever the installed build does.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

#: (major, minor) of the installed torch, e.g. (2, 11)
TORCH_VERSION: tuple[int, int] = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())


@functools.cache
def adagrad_creates_state_of_added_groups() -> bool:
    """Whether ``torch.optim.Adagrad`` creates the state of a param group added after construction
    (on its first step). torch >= 2.12 does; 2.11 creates state only in the constructor, so such a
    group's first step fails with ``KeyError: 'sum'``."""
    first, later = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adagrad([first])
    opt.add_param_group({"params": [later]})
    later.grad = torch.ones(1)
    try:
        opt.step()
    except KeyError:
        return False
    return True


@functools.cache
def adagrad_fused_refusal(device: str) -> str | None:
    """``None`` where ``torch.optim.Adagrad(fused=True)`` steps a float32 param on ``device``,
    else torch's refusal. torch >= 2.12 runs it on CUDA; 2.11 has it on CPU only."""
    p = torch.zeros(2, device=device, requires_grad=True)
    opt = torch.optim.Adagrad([p], fused=True)
    p.grad = torch.ones_like(p)
    try:
        opt.step()
    except RuntimeError as e:
        if "supported devices" not in str(e):
            raise
        return str(e)
    return None


def skip_unless_torch_adagrad_fused_on(device: str) -> None:
    """Skip (with torch's own message) where the installed torch refuses fused Adagrad on ``device``."""
    refusal = adagrad_fused_refusal(device)
    if refusal is not None:
        since = " (torch runs it on CUDA from 2.12 on)" if device == "cuda" else ""
        pytest.skip(f"torch {torch.__version__} refuses Adagrad(fused=True) on {device}{since}: {refusal}")


@functools.cache
def dtensor_sharding_missing(op_name: str) -> bool:
    """Whether the installed torch's DTensor has no sharding rule for ``aten.<op_name>.default``
    (torch 2.11 has none for ``_foreach_rsqrt_``, which torch's own foreach Adafactor calls too)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - depends on the build
        return True
    op = getattr(torch.ops.aten, op_name).default
    prop = DTensor._op_dispatcher.sharding_propagator
    tables = ("op_strategy_funcs", "op_single_dim_strategy_funcs", "op_to_rules")
    return not any(op in getattr(prop, table, {}) for table in tables)


@functools.cache
def vmap_dtype_view_refusal() -> str | None:
    """``None`` where ``torch.func.vmap`` batches ``Tensor.view(dtype)`` (the bit views stochastic
    rounding draws through), else torch's refusal (torch 2.11 has no batching rule for it)."""
    try:
        torch.func.vmap(lambda x: x.view(torch.int32))(torch.zeros(2, 3))
    except RuntimeError as e:
        return str(e)
    return None


def skip_unless_vmap_batches_dtype_views() -> None:
    refusal = vmap_dtype_view_refusal()
    if refusal is not None:
        pytest.skip(f"torch {torch.__version__}'s vmap cannot batch Tensor.view(dtype): {refusal}")

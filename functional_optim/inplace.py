"""An opt-in in-place step for speed: the pure math, written into the existing tensors.

``update`` allocates new parameters and state every step (that is what makes it pure). A training
loop that owns its tensors can call :func:`step_` instead: it runs the same ``update`` and writes
the results into ``params`` and ``state``, with one ``torch._foreach_add_`` of the updates and one
``torch._foreach_copy_`` of the new state (what Inductor fuses horizontally on a GPU, as the
compiled update's own foreach operations). Under ``torch.compile`` Inductor fuses each computation
with its write, so the step reads and writes every tensor once and allocates nothing, like torch's
fused kernels. The numbers are exactly those of ``update`` followed by ``apply_updates``. It is not
differentiable (it runs under ``torch.no_grad``); use ``update`` for meta-learning.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import GradientTransformation
from .tree import check_params_match, check_same_structure, flatten, lazy_paths

__all__ = ["step_"]


def step_(transformation: GradientTransformation, grads: Any, state: Any, params: Any, hparams: Any = None) -> None:
    """``params += updates`` and ``state <- new_state``, written in place (see module docstring)."""
    updates, new_state = transformation.update(grads, state, params, hparams)
    _check_writable(params, updates, state, new_state)
    with torch.no_grad():
        added, addends = [], []
        for p, u in zip(flatten(params)[0], flatten(updates)[0]):
            if u is None:
                continue
            if p.dim() == 0:
                _write_(p, p + u)
            elif u.dtype == p.dtype and u.device == p.device:
                added.append(p)
                addends.append(u)
            else:
                p.add_(u)
        if added:
            torch._foreach_add_(added, addends)
        written, values = [], []
        for old, new in zip(flatten(state)[0], flatten(new_state)[0]):
            if not isinstance(old, torch.Tensor) or new is old:
                continue
            if (old.dim() == 0 and old.is_cpu) or new.dtype != old.dtype or new.device != old.device:
                _write_(old, new)
            else:
                written.append(old)
                values.append(new)
        if written:
            torch._foreach_copy_(written, values)


def _check_writable(params: Any, updates: Any, state: Any, new_state: Any) -> None:
    """Everything :func:`step_` writes, checked before the first write: the updates have the
    params' structure and shapes (``p.add_(u)`` would broadcast a ``(4,)`` update across a
    ``(3, 4)`` parameter), and each new state leaf the shape of the tensor it is written into
    (``copy_`` broadcasts too). Raises ``ValueError`` naming the path; nothing has been written."""
    check_params_match(updates, params, "step_")
    check_same_structure(state, new_state, "the state", "step_: the new state")
    paths = lazy_paths(state)
    for i, (old, new) in enumerate(zip(flatten(state)[0], flatten(new_state)[0])):
        if not isinstance(old, torch.Tensor) or new is old:
            continue
        if not isinstance(new, torch.Tensor) or new.shape != old.shape:
            got = f"shape {tuple(new.shape)}" if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(f"step_: the new state at {paths()[i]} has {got}, where the state has a tensor of "
                             f"shape {tuple(old.shape)} to write it into")


def _write_(dst: torch.Tensor, value: torch.Tensor) -> None:
    """``dst.copy_(value)``; a 0-d ``dst`` is written by indexing (``dst[...] = value``). (Used for
    0-d params, 0-d CPU state and values of another dtype or device; the rest is one foreach copy.)

    Under torch.compile (torch 2.13, aot_eager and Inductor) an in-place op on a 0-d float64 CPU
    input (``copy_``, ``add_``, ``fill_``) is silently dropped: the caller's tensor keeps its old
    value (measured: Schedule-Free's float64 ``weight_sum``/``lr_max`` never changed, so compiled
    ``step_`` drifted from ``update`` by 0.2 after two steps). The indexed write is kept."""
    if dst.dim() == 0:
        dst[...] = value
    else:
        dst.copy_(value)

"""Is foreach bitwise equal to for-loop? Parameters and state after a few steps, per flag set and dtype.

For each optimizer and flag set (torch's defaults plus :attr:`OptimizerSpec.variants`), run
``foreach=False`` and ``foreach=True`` from the same start on the same sequence of random
gradients, for ``compat`` and for ``torch.optim``, and compare every parameter and state tensor
with ``torch.equal``. Also compares compat's for-loop with torch's for-loop. Small tensors of mixed
shapes: the question is the arithmetic, not the speed.
"""

from __future__ import annotations

import torch

from .registry import Available

SHAPES = [(7, 13), (64,), (3, 4, 5), (256, 128), (1,)]
STEPS = 5


def _run(cls, kwargs: dict, foreach: bool, dtype: torch.dtype, device: torch.device) -> list:
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype).to(device)) for s in SHAPES]
    opt = cls(params, foreach=foreach, **kwargs)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype).to(device)
        opt.step()
    state = [t for p in params for t in opt.state[p].values() if isinstance(t, torch.Tensor)]
    return [p.detach() for p in params] + state


def _equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def check(opt: Available, device: torch.device) -> list:
    """One row per (flag set, dtype): foreach ≡ for-loop for compat and torch, compat loop ≡ torch loop.

    None for an optimizer torch has no foreach implementation of (``spec.foreach`` false).
    """
    if not opt.spec.foreach:
        return []
    rows = []
    for flags in ({},) + opt.spec.variants:
        for dtype in (torch.float32, torch.float64):
            t_loop = _run(opt.spec.torch_cls, flags, False, dtype, device)
            t_each = _run(opt.spec.torch_cls, flags, True, dtype, device)
            row = {"optimizer": opt.name, "flags": flags, "dtype": str(dtype).replace("torch.", ""),
                   "torch_foreach_eq_loop": _equal(t_each, t_loop)}
            if opt.compat_cls is not None:
                try:
                    c_loop = _run(opt.compat_cls, flags, False, dtype, device)
                    c_each = _run(opt.compat_cls, flags, True, dtype, device)
                    row["compat_foreach_eq_loop"] = _equal(c_each, c_loop)
                    row["compat_loop_eq_torch_loop"] = _equal(c_loop, t_loop)
                    row["compat_foreach_eq_torch_foreach"] = _equal(c_each, t_each)
                except Exception as exc:  # an unfinished optimizer must not stop the suite
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            rows.append(row)
    return rows

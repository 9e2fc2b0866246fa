"""Shared harness: run torch.optim, compat and functional optimizers side by side.

Used by every optimizer's test module. Gradients are generated once per step and fed to all
three; results are compared leaf by leaf (params and every state tensor, dtype and device).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

import functional_optim as fo

IMPLS = {
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}

# (rtol, atol) per dtype: float64 must agree to rounding; float32 to a few ulps over a few steps
TOL = {
    torch.float64: (1e-12, 1e-14),
    torch.float32: (1e-5, 1e-6),
    torch.complex128: (1e-12, 1e-14),
    torch.complex64: (1e-5, 1e-6),
}


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A 2-D, a 1-D, a 0-d and a non-contiguous (transposed) parameter."""
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32

    def rand(*shape):
        t = torch.randn(*shape, generator=g, dtype=real)
        if dtype.is_complex:
            t = torch.complex(t, torch.randn(*shape, generator=g, dtype=real))
        return t

    return [rand(5, 3), rand(4), rand(()), rand(3, 6).t()]


def grads_for_step(params: list[torch.Tensor], step: int, seed: int = 1) -> list[torch.Tensor | None]:
    """Random grads; at step 2 the second param gets None, at step 3 the first gets zeros."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for i, p in enumerate(params):
        if p.dtype.is_complex:
            real = torch.randn(p.shape, generator=g, dtype=p.real.dtype)
            grad = torch.complex(real, torch.randn(p.shape, generator=g, dtype=p.real.dtype))
        else:
            grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if step == 2 and i == 1:
            grad = None
        elif step == 3 and i == 0:
            grad = torch.zeros_like(p)
        out.append(grad)
    return out


def assert_close(actual, expected, dtype, msg=""):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: {m}")


def assert_state_dicts_match(sd_actual: dict, sd_expected: dict, dtype) -> None:
    """Same param ids, same keys in the same order, same dtypes/devices/shapes and values."""
    assert list(sd_actual["state"].keys()) == list(sd_expected["state"].keys())
    for pid, expected in sd_expected["state"].items():
        actual = sd_actual["state"][pid]
        assert list(actual.keys()) == list(expected.keys()), (pid, list(actual), list(expected))
        for key, e in expected.items():
            a = actual[key]
            if isinstance(e, torch.Tensor):
                assert a.dtype == e.dtype and a.device == e.device and a.shape == e.shape, (pid, key, a, e)
                assert_close(a, e, dtype, f"state[{pid}][{key!r}]")
            else:
                assert a == e, (pid, key)
    assert sd_actual["param_groups"] == sd_expected["param_groups"]


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal`` that also compares sparse (COO) tensors."""
    if a.is_sparse or b.is_sparse:
        return a.is_sparse == b.is_sparse and torch.equal(a.to_dense(), b.to_dense())
    return torch.equal(a, b)


def result_or_error(fn: Callable):
    """``(fn(), None)``, or ``(None, (type, message))`` of the exception ``fn()`` raised: for the
    tests where compat must fail exactly where, and as, torch.optim fails."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - any exception is an outcome to compare
        return None, (type(e), str(e))


def same_value(a, b) -> bool:
    """Equal values of a state dict: tensors bitwise with dtype and shape, containers recursively."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.detach(), b.detach()))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def run_compat_parity(torch_cls, compat_cls, kwargs: dict, dtype: torch.dtype, steps: int = 6,
                      two_groups: bool = True, swap_at: int | None = None,
                      grad_fn: Callable = grads_for_step) -> None:
    """Step ``torch_cls`` and ``compat_cls`` on the same grads; compare params and state dicts.

    With ``swap_at``, both optimizers' state dicts are cross-loaded (torch -> compat and
    compat -> torch) after that step, and the runs continue. ``grad_fn(params, step)`` makes
    each step's grads (e.g. sparse ones).
    """
    params = make_params(dtype)
    ref = [p.clone().requires_grad_() for p in params]
    ours = [p.clone().requires_grad_() for p in params]

    def groups(ps):
        if not two_groups:
            return ps
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5 * kwargs.get("lr", 1e-2)}]

    opt_ref = torch_cls(groups(ref), **kwargs)
    opt_ours = compat_cls(groups(ours), **kwargs)
    for step in range(steps):
        for r, o, g in zip(ref, ours, grad_fn(params, step)):
            r.grad = None if g is None else g.clone()
            o.grad = None if g is None else g.clone()
        opt_ref.step()
        opt_ours.step()
        for i, (r, o) in enumerate(zip(ref, ours)):
            assert_close(o.detach(), r.detach(), dtype, f"param {i} after step {step}")
        assert_state_dicts_match(opt_ours.state_dict(), opt_ref.state_dict(), dtype)
        if swap_at is not None and step == swap_at:
            sd_ref = copy.deepcopy(opt_ref.state_dict())
            sd_ours = copy.deepcopy(opt_ours.state_dict())
            opt_ours = compat_cls(groups(ours), **kwargs)
            opt_ours.load_state_dict(sd_ref)
            opt_ref = torch_cls(groups(ref), **kwargs)
            opt_ref.load_state_dict(sd_ours)


def run_functional_parity(torch_cls, make_transform: Callable[[], fo.GradientTransformation], kwargs: dict,
                          dtype: torch.dtype, steps: int = 6, state_to_torch_keys=None,
                          grad_fn: Callable = grads_for_step) -> None:
    """Step ``torch_cls`` and the functional optimizer on dict params; compare params and state."""
    params = make_params(dtype)
    names = [f"p{i}" for i in range(len(params))]
    ref = [p.clone().requires_grad_() for p in params]
    opt_ref = torch_cls(ref, **kwargs)
    tx = make_transform()
    tree = {n: p.clone() for n, p in zip(names, params)}
    state = tx.init(tree)
    for step in range(steps):
        grads = grad_fn(params, step)
        for r, g in zip(ref, grads):
            r.grad = None if g is None else g.clone()
        opt_ref.step()
        g_tree = {n: g for n, g in zip(names, grads)}
        before = {n: t.clone() for n, t in tree.items()}
        g_before = {n: None if g is None else g.clone() for n, g in g_tree.items()}
        updates, new_state = tx.update(g_tree, state, tree)
        for n in names:  # purity: inputs untouched
            assert torch.equal(tree[n], before[n])
            if g_before[n] is not None:
                assert _equal(g_tree[n], g_before[n])
        tree = fo.apply_updates(tree, updates)
        state = new_state
        for i, (n, r) in enumerate(zip(names, ref)):
            assert_close(tree[n], r.detach(), dtype, f"param {n} after step {step}")
            torch_state = opt_ref.state[r]
            for key, value in torch_state.items():
                ours = getattr(state, key)[n]
                if key == "step":
                    assert float(ours) == float(value), (n, step, ours, value)
                    continue
                assert ours is not None, (n, key)
                if isinstance(value, torch.Tensor):
                    assert ours.shape == value.shape and ours.dtype == value.dtype, (n, key)
                    assert_close(ours, value, dtype, f"state {key} of {n} after step {step}")


def check_functional_round_trip(ref, ours, ref_ps: list, ours_ps: list, grads_for: Callable, switch_at: int = 2,
                                steps: int = 4) -> None:
    """compat -> functional -> compat mid-run against torch: ``ours`` (a compat optimizer) and ``ref``
    (its torch twin) take ``switch_at`` steps on ``grads_for(params, step)``; then ``ours`` continues
    as ``to_functional``'s transformation while ``ref`` steps on, the params must equal torch's
    (float64), and ``load_functional`` must give torch's ``state_dict``."""
    names = [f"p{i}" for i in range(len(ours_ps))]
    for step in range(switch_at):
        for opt, ps in ((ref, ref_ps), (ours, ours_ps)):
            for p, g in zip(ps, grads_for(ps, step)):
                p.grad = g
            opt.step()
    tx, state = ours.to_functional(dict(zip(names, ours_ps)))
    tree = {n: p.detach().clone() for n, p in zip(names, ours_ps)}
    for step in range(switch_at, steps):
        grads = grads_for(ref_ps, step)
        for p, g in zip(ref_ps, grads):
            p.grad = g
        ref.step()
        updates, state = tx.update(dict(zip(names, grads)), state, tree)
        tree = fo.apply_updates(tree, updates)
    for n, r in zip(names, ref_ps):
        assert_close(tree[n], r.detach(), torch.float64, n)
    with torch.no_grad():
        for p, n in zip(ours_ps, names):
            p.copy_(tree[n])
    ours.load_functional(dict(zip(names, ours_ps)), state)
    assert_state_dicts_match(ours.state_dict(), ref.state_dict(), torch.float64)


def grad_sequence(shapes, steps: int, dtype, none_at=(), zero_at=()) -> list:
    """``steps`` lists of random grads of ``shapes`` (the global generator: seed it first); the grad
    of parameter ``i`` at step ``k`` is ``None`` for ``(k, i)`` in ``none_at``, zeros in ``zero_at``."""
    out = []
    for k in range(steps):
        gs = [torch.randn(s, dtype=dtype) for s in shapes]
        for i in range(len(gs)):
            if (k, i) in none_at:
                gs[i] = None
            elif (k, i) in zero_at:
                gs[i] = torch.zeros_like(gs[i])
        out.append(gs)
    return out


def signature_shape(fn) -> list[tuple]:
    """(name, kind, default) of every parameter: a signature compared without annotations."""
    import inspect

    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def compare_on_cuda(torch_cls, compat_cls, kwargs: dict, second_group_lr: float, steps: int = 4) -> None:
    """Step both optimizers on CUDA copies of :func:`make_params` (two param groups, the second with
    ``second_group_lr``) and compare params (float32 tolerance) and state dicts."""

    def run(cls):
        params = [p.cuda().requires_grad_() for p in make_params(torch.float32)]
        opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": second_group_lr}], **kwargs)
        for step in range(steps):
            for p, g in zip(params, grads_for_step(make_params(torch.float32), step)):
                p.grad = None if g is None else g.cuda()
            opt.step()
        return params, opt.state_dict()

    ref_params, ref_sd = run(torch_cls)
    params, sd = run(compat_cls)
    for p, r in zip(params, ref_params):
        assert_close(p.detach(), r.detach(), torch.float32, "cuda param")
    assert_state_dicts_match(sd, ref_sd, torch.float32)

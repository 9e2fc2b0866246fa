"""Step-by-step parity against a reference optimizer package (``pytorch_optimizer`` ...).

The reference, a compat class and a functional transformation get the same parameters and the
same gradients (``_parity.grads_for_step``: a ``None`` grad at step 2, a zero grad at step 3);
parameters are compared after every step. The reference mutates ``.grad`` in place (weight
decay, maximize), so each optimizer gets its own copy.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch

import functional_optim as fo
from _parity import assert_close, grads_for_step, make_params


def _groups(params, second: Optional[dict]):
    if second is None:
        return params
    return [{"params": params[:2]}, {"params": params[2:], **second}]


def run_reference_parity(ref_cls, compat_cls, kwargs: dict, dtype: torch.dtype, steps: int = 5,
                         second_group: Optional[dict] = None, make_tx: Optional[Callable] = None,
                         lr_schedule: Optional[Callable[[int], float]] = None, skip_0d: bool = False) -> None:
    """``ref_cls(**kwargs)`` vs ``compat_cls(**kwargs)`` (and ``make_tx()`` run functionally, one
    group only) on the same gradients; params equal after each step within ``_parity.TOL``.
    ``skip_0d`` leaves the 0-d parameter out (for a reference that cannot step one)."""
    base = make_params(dtype)
    if skip_0d:
        base = [p for p in base if p.dim() > 0]
    ref_p = [p.clone().requires_grad_() for p in base]
    our_p = [p.clone().requires_grad_() for p in base]
    ref = ref_cls(_groups(ref_p, second_group), **kwargs)
    ours = compat_cls(_groups(our_p, second_group), **kwargs)
    tx = make_tx() if make_tx is not None else None
    f_params = [p.clone() for p in base]
    f_state = tx.init(f_params) if tx is not None else None
    for step in range(1, steps + 1):
        if lr_schedule is not None:
            for opt in (ref, ours):
                for group in opt.param_groups:
                    group["lr"] = lr_schedule(step)
        grads = grads_for_step(base, step)
        for ps in (ref_p, our_p):
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.clone()
        ref.step()
        ours.step()
        for i, (a, b) in enumerate(zip(our_p, ref_p)):
            assert_close(a.detach(), b.detach(), dtype, f"compat, step {step}, param {i}")
        if tx is not None:
            hp = None
            if lr_schedule is not None:
                hp = fo.replace_hparams(tx.hparams, lr=lr_schedule(step))
            updates, f_state = tx.update([None if g is None else g.clone() for g in grads], f_state, f_params, hp)
            f_params = fo.apply_updates(f_params, updates)
            for i, (a, b) in enumerate(zip(f_params, ref_p)):
                assert_close(a, b.detach(), dtype, f"functional, step {step}, param {i}")


def small_tree(seed: int = 0, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 2, generator=g, dtype=dtype), "b": torch.randn(2, generator=g, dtype=dtype),
            "s": torch.randn((), generator=g, dtype=dtype)}


def check_compiled_no_recompile(tx, hparam_values: list[dict], steps: int = 4) -> None:
    """``tx.update`` under ``torch.compile(fullgraph=True)`` with tensor hparams that change every
    step: one graph, and the same results as eager."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    params = [torch.randn(3, 2), torch.randn(2), torch.randn(())]

    def step(params, grads, state, hp):
        updates, state = tx.update(grads, state, params, hp)
        return fo.apply_updates(params, updates), state

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    p_c = p_e = params
    s_c = s_e = tx.init(params)
    for i in range(steps):
        grads = [torch.randn(3, 2), torch.randn(2), torch.randn(())]
        values = {k: torch.tensor(v) for k, v in hparam_values[i % len(hparam_values)].items()}
        hp = fo.replace_hparams(tx.hparams, values)
        p_c, s_c = compiled(p_c, grads, s_c, hp)
        p_e, s_e = step(p_e, grads, s_e, hp)
        for a, b in zip(p_c, p_e):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1, counter.frame_count
    torch._dynamo.reset()


def check_vmap(tx, n: int = 3, steps: int = 3) -> None:
    """One state over ``n`` stacked trees under ``torch.func.vmap`` == ``n`` separate runs."""
    from torch.func import vmap

    stacked = {k: torch.stack([small_tree(i, torch.float64)[k] for i in range(n)]) for k in ("w", "b", "s")}

    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    ens_p, ens_s = stacked, vmap(tx.init)(stacked)
    singles = [{k: v[i] for k, v in stacked.items()} for i in range(n)]
    singles = [(p, tx.init(p)) for p in singles]
    for t in range(steps):
        grads = {k: torch.randn(v.shape, dtype=v.dtype, generator=torch.Generator().manual_seed(t)) for k, v in
                 stacked.items()}
        ens_p, ens_s = vmap(step)(ens_p, grads, ens_s)
        singles = [step(p, {k: grads[k][i] for k in grads}, s) for i, (p, s) in enumerate(singles)]
    for i, (p, _) in enumerate(singles):
        for k in p:
            torch.testing.assert_close(ens_p[k][i], p[k], rtol=1e-12, atol=1e-14)


def check_none_grads_and_purity(tx) -> None:
    """A ``None`` grad leaf: update ``None``, its state leaves unchanged; inputs never mutated,
    and the new state holds none of them (a gradient changed in place later must not change it)."""
    params = small_tree(1)
    state = tx.init(params)
    grads = {k: torch.randn(v.shape) for k, v in params.items()}
    _, state = tx.update(grads, state, params)
    grads = {"w": torch.randn(3, 2), "b": None, "s": torch.randn(())}
    before = [x.clone() if isinstance(x, torch.Tensor) else x for x in fo.tree.flatten(state)[0]]
    p_before = {k: v.clone() for k, v in params.items()}
    g_before = {k: None if v is None else v.clone() for k, v in grads.items()}
    updates, new_state = tx.update(grads, state, params)
    assert updates["b"] is None and updates["w"] is not None
    for a, b in zip(fo.tree.flatten(state)[0], before):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)  # the old state is not mutated
    for k in params:
        assert torch.equal(params[k], p_before[k])
        if grads[k] is not None:
            assert torch.equal(grads[k], g_before[k])
    old_leaves = fo.tree.leaf_paths(state)
    inputs = {t.untyped_storage().data_ptr() for t in [*params.values(), *grads.values()] if t is not None}
    for path, old, new in zip(old_leaves, fo.tree.flatten(state)[0], fo.tree.flatten(new_state)[0]):
        if "['b']" in path and isinstance(old, torch.Tensor):
            assert torch.equal(old, new), path
        if isinstance(new, torch.Tensor):
            assert new.untyped_storage().data_ptr() not in inputs, f"the new state at {path} holds an input"


def check_state_dict_cross_load(ref_cls, compat_cls, kwargs: dict, dtype=torch.float64, steps: int = 3) -> None:
    """Checkpoints in the reference's layout, both ways: ``compat.state_dict()`` has the
    reference's keys and ``step``; each loads the other's and both continue identically.
    The last parameter gets no gradient in the first two steps (the reference has no state for it)."""
    base = make_params(dtype)

    def grads(step):
        out = grads_for_step(base, step)
        if step <= 2:
            out[-1] = None
        return out

    def feed(ps, step):
        for p, g in zip(ps, grads(step)):
            p.grad = None if g is None else g.clone()

    ref_p = [p.clone().requires_grad_() for p in base]
    our_p = [p.clone().requires_grad_() for p in base]
    ref, ours = ref_cls(ref_p, **kwargs), compat_cls(our_p, **kwargs)
    for step in range(1, steps + 1):
        feed(ref_p, step), feed(our_p, step)
        ref.step(), ours.step()
    sd_ref, sd_ours = ref.state_dict(), ours.state_dict()
    assert sd_ours["param_groups"][0]["step"] == sd_ref["param_groups"][0]["step"] == steps
    assert set(sd_ref["state"]) <= set(sd_ours["state"])
    for pid, expected in sd_ref["state"].items():
        assert set(sd_ours["state"][pid]) == set(expected), (pid, sorted(sd_ours["state"][pid]), sorted(expected))
        for key, value in expected.items():
            assert_close(sd_ours["state"][pid][key], value, dtype, f"state[{pid}][{key}]")
    ours_from_ref_p = [p.detach().clone().requires_grad_() for p in ref_p]
    ref_from_ours_p = [p.detach().clone().requires_grad_() for p in our_p]
    ours_from_ref, ref_from_ours = compat_cls(ours_from_ref_p, **kwargs), ref_cls(ref_from_ours_p, **kwargs)
    # deep copies: a live optimizer's state_dict holds its own tensors (a checkpoint file would not)
    ours_from_ref.load_state_dict(copy.deepcopy(sd_ref))
    ref_from_ours.load_state_dict(copy.deepcopy(sd_ours))
    runs = [(ref, ref_p), (ours, our_p), (ours_from_ref, ours_from_ref_p), (ref_from_ours, ref_from_ours_p)]
    for step in range(steps + 1, 2 * steps + 1):
        for opt, ps in runs:
            feed(ps, step)
            opt.step()
        for opt, ps in runs[1:]:
            for i, (a, b) in enumerate(zip(ps, ref_p)):
                assert_close(a.detach(), b.detach(), dtype, f"{type(opt).__module__}, step {step}, param {i}")


def check_group_without_grads_counts_the_step(ref_cls, compat_cls, kwargs: dict, dtype=torch.float64) -> None:
    """A param group whose parameters have no gradient at a step still advances the step count
    (pytorch_optimizer's ``group["step"] += 1``), also before its first gradient."""
    base = make_params(dtype)
    ref_p = [p.clone().requires_grad_() for p in base]
    our_p = [p.clone().requires_grad_() for p in base]
    ref, ours = ref_cls(_groups(ref_p, {}), **kwargs), compat_cls(_groups(our_p, {}), **kwargs)
    for step in range(1, 6):
        grads = grads_for_step(base, step)
        if step in (1, 3):
            grads[2:] = [None, None]  # the second group has no gradient
        for ps in (ref_p, our_p):
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.clone()
        ref.step()
        ours.step()
        for i, (a, b) in enumerate(zip(our_p, ref_p)):
            assert_close(a.detach(), b.detach(), dtype, f"step {step}, param {i}")
    assert [g["step"] for g in ours.state_dict()["param_groups"]] == [g["step"] for g in ref.param_groups]


def check_hypergradient(tx, steps: int = 3) -> None:
    """d(loss after ``steps`` updates)/d(lr) through the unrolled updates passes gradcheck (float64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, generator=g, dtype=torch.float64)

    def loss_after(lr):
        params = [torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64) + 0 * lr]
        state = tx.init(params)
        hp = fo.replace_hparams(tx.hparams, lr=lr)
        for _ in range(steps):
            loss = ((x @ params[0] - y) ** 2).mean()
            grads = list(torch.autograd.grad(loss, params, create_graph=True))
            updates, state = tx.update(grads, state, params, hp)
            params = fo.apply_updates(params, updates)
        return ((x @ params[0] - y) ** 2).mean()

    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss_after, (lr,), eps=1e-6, atol=1e-6)

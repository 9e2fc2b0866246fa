"""Lion: scale_by_lion / fo.lion / compat.Lion against lion_pytorch.Lion; compile, vmap, purity, None grads."""

import pytest
import torch

import functional_optim as fo
from _parity import grad_sequence
from functional_optim.lion import ScaleByLionHParams, ScaleByLionState, lion, scale_by_lion
from compat.lion import Lion

lion_pytorch = pytest.importorskip("lion_pytorch")


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)


SHAPES = [(3, 4), (5,), ()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kw", [dict(), dict(lr=3e-2, betas=(0.8, 0.95), weight_decay=0.5),
                                dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)])
def test_compat_and_functional_match_lion_pytorch(dtype, kw):
    init = [torch.randn(s, dtype=dtype) for s in SHAPES]
    grads = grad_sequence(SHAPES, 6, dtype, none_at={(1, 0), (2, 2)}, zero_at={(3, 1)})
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    ref = lion_pytorch.Lion(ref_p, **kw)
    ours = Lion(our_p, **kw)
    fkw = {k: v for k, v in kw.items() if k != "decoupled_weight_decay"}
    if kw.get("decoupled_weight_decay"):
        fkw["weight_decay"] = kw["weight_decay"] / kw["lr"]
    tx = lion(**fkw)
    params = [p.clone() for p in init]
    state = tx.init(params)
    for gs in grads:
        for p, q, g in zip(ref_p, our_p, gs):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        ref.step()
        ours.step()
        updates, state = tx.update(gs, state, params)
        params = fo.apply_updates(params, updates)
        for a, b, c in zip(ref_p, our_p, params):
            torch.testing.assert_close(b.detach(), a.detach(), **_tol(dtype))
            torch.testing.assert_close(c, a.detach(), **_tol(dtype))
    for a, b in zip(ref_p, our_p):
        torch.testing.assert_close(ours.state[b]["0.mu"], ref.state[a]["exp_avg"], **_tol(dtype))


def test_two_param_groups_and_scheduler():
    init = [torch.randn(4, 3, dtype=torch.float64) for _ in range(2)]
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    groups = lambda ps: [dict(params=[ps[0]]), dict(params=[ps[1]], lr=1e-2, weight_decay=0.3, betas=(0.5, 0.9))]
    ref = lion_pytorch.Lion(groups(ref_p), lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True)
    ours = Lion(groups(our_p), lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True)
    s_ref = torch.optim.lr_scheduler.StepLR(ref, 1, 0.5)
    s_our = torch.optim.lr_scheduler.StepLR(ours, 1, 0.5)
    for _ in range(4):
        for p, q in zip(ref_p, our_p):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ref.step(), ours.step(), s_ref.step(), s_our.step()
        for a, b in zip(ref_p, our_p):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_defaults_signature_and_errors():
    import inspect

    ref_sig = inspect.signature(lion_pytorch.Lion.__init__)
    our_sig = inspect.signature(Lion.__init__)
    assert {k: v.default for k, v in ref_sig.parameters.items()} == {k: v.default for k, v in our_sig.parameters.items()}
    p = [torch.zeros(2, requires_grad=True)]
    assert Lion(p).param_groups[0]["betas"] == (0.9, 0.99)
    with pytest.raises(ValueError):
        Lion(p, lr=0.0)
    with pytest.raises(ValueError):
        Lion(p, betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="0"):
        scale_by_lion(b1=0.5).update([torch.ones(2)], ScaleByLionState([torch.zeros(3)]))


def test_pure_none_grads_keep_state():
    tx = scale_by_lion()
    params = {"a": torch.randn(3), "b": torch.randn(2)}
    state = tx.init(params)
    state = ScaleByLionState({"a": torch.randn(3), "b": torch.randn(2)})
    before = {k: v.clone() for k, v in state.mu.items()}
    grads = {"a": torch.randn(3), "b": None}
    g_before = grads["a"].clone()
    u, new = tx.update(grads, state, params)
    assert u["b"] is None and new.mu["b"] is state.mu["b"]
    torch.testing.assert_close(state.mu["a"], before["a"])  # not mutated
    torch.testing.assert_close(grads["a"], g_before)
    torch.testing.assert_close(u["a"], torch.sgn(0.9 * before["a"] + 0.1 * g_before))


def test_compile_fullgraph_no_recompile_and_vmap():
    from torch._dynamo.testing import CompileCounter

    tx = lion(lr=1e-2, weight_decay=0.1)
    params = [torch.randn(4, 3), torch.randn(3)]

    def step(params, grads, state, lr, b1, b2, wd):
        hp = (ScaleByLionHParams((b1, b2)), tx.hparams[1]._replace(weight_decay=wd), tx.hparams[2]._replace(lr=lr))
        updates, state = tx.update(grads, state, params, hp)
        return fo.apply_updates(params, updates), state

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    s_c = s_e = tx.init(params)
    p_c = p_e = params
    for i in range(3):
        grads = [torch.randn(4, 3), torch.randn(3)]
        args = [torch.tensor(v) for v in (0.01 * (i + 1), 0.9 - 0.1 * i, 0.99 - 0.01 * i, 0.1 * i)]
        p_c, s_c = compiled(p_c, grads, s_c, *args)
        p_e, s_e = step(p_e, grads, s_e, *args)
        for a, b in zip(p_c, p_e):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1

    # vmap over a batch of independent problems
    B = 3
    pb = torch.randn(B, 5)
    gb = torch.randn(B, 5)

    def one(p, g):
        st = tx.init(p)
        u, st = tx.update(g, st, p)
        return fo.apply_updates(p, u), st[0].mu

    out, mu = torch.func.vmap(one)(pb, gb)
    for b in range(B):
        exp, st = one(pb[b], gb[b])
        torch.testing.assert_close(out[b], exp)
        torch.testing.assert_close(mu[b], st)


def test_state_dict_cross_loads_with_lion_pytorch():
    import copy

    init = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    ref, ours = lion_pytorch.Lion(ref_p, lr=1e-2, weight_decay=0.1), Lion(our_p, lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        for p, q in zip(ref_p, our_p):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ref.step(), ours.step()
    assert set(ours.state_dict()["state"][0]) == {"exp_avg"}
    ours_from_ref = Lion([p.detach().clone().requires_grad_() for p in ref_p], lr=1e-2, weight_decay=0.1)
    ours_from_ref.load_state_dict(copy.deepcopy(ref.state_dict()))
    ref_from_ours = lion_pytorch.Lion([p.detach().clone().requires_grad_() for p in our_p], lr=1e-2, weight_decay=0.1)
    ref_from_ours.load_state_dict(copy.deepcopy(ours.state_dict()))
    g = [torch.randn_like(p) for p in init]
    for opt in (ref, ours, ours_from_ref, ref_from_ours):
        for p, gg in zip(opt.param_groups[0]["params"], g):
            p.grad = gg.clone()
        opt.step()
    for opt in (ours, ours_from_ref, ref_from_ours):
        for a, b in zip(ref.param_groups[0]["params"], opt.param_groups[0]["params"]):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_mu_dtype_bfloat16_state():
    tx = scale_by_lion(mu_dtype=torch.bfloat16)
    full = scale_by_lion()
    params = {"w": torch.randn(8, 4), "b": torch.randn(4)}
    s_lo, s_hi = tx.init(params), full.init(params)
    assert all(m.dtype == torch.bfloat16 for m in s_lo.mu.values())
    for _ in range(3):
        g = {"w": torch.randn(8, 4), "b": None}
        u_lo, s_lo = tx.update(g, s_lo, params)
        u_hi, s_hi = full.update(g, s_hi, params)
        assert u_lo["w"].dtype == torch.float32 and u_lo["b"] is None
        torch.testing.assert_close(s_lo.mu["w"].float(), s_hi.mu["w"], rtol=2e-2, atol=2e-2)
    assert s_lo.mu["w"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bfloat16"):
        tx.update(g, full.init(params), params)


def test_lion_mask_limits_weight_decay():
    tx = lion(lr=0.1, weight_decay=0.5, mask={"w": True, "b": False})
    ref = lion(lr=0.1, weight_decay=0.0)
    params = {"w": torch.randn(3), "b": torch.randn(2)}
    g = {"w": torch.randn(3), "b": torch.randn(2)}
    u, _ = tx.update(g, tx.init(params), params)
    u0, _ = ref.update(g, ref.init(params), params)
    torch.testing.assert_close(u["b"], u0["b"])
    torch.testing.assert_close(u["w"], u0["w"] - 0.1 * 0.5 * params["w"])

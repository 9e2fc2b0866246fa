"""Prodigy: fo.prodigy / compat.Prodigy against prodigyopt.Prodigy; compile, vmap, purity, None/zero grads."""

import copy
import inspect
import math

import pytest
import torch

import functional_optim as fo
from _parity import grad_sequence
from functional_optim.prodigy import ProdigyHParams, ProdigyState, prodigy
from compat.prodigy import Prodigy

prodigyopt = pytest.importorskip("prodigyopt")

SHAPES = [(3, 4), (5,), ()]


def _tol(dtype):
    return dict(rtol=1e-11, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-7)


def _grads(steps, dtype, none_at=(), zero_at=()):
    return grad_sequence(SHAPES, steps, dtype, none_at, zero_at)


CASES = [
    dict(),
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, decouple=False),
    dict(use_bias_correction=True, safeguard_warmup=True, d_coef=2.0),
    dict(betas=(0.0, 0.99), beta3=0.9, eps=1e-6, growth_rate=1.5, d0=1e-3),
    dict(lr=0.5, slice_p=2, weight_decay=0.01, use_bias_correction=True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kw", CASES)
def test_matches_prodigyopt(kw, dtype):
    init = [torch.randn(s, dtype=dtype) for s in SHAPES]
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    ref, ours = prodigyopt.Prodigy(ref_p, **kw), Prodigy(our_p, **kw)
    tx = prodigy(**kw)
    params = [p.clone() for p in init]
    state = tx.init(params)
    for gs in _grads(6, dtype, none_at={(1, 0), (3, 2)}, zero_at={(2, 1)}):
        for p, q, g in zip(ref_p, our_p, gs):
            p.grad = None if g is None else g.clone()  # the reference adds coupled decay into p.grad
            q.grad = None if g is None else g.clone()
        ref.step(), ours.step()
        before = [None if g is None else g.clone() for g in gs]
        updates, state = tx.update(gs, state, params)
        assert all(g is None or torch.equal(g, b) for g, b in zip(gs, before))
        params = fo.apply_updates(params, updates)
        for a, b, c in zip(ref_p, our_p, params):
            torch.testing.assert_close(b.detach(), a.detach(), **_tol(dtype))
            torch.testing.assert_close(c, a.detach(), **_tol(dtype))
        g0 = ref.param_groups[0]
        for key in ("d", "d_max", "d_numerator", "k"):
            assert ours.param_groups[0][key] == pytest.approx(g0[key], rel=1e-10 if dtype == torch.float64 else 1e-4)
        assert float(state.d) == pytest.approx(g0["d"], rel=1e-10 if dtype == torch.float64 else 1e-4)
        assert int(state.count) == g0["k"]
    for a, b in zip(ref_p, our_p):
        for key in ref.state[a]:
            if isinstance(ref.state[a][key], torch.Tensor):
                torch.testing.assert_close(ours.state[b][key], ref.state[a][key], **_tol(dtype))
            else:
                assert ours.state[b][key] == ref.state[a][key]


def test_zero_grads_skip_like_reference():
    """All-zero gradients: sum |s| == 0, the reference returns early; so do we (no move, d kept)."""
    init = [torch.randn(3, dtype=torch.float64)]
    ref_p, our_p = [init[0].clone().requires_grad_()], [init[0].clone().requires_grad_()]
    ref, ours = prodigyopt.Prodigy(ref_p, weight_decay=0.1), Prodigy(our_p, weight_decay=0.1)
    tx = prodigy(weight_decay=0.1)
    params, state = [init[0].clone()], tx.init([init[0]])
    for g in [torch.zeros(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]:
        ref_p[0].grad, our_p[0].grad = g.clone(), g.clone()
        ref.step(), ours.step()
        u, state = tx.update([g], state, params)
        params = fo.apply_updates(params, u)
        torch.testing.assert_close(our_p[0].detach(), ref_p[0].detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(params[0], ref_p[0].detach(), rtol=1e-12, atol=1e-14)
        assert ours.param_groups[0]["k"] == ref.param_groups[0]["k"] == int(state.count)


def test_two_param_groups_share_one_estimate():
    init = [torch.randn(4, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64), torch.randn(2, dtype=torch.float64)]
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    groups = lambda ps: [dict(params=[ps[0]]), dict(params=[ps[1]], weight_decay=0.2, eps=1e-4, safeguard_warmup=True,
                                                    slice_p=3), dict(params=[ps[2]], lr=0.0)]
    ref = prodigyopt.Prodigy(groups(ref_p), weight_decay=0.05)
    ours = Prodigy(groups(our_p), weight_decay=0.05)
    for _ in range(5):
        for p, q in zip(ref_p, our_p):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ref.step(), ours.step()
        for a, b in zip(ref_p, our_p):
            torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-13)
        assert ours.param_groups[1]["d"] == pytest.approx(ref.param_groups[1]["d"], rel=1e-11)
    ours.param_groups[1]["lr"] = 0.5
    with pytest.raises(RuntimeError, match="different lr"):
        ours.step()
    # state_dict: the reference's keys; a reference checkpoint loads into ours and continues the same
    ours2 = Prodigy(groups([p.detach().clone().requires_grad_() for p in ref_p]), weight_decay=0.05)
    ours2.load_state_dict(copy.deepcopy(ref.state_dict()))  # torch shares same-dtype tensors
    g = [torch.randn_like(p) for p in ref_p]
    for p, gg in zip(ref_p, g):
        p.grad = gg.clone()
    for grp, gg in zip(ours2.param_groups, g):
        grp["params"][0].grad = gg.clone()
    ref.step(), ours2.step()
    for a, grp in zip(ref_p, ours2.param_groups):
        torch.testing.assert_close(grp["params"][0], a, rtol=1e-11, atol=1e-13)


def test_signature_and_errors():
    r, o = inspect.signature(prodigyopt.Prodigy.__init__), inspect.signature(Prodigy.__init__)
    ref_defaults = {k: v.default for k, v in r.parameters.items()}
    our_defaults = {k: v.default for k, v in o.parameters.items()}
    assert ref_defaults.keys() == our_defaults.keys()
    assert all(ref_defaults[k] == our_defaults[k] or (k == "growth_rate" and math.isinf(our_defaults[k]))
               for k in ref_defaults)
    p = [torch.zeros(2, requires_grad=True)]
    for bad in [dict(d0=0.0), dict(lr=0.0), dict(eps=0.0), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1))]:
        with pytest.raises(ValueError) as e1:
            Prodigy(p, **bad)
        with pytest.raises(ValueError) as e2:
            prodigyopt.Prodigy(p, **bad)
        assert str(e1.value) == str(e2.value)
        with pytest.raises(ValueError):
            prodigy(**bad)


def test_none_grads_purity_and_state_checks():
    tx = prodigy()
    params = {"a": torch.randn(3), "b": torch.randn(2)}
    state = tx.init(params)
    u, new = tx.update({"a": torch.randn(3), "b": None}, state, params)
    assert u["b"] is None and new.exp_avg["b"] is state.exp_avg["b"] and new.s["b"] is state.s["b"]
    assert float(state.d) == 1e-6 and int(state.count) == 0  # the input state is not changed
    with pytest.raises(ValueError, match=r"state.s at \[.b.\]"):
        tx.update({"a": torch.randn(3), "b": torch.randn(2)}, state._replace(s={"a": state.s["a"], "b": torch.zeros(5)}),
                  params)
    with pytest.raises(TypeError):
        tx.update({"a": torch.randn(3), "b": None}, fo.sgd(lr=0.1).init(params), params)


def test_compile_fullgraph_no_recompile_and_vmap():
    from torch._dynamo.testing import CompileCounter

    tx = prodigy(weight_decay=0.1, use_bias_correction=True)
    params = [torch.randn(4, 3), torch.randn(3)]

    def step(params, grads, state, lr, b1, b2, b3, eps, wd, d0, d_coef, growth):
        hp = ProdigyHParams(lr, (b1, b2), b3, eps, wd, d0, d_coef, growth)
        updates, state = tx.update(grads, state, params, hp)
        return fo.apply_updates(params, updates), state

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    s_c = s_e = tx.init(params)
    p_c = p_e = params
    for i in range(3):
        grads = [torch.randn(4, 3), torch.randn(3)]
        args = [torch.tensor(v) for v in (1.0 - 0.1 * i, 0.9, 0.999 - 0.001 * i, 0.95, 1e-8, 0.1 * i, 1e-6, 1.0 + i,
                                          math.inf)]
        p_c, s_c = compiled(p_c, grads, s_c, *args)
        p_e, s_e = step(p_e, grads, s_e, *args)
        for a, b in zip(p_c, p_e):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(s_c.d, s_e.d)
    assert counter.frame_count == 1

    one_tx = prodigy()

    def one(p, g):
        st = one_tx.init(p)
        for _ in range(2):
            u, st = one_tx.update(g, st, p)
            p = fo.apply_updates(p, u)
        return p, st.d

    pb, gb = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    out, d = torch.func.vmap(one)(pb, gb)
    for b in range(3):
        e_out, e_d = one(pb[b], gb[b])
        torch.testing.assert_close(out[b], e_out)
        torch.testing.assert_close(d[b], e_d)


def test_state_loads_weights_only(tmp_path):
    state = prodigy(betas=(0.0, 0.99)).init({"w": torch.randn(2)})
    assert state.exp_avg is None
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert isinstance(loaded, ProdigyState) and torch.equal(loaded.p0["w"], state.p0["w"])


def test_lr_scheduler_drives_compat_like_reference():
    init = [torch.randn(4, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    ref, ours = prodigyopt.Prodigy(ref_p, weight_decay=0.01), Prodigy(our_p, weight_decay=0.01)
    s_ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=5)
    s_our = torch.optim.lr_scheduler.CosineAnnealingLR(ours, T_max=5)
    for _ in range(4):
        for p, q in zip(ref_p, our_p):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ref.step(), ours.step(), s_ref.step(), s_our.step()
        for a, b in zip(ref_p, our_p):
            torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-13)


def test_compiled_step_makes_state_eagerly_in_few_graphs():
    """``torch.compile(opt.step)``: the state of each parameter's first gradient is made outside
    the graph (one break), so the step compiles 4 graphs in all for a model of any size (traced,
    making the state compiled 11 for this model), and equals the eager steps."""
    from torch._dynamo.utils import counters

    def run(compiled: bool):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        widths = [3, 5, 4, 6, 2]
        model = torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:])])
        opt = Prodigy(model.parameters(), lr=1.0, weight_decay=0.01)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        x = torch.randn(16, 3)
        for _ in range(5):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            step()
        graphs = counters["stats"]["unique_graphs"]
        torch._dynamo.reset()
        return [p.detach().clone() for p in model.parameters()], graphs

    got, graphs = run(compiled=True)
    want, _ = run(compiled=False)
    assert graphs <= 4, graphs
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

"""Schedule-Free AdamW/SGD: the schedule_free wrapper, fo aliases, compat classes against the
``schedulefree`` package (train/eval switch included); compile, vmap, purity, None grads."""

import inspect

import pytest
import torch

import functional_optim as fo
from _parity import grad_sequence
from functional_optim.schedule_free import (
    ScheduleFreeAdamWHParams,
    ScheduleFreeSGDHParams,
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
    schedule_free_train_params,
)
from compat.schedule_free import AdamWScheduleFree, SGDScheduleFree

schedulefree = pytest.importorskip("schedulefree")

SHAPES = [(3, 4), (5,), ()]


def _tol(dtype):
    return dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)


def _grads(steps, dtype, none_at=(), zero_at=()):
    return grad_sequence(SHAPES, steps, dtype, none_at, zero_at)


CASES = [
    ("adamw", dict()),
    ("adamw", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, warmup_steps=3)),
    ("adamw", dict(lr=0.02, weight_decay=0.05, r=0.5, weight_lr_power=1.0, foreach=False)),
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.7, weight_decay=0.2, warmup_steps=2, r=1.0)),
]


def _classes(kind):
    if kind == "adamw":
        return schedulefree.AdamWScheduleFree, AdamWScheduleFree, schedule_free_adamw
    return schedulefree.SGDScheduleFree, SGDScheduleFree, schedule_free_sgd


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind,kw", CASES)
def test_matches_schedulefree_with_eval_switch(kind, kw, dtype):
    Ref, Ours, alias = _classes(kind)
    init = [torch.randn(s, dtype=dtype) for s in SHAPES]
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    ref, ours = Ref(ref_p, **kw), Ours(our_p, **kw)
    tx = alias(**{k: v for k, v in kw.items() if k != "foreach"})
    params = [p.clone() for p in init]
    state = tx.init(params)
    ref.train(), ours.train()
    for step, gs in enumerate(_grads(6, dtype, none_at={(0, 1), (2, 0)}, zero_at={(3, 2)})):
        for p, q, g in zip(ref_p, our_p, gs):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        ref.step(), ours.step()
        g_before = [None if g is None else g.clone() for g in gs]
        updates, state = tx.update(gs, state, params)
        for g, b in zip(gs, g_before):  # purity: the reference divides grads in place, we do not
            assert (g is None) or torch.equal(g, b)
        params = fo.apply_updates(params, updates)
        for a, b, c in zip(ref_p, our_p, params):
            torch.testing.assert_close(b.detach(), a.detach(), **_tol(dtype))
            torch.testing.assert_close(c, a.detach(), **_tol(dtype))
        if step in (2, 5):
            ref.eval(), ours.eval()
            x = schedule_free_eval_params(state, params)
            for a, b, c in zip(ref_p, our_p, x):
                torch.testing.assert_close(b.detach(), a.detach(), **_tol(dtype))
                torch.testing.assert_close(c, a.detach(), **_tol(dtype))
            y = schedule_free_train_params(state, x)
            for c, d in zip(y, params):
                torch.testing.assert_close(c, d, **_tol(dtype))
            ref.train(), ours.train()
            for a, b in zip(ref_p, our_p):
                torch.testing.assert_close(b.detach(), a.detach(), **_tol(dtype))
    for a, b in zip(ref_p, our_p):
        torch.testing.assert_close(ours.state[b]["z"], ref.state[a]["z"], **_tol(dtype))


def test_two_groups_and_step_in_eval_mode_raises():
    init = [torch.randn(4, 3, dtype=torch.float64) for _ in range(2)]
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    groups = lambda ps: [dict(params=[ps[0]]), dict(params=[ps[1]], lr=0.01, betas=(0.5, 0.9), warmup_steps=2)]
    ref = schedulefree.AdamWScheduleFree(groups(ref_p), lr=0.003, weight_decay=0.1)
    ours = AdamWScheduleFree(groups(our_p), lr=0.003, weight_decay=0.1)
    with pytest.raises(Exception, match="not in train mode"):
        ours.step()
    ref.train(), ours.train()
    for k in range(5):
        for i, (p, q) in enumerate(zip(ref_p, our_p)):
            g = None if (k, i) in {(0, 1), (2, 1), (3, 0)} else torch.randn_like(p)  # a group without grads still counts
            p.grad, q.grad = (None, None) if g is None else (g.clone(), g.clone())
        ref.step(), ours.step()
        for a, b in zip(ref_p, our_p):
            torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-12)
    ref.eval(), ours.eval()
    for a, b in zip(ref_p, our_p):
        torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-12)
    assert [g["train_mode"] for g in ours.param_groups] == [False, False]


def test_signatures_defaults_and_errors():
    for Ref, Ours in [(schedulefree.AdamWScheduleFree, AdamWScheduleFree),
                      (schedulefree.SGDScheduleFree, SGDScheduleFree)]:
        r, o = inspect.signature(Ref.__init__), inspect.signature(Ours.__init__)
        assert {k: v.default for k, v in r.parameters.items()} == {k: v.default for k, v in o.parameters.items()}
    p = [torch.zeros(2, requires_grad=True)]
    for bad in [dict(lr=-1.0), dict(weight_decay=-1.0), dict(momentum=0.0), dict(momentum=1.0)]:
        with pytest.raises(ValueError) as ours_err:
            SGDScheduleFree(p, **bad)
        with pytest.raises(ValueError) as ref_err:
            schedulefree.SGDScheduleFree(p, **bad)
        assert str(ours_err.value) == str(ref_err.value)


def test_none_grads_keep_state_and_wrapper_errors():
    tx = schedule_free_sgd(lr=0.1)
    params = {"a": torch.randn(3), "b": torch.randn(2)}
    state = tx.init(params)
    u, new = tx.update({"a": torch.randn(3), "b": None}, state, params)
    assert u["b"] is None and new.z["b"] is state.z["b"]
    assert int(new.count) == 1
    with pytest.raises(ValueError, match="z"):
        tx.update({"a": torch.randn(3), "b": torch.randn(2)}, state._replace(z={"a": torch.zeros(3), "b": torch.zeros(4)}),
                  params)
    with pytest.raises(TypeError):
        schedule_free_eval_params(fo.sgd(lr=0.1).init(params), params)


def test_generic_wrapper_matches_alias():
    """schedule_free around add_decayed_weights is schedule_free_sgd; its hparams are a pair."""
    tx1 = schedule_free(fo.add_decayed_weights(0.1), lr=0.2, b1=0.8)
    tx2 = schedule_free_sgd(lr=0.2, momentum=0.8, weight_decay=0.1)
    params = [torch.randn(3, dtype=torch.float64)]
    s1, s2 = tx1.init(params), tx2.init(params)
    p1 = p2 = params
    for _ in range(3):
        g = [torch.randn(3, dtype=torch.float64)]
        u1, s1 = tx1.update(g, s1, p1)
        u2, s2 = tx2.update(g, s2, p2)
        p1, p2 = fo.apply_updates(p1, u1), fo.apply_updates(p2, u2)
        assert torch.equal(p1[0], p2[0])
    assert isinstance(s1, ScheduleFreeState)


def test_compile_fullgraph_no_recompile_and_vmap():
    from torch._dynamo.testing import CompileCounter

    tx = schedule_free_adamw(lr=0.01, weight_decay=0.1, warmup_steps=2)
    params = [torch.randn(4, 3), torch.randn(3)]

    def step(params, grads, state, lr, b1, b2, eps, wd, warm, r, power):
        hp = ScheduleFreeAdamWHParams(lr, (b1, b2), eps, wd, warm, r, power)
        updates, state = tx.update(grads, state, params, hp)
        params = fo.apply_updates(params, updates)
        return params, state, schedule_free_eval_params(state, params)

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    s_c = s_e = tx.init(params)
    p_c = p_e = params
    for i in range(3):
        grads = [torch.randn(4, 3), torch.randn(3)]
        args = [torch.tensor(v) for v in (0.01 * (i + 1), 0.9 - 0.1 * i, 0.999, 1e-8 * (i + 1), 0.1 * i,
                                          float(2 + i), 0.5 * i, 2.0 - 0.5 * i)]
        p_c, s_c, x_c = compiled(p_c, grads, s_c, *args)
        p_e, s_e, x_e = step(p_e, grads, s_e, *args)
        for a, b in zip(p_c + x_c, p_e + x_e):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1

    sgd = schedule_free_sgd(lr=0.1, weight_decay=0.1)

    def one(p, g):
        st = sgd.init(p)
        for _ in range(2):
            u, st = sgd.update(g, st, p)
            p = fo.apply_updates(p, u)
        return p, schedule_free_eval_params(st, p)

    pb, gb = torch.randn(3, 5), torch.randn(3, 5)
    out, x = torch.func.vmap(one)(pb, gb)
    for b in range(3):
        e_out, e_x = one(pb[b], gb[b])
        torch.testing.assert_close(out[b], e_out)
        torch.testing.assert_close(x[b], e_x)
    # the same with the SGD hparams record passed at call time
    u, _ = sgd.update([torch.ones(2)], sgd.init([torch.zeros(2)]), [torch.zeros(2)],
                      ScheduleFreeSGDHParams(0.5, 0.9, 0.0, 0, 0.0, 2.0))
    torch.testing.assert_close(u[0], torch.full((2,), -0.5))


def test_state_dict_round_trip_and_weights_only_load(tmp_path):
    ps = [torch.randn(3, 2, dtype=torch.float64, requires_grad=True)]
    opt = AdamWScheduleFree(ps, lr=0.01, warmup_steps=2)
    opt.train()
    for _ in range(2):
        ps[0].grad = torch.randn(3, 2, dtype=torch.float64)
        opt.step()
    opt.eval()
    sd = opt.state_dict()
    qs = [ps[0].detach().clone().requires_grad_()]
    opt2 = AdamWScheduleFree(qs, lr=0.01, warmup_steps=2)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["train_mode"] is False
    opt.train(), opt2.train()
    g = torch.randn(3, 2, dtype=torch.float64)
    ps[0].grad, qs[0].grad = g.clone(), g.clone()
    opt.step(), opt2.step()
    assert torch.equal(ps[0], qs[0])

    tx = schedule_free_adamw()
    state = tx.init({"w": torch.randn(2)})
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert isinstance(loaded, ScheduleFreeState) and torch.equal(loaded.z["w"], state.z["w"])


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_checkpoints_cross_load_with_schedulefree(kind):
    import copy

    Ref, Ours, _ = _classes(kind)
    init = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64), torch.randn(2, dtype=torch.float64)]
    groups = lambda ps: [dict(params=ps[:2]), dict(params=ps[2:], lr=0.02)]
    ref_p = [p.clone().requires_grad_() for p in init]
    our_p = [p.clone().requires_grad_() for p in init]
    ref, ours = Ref(groups(ref_p), lr=0.01, warmup_steps=3), Ours(groups(our_p), lr=0.01, warmup_steps=3)
    ref.train(), ours.train()
    for k in range(2):
        for i, (p, q) in enumerate(zip(ref_p, our_p)):
            g = None if i == 1 else torch.randn_like(p)  # param 1 never gets a gradient: no state in the reference
            p.grad, q.grad = (None, None) if g is None else (g.clone(), g.clone())
        ref.step(), ours.step()
    ref.eval(), ours.eval()
    assert ours.state_dict()["param_groups"][0]["k"] == 2
    ours_from_ref = Ours(groups([p.detach().clone().requires_grad_() for p in ref_p]), lr=0.01, warmup_steps=3)
    ours_from_ref.load_state_dict(copy.deepcopy(ref.state_dict()))
    ref_from_ours = Ref(groups([p.detach().clone().requires_grad_() for p in our_p]), lr=0.01, warmup_steps=3)
    ref_from_ours.load_state_dict(copy.deepcopy(ours.state_dict()))
    g = [torch.randn_like(p) for p in init]
    opts = (ref, ours, ours_from_ref, ref_from_ours)
    for opt in opts:
        opt.train()
        for grp in opt.param_groups:
            for p in grp["params"]:
                p.grad = g[[id(q) for q in sum((x["params"] for x in opt.param_groups), [])].index(id(p))].clone()
        opt.step()
        opt.eval()
    flat = lambda opt: sum((x["params"] for x in opt.param_groups), [])
    for opt in opts[1:]:
        for a, b in zip(flat(ref), flat(opt)):
            torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-12)


def test_eval_params_through_inject_hyperparams_and_chain():
    tx = fo.inject_hyperparams(schedule_free_adamw)(lr=fo.linear_schedule(0.01, 0.001, 4), weight_decay=0.1)
    tx = fo.chain(fo.clip_by_global_norm(1.0), tx)
    params = {"w": torch.randn(3, dtype=torch.float64)}
    state = tx.init(params)
    for _ in range(3):
        u, state = tx.update({"w": torch.randn(3, dtype=torch.float64)}, state, params)
        params = fo.apply_updates(params, u)
    inner = state[1].inner_state
    assert isinstance(inner, ScheduleFreeState) and int(inner.count) == 3
    x = schedule_free_eval_params(state, params)
    torch.testing.assert_close(x["w"], torch.lerp(params["w"], inner.z["w"], 1 - 1 / 0.9))
    torch.testing.assert_close(schedule_free_train_params(state, x)["w"], params["w"])

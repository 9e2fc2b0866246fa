"""SophiaH: scale_by_sophia / fo.sophia_h / Hutchinson helpers / compat.SophiaH against pytorch_optimizer.SophiaH.

The reference estimates the Hessian diagonal from ``p.grad`` built with ``create_graph=True``,
so the parity runs here train a small nonlinear model (its Hessian depends on the parameters
and has entries of both signs) instead of feeding random gradients. Before each step the global
generator is seeded alike for the reference and ours (both draw the Hutchinson probes from it).
"""

import copy
import warnings

import pytest
import torch

import functional_optim as fo
from _parity import assert_close
from _reference_parity import check_compiled_no_recompile, check_hypergradient, check_none_grads_and_purity, check_vmap
from compat.sophia import SophiaH
from functional_optim.sophia import ScaleBySophiaHParams, ScaleBySophiaState, scale_by_sophia, sophia_h


# ---------------------------------------------------------------------------- the model
def make_params(dtype, seed=0):
    """A non-contiguous 2-D weight, a bias, a 0-d scale and an output vector."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, generator=g, dtype=dtype).t(), torch.randn(2, generator=g, dtype=dtype),
            torch.randn((), generator=g, dtype=dtype), torch.randn(2, generator=g, dtype=dtype)]


def loss_fn(params, x, y):
    w, b, s, v = params
    h = torch.tanh(x @ w + b)
    out = h @ v + s * (h ** 2).sum(-1)
    return ((out - y) ** 2).mean() + 0.1 * (w ** 4).sum()


def batch(step, dtype):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 3, generator=g, dtype=dtype), torch.randn(8, generator=g, dtype=dtype)


def set_graph_grads(params, step, dtype, none=()):
    """``p.grad`` with a graph (``create_graph=True``), ``None`` for the indices in ``none``."""
    x, y = batch(step, dtype)
    grads = torch.autograd.grad(loss_fn(params, x, y), params, create_graph=True)
    for i, (p, g) in enumerate(zip(params, grads)):
        p.grad = None if i in none else g


def none_at(step, period):
    """A missing gradient at step 2 (param 1) and at step 4 (param 3; an estimate step with period 3)."""
    return {2: (1,), 4: (3,)}.get(step, ())


def _groups(params, second):
    return params if second is None else [{"params": params[:2]}, {"params": params[2:], **second}]


def _functional_kwargs(kw):
    fk = {k: v for k, v in kw.items() if k not in ("update_period", "num_samples", "hessian_distribution", "foreach")}
    if "betas" in fk:
        fk["b1"], fk["b2"] = fk.pop("betas")
    if "p" in fk:
        fk["clip_threshold"] = fk.pop("p")
    return fk


def _functional_step(tx, state, params, step, dtype, kwargs, none):
    """The torch.func loop: an estimate (same probes as the reference) every update_period steps."""
    x, y = batch(step, dtype)
    if (step - 1) % kwargs.get("update_period", 10) == 0:
        active = [None if i in none else p for i, p in enumerate(params)]
        probes = fo.hutchinson_probes(active, kwargs.get("num_samples", 1),
                                      kwargs.get("hessian_distribution", "gaussian"))
        grads, h_hat = fo.hutchinson_hessian_diag(loss_fn, params, probes, x, y)
        state = fo.sophia_set_hessian(state, h_hat)
        assert [h is None for h in h_hat] == [i in none for i in range(len(params))]
    else:
        grads = torch.func.grad(loss_fn)(params, x, y)
    grads = [None if i in none else g for i, g in enumerate(grads)]
    updates, state = tx.update(grads, state, params)
    return fo.apply_updates(params, updates), state


def run_parity(kwargs, dtype, steps, second_group=None, functional=True, lr_schedule=None, none=none_at):
    """Reference, compat and (one group) the functional loop from the same start; params equal after each step."""
    base = make_params(dtype)
    ref_p = [p.clone().requires_grad_() for p in base]
    our_p = [p.clone().requires_grad_() for p in base]
    ref = pytest.importorskip("pytorch_optimizer").SophiaH(_groups(ref_p, second_group), **kwargs)
    ours = SophiaH(_groups(our_p, second_group), **kwargs)
    tx = sophia_h(**_functional_kwargs(kwargs)) if functional else None
    f_params = [p.clone() for p in base]
    f_state = tx.init(f_params) if functional else None
    period = kwargs.get("update_period", 10)
    for step in range(1, steps + 1):
        if lr_schedule is not None:
            for opt in (ref, ours):
                for group in opt.param_groups:
                    group["lr"] = lr_schedule(step)
        missing = none(step, period)
        for ps in (ref_p, our_p):
            set_graph_grads(ps, step, dtype, missing)
        torch.manual_seed(step)
        ref.step()
        torch.manual_seed(step)
        ours.step()
        for i, (a, b) in enumerate(zip(our_p, ref_p)):
            assert_close(a.detach(), b.detach(), dtype, f"compat, step {step}, param {i}")
        if functional:
            torch.manual_seed(step)
            if lr_schedule is not None:
                tx = sophia_h(**{**_functional_kwargs(kwargs), "lr": lr_schedule(step)})
            f_params, f_state = _functional_step(tx, f_state, f_params, step, dtype, kwargs, missing)
            for i, (a, b) in enumerate(zip(f_params, ref_p)):
                assert_close(a, b.detach(), dtype, f"functional, step {step}, param {i}")
    return ref, ours, f_state


B = (0.9, 0.5)  # a short Hessian EMA: many entries of m / max(h, eps) below the bound, not only sign steps
CASES = [
    {"update_period": 3},
    {"update_period": 3, "p": 0.5, "betas": B},
    {"update_period": 2, "p": 0.5, "betas": B, "weight_decay": 0.1, "lr": 0.05},
    {"update_period": 3, "p": 1.0, "betas": (0.8, 0.2), "weight_decay": 0.1, "weight_decouple": False},
    {"update_period": 3, "p": 0.5, "betas": B, "weight_decay": 0.1, "fixed_decay": True},
    {"update_period": 3, "p": 0.5, "betas": B, "maximize": True, "weight_decay": 0.1, "weight_decouple": False},
    {"update_period": 1, "p": 1.0, "betas": B, "num_samples": 3, "hessian_distribution": "rademacher"},
    {"update_period": 3, "p": 0.5, "num_samples": 2, "betas": (0.5, 0.3), "eps": 1e-3},
    {"update_period": 3, "p": 0.5, "betas": B, "foreach": False},
]


def _id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kwargs", CASES, ids=_id)
def test_matches_pytorch_optimizer(kwargs, dtype):
    pytest.importorskip("pytorch_optimizer")
    run_parity(kwargs, dtype, steps=7)


def test_default_update_period_across_two_estimates():
    """The defaults (update_period=10): estimates at steps 1 and 11 only."""
    pytest.importorskip("pytorch_optimizer")
    _, ours, f_state = run_parity({}, torch.float64, steps=12, none=lambda step, period: ())
    assert ours.state_dict()["param_groups"][0]["step"] == 12 and int(f_state["sophia"].count) == 12


def test_update_is_clipped_and_preconditioned():
    """The parity runs exercise both regimes: entries |m / max(h, eps)| below the bound and clipped ones."""
    pytest.importorskip("pytorch_optimizer")
    _, _, state = run_parity({"update_period": 2, "p": 0.5, "betas": B}, torch.float64, steps=6)
    inner = state["sophia"]
    ratios = torch.cat([(m / torch.clamp_min(h, 1e-12)).abs().flatten()
                        for m, h in zip(inner.momentum, inner.hessian_moment)])
    assert (ratios < 0.5).any() and (ratios > 0.5).any()
    assert any((h < 0).any() for h in inner.hessian)  # a negative estimate: floored at eps, a sign step


@pytest.mark.parametrize("kwargs", [{"update_period": 3, "p": 0.5, "betas": B},
                                    {"update_period": 2, "p": 0.5, "weight_decay": 0.1, "weight_decouple": False}],
                         ids=_id)
def test_two_param_groups_and_lr_schedule(kwargs):
    pytest.importorskip("pytorch_optimizer")
    run_parity(kwargs, torch.float64, steps=7, functional=False,
               second_group={"betas": (0.8, 0.3), "p": 0.2, "eps": 1e-4, "weight_decay": 0.05, "lr": 0.03})
    run_parity(kwargs, torch.float64, steps=7, lr_schedule=lambda t: 0.05 / t)


def test_two_groups_functional_with_one_estimate():
    """Two groups as two transformations: one estimate over all parameters (the reference's
    probes run over all groups), split between the two states."""
    po = pytest.importorskip("pytorch_optimizer")
    dtype, second = torch.float64, {"betas": (0.8, 0.9), "p": 0.2, "weight_decay": 0.05}
    base = make_params(dtype)
    ref_p = [p.clone().requires_grad_() for p in base]
    ref = po.SophiaH(_groups(ref_p, second), update_period=2, p=0.5, weight_decay=0.1)
    txs = [sophia_h(clip_threshold=0.5, weight_decay=0.1),
           sophia_h(b1=0.8, b2=0.9, clip_threshold=0.2, weight_decay=0.05)]
    params = [p.clone() for p in base]
    states = [txs[0].init(params[:2]), txs[1].init(params[2:])]
    for step in range(1, 6):
        set_graph_grads(ref_p, step, dtype)
        torch.manual_seed(step)
        ref.step()
        x, y = batch(step, dtype)
        if step % 2 == 1:
            torch.manual_seed(step)
            grads, h_hat = fo.hutchinson_hessian_diag(loss_fn, params, fo.hutchinson_probes(params), x, y)
            states = [fo.sophia_set_hessian(states[0], h_hat[:2]), fo.sophia_set_hessian(states[1], h_hat[2:])]
        else:
            grads = torch.func.grad(loss_fn)(params, x, y)
        new = []
        for tx, state, ps, gs in zip(txs, states, (params[:2], params[2:]), (grads[:2], grads[2:])):
            updates, state = tx.update(gs, state, ps)
            new.append((fo.apply_updates(ps, updates), state))
        params, states = new[0][0] + new[1][0], [new[0][1], new[1][1]]
        for i, (a, b) in enumerate(zip(params, ref_p)):
            assert_close(a, b.detach(), dtype, f"step {step}, param {i}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_given_hessian_estimates(dtype):
    """``step(hessian=...)`` (the reference's external estimates, here on gradients without a graph)
    equals compat's ``step(hessian=...)`` and the functional update after ``sophia_set_hessian``."""
    po = pytest.importorskip("pytorch_optimizer")
    base = make_params(dtype)
    kwargs = {"update_period": 100, "p": 0.5, "weight_decay": 0.1}
    ref_p = [p.clone().requires_grad_() for p in base]
    our_p = [p.clone().requires_grad_() for p in base]
    ref, ours = po.SophiaH(ref_p, **kwargs), SophiaH(our_p, **kwargs)
    tx = sophia_h(clip_threshold=0.5, weight_decay=0.1)
    params = [p.clone() for p in base]
    state = tx.init(params)
    g = torch.Generator().manual_seed(5)
    for step in range(1, 7):
        grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in base]
        hessian = [torch.rand(p.shape, generator=g, dtype=dtype) - 0.2 for p in base] if step in (1, 3, 4) else None
        if step == 5:
            grads[2] = None
        for ps in (ref_p, our_p):
            for p, gr in zip(ps, grads):
                p.grad = None if gr is None else gr.clone()
        ref.step(hessian=None if hessian is None else [h.clone() for h in hessian])
        ours.step(hessian=None if hessian is None else [h.clone() for h in hessian])
        if hessian is not None:
            state = fo.sophia_set_hessian(state, hessian)
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        for i, (a, b, c) in enumerate(zip(our_p, params, ref_p)):
            assert_close(a.detach(), c.detach(), dtype, f"compat, step {step}, param {i}")
            assert_close(b, c.detach(), dtype, f"functional, step {step}, param {i}")


def test_closure_and_backward_create_graph():
    """``step(closure)`` whose closure calls ``loss.backward(create_graph=True)``, as the reference's docs."""
    po = pytest.importorskip("pytorch_optimizer")
    base = make_params(torch.float64)
    runs = []
    for cls in (po.SophiaH, SophiaH):
        ps = [p.clone().requires_grad_() for p in base]
        opt = cls(ps, update_period=2, p=0.5)
        losses = []
        for step in range(1, 5):
            def closure():
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(ps, *batch(step, torch.float64))
                with warnings.catch_warnings():  # torch's note on the grad <-> graph reference cycle
                    warnings.simplefilter("ignore", UserWarning)
                    loss.backward(create_graph=True)
                return loss
            torch.manual_seed(step)
            losses.append(float(opt.step(closure).detach()))
        for p in ps:
            p.grad = None  # the graph's reference cycle
        runs.append((ps, losses))
    assert runs[0][1] == runs[1][1]
    for a, b in zip(runs[1][0], runs[0][0]):
        assert_close(a.detach(), b.detach(), torch.float64, "closure")


def test_group_without_grads_counts_the_step():
    """A group with no gradient at a step still counts it (the reference's group["step"] += 1);
    the estimate steps follow the first group's count."""
    pytest.importorskip("pytorch_optimizer")
    ref, ours, _ = run_parity({"update_period": 2, "p": 0.5}, torch.float64, steps=6, second_group={}, functional=False,
                              none=lambda step, period: (2, 3) if step in (1, 4) else ())
    assert [g["step"] for g in ours.state_dict()["param_groups"]] == [g["step"] for g in ref.param_groups] == [6, 6]


# ---------------------------------------------------------------------------- state dicts
def test_state_dict_cross_loads_with_pytorch_optimizer():
    """``state_dict()`` in the reference's layout (momentum, hessian_moment, hessian; group["step"]),
    loadable both ways; then all four continue identically. The last parameter has no gradient
    in the first two steps, so its first one comes at a step without an estimate."""
    po = pytest.importorskip("pytorch_optimizer")
    dtype, kwargs, steps = torch.float64, {"update_period": 3, "p": 0.5, "betas": B, "weight_decay": 0.1}, 3
    missing = lambda step: (3,) if step <= 2 else ()  # noqa: E731
    base = make_params(dtype)
    ref_p = [p.clone().requires_grad_() for p in base]
    our_p = [p.clone().requires_grad_() for p in base]
    ref, ours = po.SophiaH(ref_p, **kwargs), SophiaH(our_p, **kwargs)
    for step in range(1, steps + 1):
        for ps, opt in ((ref_p, ref), (our_p, ours)):
            set_graph_grads(ps, step, dtype, missing(step))
            torch.manual_seed(step)
            opt.step()
    sd_ref, sd_ours = ref.state_dict(), ours.state_dict()
    assert sd_ours["param_groups"][0]["step"] == sd_ref["param_groups"][0]["step"] == steps
    assert set(sd_ref["state"]) == set(sd_ours["state"])
    for pid, expected in sd_ref["state"].items():
        got = sd_ours["state"][pid]
        assert set(expected) <= set(got) == {"momentum", "hessian_moment", "hessian"}, (pid, sorted(got))
        for key, value in expected.items():
            assert_close(got[key], value, dtype, f"state[{pid}][{key}]")
    # the reference has no estimate yet for the last parameter (its first gradient came at step 3)
    assert "hessian" not in sd_ref["state"][3]
    assert torch.equal(sd_ours["state"][3]["hessian"], torch.zeros(2, dtype=dtype))
    ours_from_ref_p = [p.detach().clone().requires_grad_() for p in ref_p]
    ref_from_ours_p = [p.detach().clone().requires_grad_() for p in our_p]
    ours_from_ref, ref_from_ours = SophiaH(ours_from_ref_p, **kwargs), po.SophiaH(ref_from_ours_p, **kwargs)
    ours_from_ref.load_state_dict(copy.deepcopy(sd_ref))
    ref_from_ours.load_state_dict(copy.deepcopy(sd_ours))
    runs = [(ref, ref_p), (ours, our_p), (ours_from_ref, ours_from_ref_p), (ref_from_ours, ref_from_ours_p)]
    for step in range(steps + 1, 2 * steps + 1):
        for opt, ps in runs:
            set_graph_grads(ps, step, dtype)
            torch.manual_seed(step)
            opt.step()
        for opt, ps in runs[1:]:
            for i, (a, b) in enumerate(zip(ps, ref_p)):
                assert_close(a.detach(), b.detach(), dtype, f"{type(opt).__module__}, step {step}, param {i}")
    for p in ref_p + our_p + ours_from_ref_p + ref_from_ours_p:
        p.grad = None


def test_functional_state_round_trips_through_torch_load(tmp_path):
    tx = sophia_h()
    params = make_params(torch.float32)
    state = fo.sophia_set_hessian(tx.init(params), [torch.ones_like(p) for p in params])
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert isinstance(loaded["sophia"], ScaleBySophiaState) and bool(loaded["sophia"].hessian_pending)
    for a, b in zip(fo.tree.flatten(loaded)[0], fo.tree.flatten(state)[0]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- the functional pieces
def test_hutchinson_matches_autograd_double_backward_and_exact_diagonal():
    """The torch.func estimate equals the reference's products on create_graph gradients, and
    with many probes it approaches the exact Hessian diagonal."""
    dtype = torch.float64
    params = make_params(dtype)
    x, y = batch(1, dtype)
    probes = fo.hutchinson_probes(params, 3, "gaussian", torch.Generator().manual_seed(3))
    grads, h_hat = fo.hutchinson_hessian_diag(loss_fn, params, probes, x, y)
    leaves = [p.clone().requires_grad_() for p in params]
    gs = torch.autograd.grad(loss_fn(leaves, x, y), leaves, create_graph=True)
    expected = [torch.zeros_like(p) for p in params]
    for i, z in enumerate(probes):
        hz = torch.autograd.grad(gs, leaves, grad_outputs=z, retain_graph=True)
        expected = [e.addcmul(a, b, value=1 / 3) for e, a, b in zip(expected, hz, z)]
    for a, b, c, d in zip(h_hat, expected, grads, gs):
        assert torch.equal(a, b) and torch.equal(c, d.detach())
    # unbiased: Rademacher probes over many samples reach diag(H) (exactly for a diagonal Hessian part)
    flat = torch.cat([p.reshape(-1) for p in params])
    sizes = [p.numel() for p in params]

    def flat_loss(v):
        return loss_fn([c.reshape(p.shape) for c, p in zip(torch.split(v, sizes), params)], x, y)

    diag = torch.diagonal(torch.func.hessian(flat_loss)(flat))
    many = fo.hutchinson_probes(params, 4000, "rademacher", torch.Generator().manual_seed(0))
    _, h_many = fo.hutchinson_hessian_diag(loss_fn, params, many, x, y)
    torch.testing.assert_close(torch.cat([h.reshape(-1) for h in h_many]), diag, rtol=0.1, atol=0.05)


def test_probes_follow_the_reference_draws():
    params = make_params(torch.float32)
    torch.manual_seed(7)
    ref = [[torch.randn_like(p) for p in params] for _ in range(2)]
    torch.manual_seed(7)
    ours = fo.hutchinson_probes(params, 2)
    torch.manual_seed(7)
    ref_r = [torch.randint_like(p, 0, 2) * 2.0 - 1.0 for p in params]
    torch.manual_seed(7)
    ours_r = fo.hutchinson_probes(params, 1, "rademacher")
    with_gen = fo.hutchinson_probes(params, 2, generator=torch.Generator().manual_seed(7))
    for a, b, c in zip(sum(ref, []), sum(ours, []), sum(with_gen, [])):
        assert torch.equal(a, b) and torch.equal(a, c)
    for a, b in zip(ref_r, ours_r[0]):
        assert torch.equal(a, b) and set(a.unique().tolist()) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="num_samples must be positive"):
        fo.hutchinson_probes(params, 0)
    with pytest.raises(ValueError, match="hessian_distribution uniform must be one of"):
        fo.hutchinson_probes(params, 1, "uniform")


def test_hutchinson_has_aux_and_vmap_over_an_ensemble():
    dtype = torch.float64
    x, y = batch(2, dtype)
    members = [make_params(dtype, seed) for seed in range(3)]
    probes = [fo.hutchinson_probes(m, 1, generator=torch.Generator().manual_seed(i))[0] for i, m in enumerate(members)]
    stacked = [torch.stack(leaves) for leaves in zip(*members)]
    stacked_z = [torch.stack(leaves) for leaves in zip(*probes)]

    def with_aux(params, x, y):
        loss = loss_fn(params, x, y)
        return loss, loss.detach()

    def one(params, z):
        grads, h_hat, loss = fo.hutchinson_hessian_diag(with_aux, params, [z], x, y, has_aux=True)
        return grads, h_hat, loss

    grads, h_hat, losses = torch.func.vmap(one)(stacked, stacked_z)
    for i, (m, z) in enumerate(zip(members, probes)):
        g_i, h_i = fo.hutchinson_hessian_diag(loss_fn, m, [z], x, y)
        assert_close(losses[i], loss_fn(m, x, y), dtype, "aux")
        for a, b in zip(grads, g_i):
            assert_close(a[i], b, dtype, f"grads of member {i}")
        for a, b in zip(h_hat, h_i):
            assert_close(a[i], b, dtype, f"estimate of member {i}")


def test_update_formula_and_pending_estimate():
    """m = lerp(m, g, 1-b1); h folded only when an estimate is pending; u = clip(m / max(h, eps), ±rho)."""
    b1, b2, eps, rho = 0.9, 0.8, 1e-3, 0.7
    tx = scale_by_sophia(b1, b2, eps, rho)
    params = {"a": torch.zeros(5, dtype=torch.float64)}
    state = tx.init(params)
    m = h = torch.zeros(5, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for t in range(1, 6):
        grad = torch.randn(5, generator=g, dtype=torch.float64)
        if t in (1, 3):
            est = torch.randn(5, generator=g, dtype=torch.float64)
            state = fo.sophia_set_hessian(state, {"a": est})
            assert bool(state.hessian_pending)
            h = b2 * h + (1 - b2) * est
        u, state = tx.update({"a": grad}, state, params)
        m = b1 * m + (1 - b1) * grad
        expected = torch.clamp(m / torch.clamp(h, min=eps), -rho, rho)
        torch.testing.assert_close(u["a"], expected, rtol=1e-12, atol=1e-15)
        assert not bool(state.hessian_pending) and int(state.count) == t
    assert tx.hparams == ScaleBySophiaHParams(b1, b2, eps, rho)


def test_set_hessian_keeps_none_leaves_and_is_pure():
    tx = sophia_h()
    params = {"w": torch.zeros(3), "b": torch.zeros(2)}
    state = fo.sophia_set_hessian(tx.init(params), {"w": torch.ones(3), "b": torch.full((2,), 2.0)})
    before = [x.clone() for x in fo.tree.flatten(state)[0]]
    new = fo.sophia_set_hessian(state, {"w": torch.full((3,), 5.0), "b": None})
    assert torch.equal(new["sophia"].hessian["w"], torch.full((3,), 5.0))
    assert new["sophia"].hessian["b"] is state["sophia"].hessian["b"]
    for a, b in zip(fo.tree.flatten(state)[0], before):
        assert torch.equal(a, b)
    assert new["decay"] is state["decay"] and new["lr"] is state["lr"]


def test_state_checks_name_the_path():
    tx = sophia_h()
    params = {"a": torch.zeros(3), "b": torch.zeros(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"hessian_diag at \['b'\] has dtype torch.float64"):
        fo.sophia_set_hessian(state, {"a": torch.zeros(3), "b": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"hessian_diag at \['a'\] has shape"):
        fo.sophia_set_hessian(state, {"a": torch.zeros(4), "b": None})
    with pytest.raises(ValueError, match="hessian_diag does not match the structure"):
        fo.sophia_set_hessian(state, {"a": torch.zeros(3)})
    with pytest.raises(KeyError):
        fo.sophia_set_hessian(fo.adam().init(params), params)
    inner = state["sophia"]
    with pytest.raises(ValueError, match=r"state\.hessian at \['a'\]"):
        scale_by_sophia().update(params, inner._replace(hessian={"a": torch.zeros(2), "b": torch.zeros(2)}))
    with pytest.raises(ValueError, match="hessian_pending must be a 0-d tensor"):
        scale_by_sophia().update(params, inner._replace(hessian_pending=torch.zeros(2, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"probes\[0\] at \['b'\] has shape"):
        fo.hutchinson_hessian_diag(lambda p: (p["a"] ** 3).sum(), params, [{"a": torch.ones(3), "b": torch.ones(3)}])
    with pytest.raises(ValueError, match="complex"):
        tx.update({"a": torch.zeros(3, dtype=torch.complex64), "b": torch.zeros(2)},
                  tx.init({"a": torch.zeros(3, dtype=torch.complex64), "b": torch.zeros(2)}))
    with pytest.raises(ValueError, match="clip_threshold must be non-negative"):
        scale_by_sophia(clip_threshold=-1.0)
    with pytest.raises(ValueError, match="beta2"):
        sophia_h(b2=1.0)


def test_none_grads_and_purity():
    check_none_grads_and_purity(sophia_h(weight_decay=0.1, clip_threshold=0.5))
    # with a pending estimate: a None-grad leaf keeps its EMA (it is not folded later either)
    tx = sophia_h()
    params = {"w": torch.zeros(3), "b": torch.zeros(2)}
    state = fo.sophia_set_hessian(tx.init(params), {"w": torch.ones(3), "b": torch.ones(2)})
    _, new = tx.update({"w": torch.ones(3), "b": None}, state, params)
    assert torch.equal(new["sophia"].hessian_moment["b"], torch.zeros(2))
    assert not torch.equal(new["sophia"].hessian_moment["w"], torch.zeros(3))
    _, later = tx.update({"w": torch.ones(3), "b": torch.ones(2)}, new, params)
    assert torch.equal(later["sophia"].hessian_moment["b"], torch.zeros(2))


def test_alias_compiles_without_recompiles():
    check_compiled_no_recompile(sophia_h(weight_decay=0.1), [
        {"lr": 0.05, "b1": 0.9, "b2": 0.99, "eps": 1e-12, "clip_threshold": 0.5, "weight_decay": 0.1},
        {"lr": 0.02, "b1": 0.8, "b2": 0.9, "eps": 1e-6, "clip_threshold": 0.2, "weight_decay": 0.0}])


def test_compiled_loop_with_estimates_every_other_step_is_one_graph():
    """Estimates at some steps only (the pending flag is data): one compiled graph, eager results."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = sophia_h(weight_decay=0.1, clip_threshold=0.5)

    def step(params, grads, state, hp):
        updates, state = tx.update(grads, state, params, hp)
        return fo.apply_updates(params, updates), state

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    params = make_params(torch.float32)
    p_c = p_e = params
    s_c = s_e = tx.init(params)
    for t in range(6):
        x, y = batch(t, torch.float32)
        if t % 2 == 0:
            z = fo.hutchinson_probes(p_e, generator=torch.Generator().manual_seed(t))
            grads, h_hat = fo.hutchinson_hessian_diag(loss_fn, p_e, z, x, y)
            s_c, s_e = fo.sophia_set_hessian(s_c, h_hat), fo.sophia_set_hessian(s_e, h_hat)
        else:
            grads = torch.func.grad(loss_fn)(p_e, x, y)
        hp = fo.replace_hparams(tx.hparams, lr=torch.tensor(0.05 / (t + 1)), b2=torch.tensor(0.9 + 0.01 * t))
        p_c, s_c = compiled(p_c, grads, s_c, hp)
        p_e, s_e = step(p_e, grads, s_e, hp)
        for a, b in zip(p_c, p_e):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1, counter.frame_count
    torch._dynamo.reset()


def test_vmap():
    check_vmap(sophia_h(lr=0.1, weight_decay=0.1, clip_threshold=0.5), steps=4)


def test_hypergradient_through_unrolled_updates():
    check_hypergradient(sophia_h(lr=0.05, weight_decay=0.1, clip_threshold=0.5))


def test_hypergradient_through_estimates_and_updates():
    """d(loss after three Sophia steps, each with a Hutchinson estimate)/d(lr) passes gradcheck:
    autograd runs through torch.func's estimate, the EMA and the preconditioned update."""
    dtype = torch.float64
    x, y = batch(0, dtype)
    base = make_params(dtype)
    probes = [fo.hutchinson_probes(base, 1, generator=torch.Generator().manual_seed(t)) for t in range(3)]
    tx = sophia_h(clip_threshold=10.0, eps=1e-3)

    def loss_after(lr):
        params = [p + 0 * lr for p in base]
        state = tx.init(params)
        hp = fo.replace_hparams(tx.hparams, lr=lr)
        for z in probes:
            grads, h_hat = fo.hutchinson_hessian_diag(loss_fn, params, z, x, y)
            state = fo.sophia_set_hessian(state, h_hat)
            updates, state = tx.update(grads, state, params, hp)
            params = fo.apply_updates(params, updates)
        return loss_fn(params, x, y)

    lr = torch.tensor(0.01, dtype=dtype, requires_grad=True)
    assert torch.autograd.gradcheck(loss_after, (lr,), eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- compat API
BAD_ARGS = [
    {"lr": -1.0}, {"betas": (1.0, 0.99)}, {"betas": (0.9, 1.0)}, {"weight_decay": -0.1}, {"p": -1.0},
    {"update_period": 0}, {"num_samples": 0}, {"hessian_distribution": "uniform"}, {"eps": -1.0},
]


@pytest.mark.parametrize("kwargs", BAD_ARGS, ids=_id)
def test_constructor_errors_match_the_reference(kwargs):
    po = pytest.importorskip("pytorch_optimizer")
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(Exception) as ref_error:
        po.SophiaH(params, **kwargs)
    with pytest.raises(ValueError) as our_error:
        SophiaH(params, **kwargs)
    assert str(our_error.value) == str(ref_error.value)


def test_defaults_and_group_keys_match_the_reference():
    po = pytest.importorskip("pytorch_optimizer")
    ref = po.SophiaH([torch.zeros(2, requires_grad=True)])
    ours = SophiaH([torch.zeros(2, requires_grad=True)])
    assert ref.defaults == ours.defaults and str(ours) == str(ref) == "SophiaH"
    assert (ours.update_period, ours.num_samples, ours.distribution) == (ref.update_period, ref.num_samples,
                                                                         ref.distribution)
    p = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="weight_decouple"):
        SophiaH([{"params": p[:1]}, {"params": p[1:], "weight_decouple": False}])


def test_step_errors_change_nothing():
    po = pytest.importorskip("pytorch_optimizer")
    w = torch.ones(3, requires_grad=True)
    opt = SophiaH([w])
    w.grad = torch.ones(3)  # no graph, at an estimate step
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step()
    assert torch.equal(w, torch.ones(3)) and not opt.state
    with pytest.raises(ValueError) as ours:
        opt.step(hessian=[torch.zeros(2)])
    with pytest.raises(ValueError) as ref:
        po.SophiaH([w]).step(hessian=[torch.zeros(2)])
    assert str(ours.value) == str(ref.value) and not opt.state
    with pytest.raises(ValueError, match="2 hessian tensors for 1 parameters"):
        opt.step(hessian=[torch.zeros(3), torch.zeros(3)])
    c = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    c.grad = torch.zeros(2, dtype=torch.complex64)
    with pytest.raises(Exception) as ref_c:
        po.SophiaH([c]).step()
    with pytest.raises(RuntimeError) as ours_c:
        SophiaH([c]).step()
    assert str(ours_c.value) == str(ref_c.value)
    s = torch.zeros(3, requires_grad=True)
    s.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="SophiaH does not support sparse gradient"):
        SophiaH([s]).step()


def _backward_with_graph(model, opt, gen):
    """Fresh gradients with a graph (``backward(create_graph=True)``) on a batch drawn from ``gen``."""
    x = torch.randn(8, 3, generator=gen)
    opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_graph's reference-cycle warning
        model(x).pow(2).mean().backward(create_graph=True)


def test_compiled_compat_step_with_create_graph_hessian_matches_eager():
    """``torch.compile(opt.step)`` with the Hessian estimated from ``backward(create_graph=True)``,
    then the same optimizer stepped eagerly (as after Dynamo's recompile limit, or outside the
    compiled loop). Its step breaks Dynamo's graph where it makes a state layout, and a layout
    made while tracing held a spec of Dynamo's optree polyfill, which then failed to unflatten the
    state (``ValueError: length mismatch``); the state is now rebuilt without that spec. Same
    numbers as the eager steps throughout."""
    def run(compiled_steps):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        opt = SophiaH(model.parameters(), lr=0.01, update_period=3)
        compiled = torch.compile(opt.step, backend="aot_eager")
        gen = torch.Generator().manual_seed(1)
        for i in range(6):
            _backward_with_graph(model, opt, gen)
            (compiled if i < compiled_steps else opt.step)()
        torch._dynamo.reset()
        return [p.detach().clone() for p in model.parameters()]

    for got, want in zip(run(compiled_steps=3), run(compiled_steps=0)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_compiled_compat_step_with_hutchinson_estimates_stops_recompiling():
    """``torch.compile(opt.step)`` estimating the Hessian from ``backward(create_graph=True)`` every
    other step, with ``StepLR`` changing a float ``lr`` at every step: after the warm-up steps no
    step compiles a new graph. The estimates cross a graph break (``autograd.grad``); held in a
    dict keyed by the parameters, the resumed frame guarded the keys' ``.grad`` by identity and
    recompiled at every estimate step."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = SophiaH(model.parameters(), lr=0.05, update_period=2)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9)
    compiled = torch.compile(opt.step, backend="aot_eager")
    gen = torch.Generator().manual_seed(1)
    graphs = []
    for _ in range(10):
        _backward_with_graph(model, opt, gen)
        compiled()
        scheduler.step()
        graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert graphs[4:] == [graphs[4]] * 6, graphs

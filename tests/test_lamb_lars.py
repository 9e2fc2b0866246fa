"""LAMB and LARS: compat.Lamb / compat.Lars against pytorch_optimizer step by step; fo.lamb /
fo.lars (optax's compositions) against torch and optax's formulas; compile and vmap."""

import copy

import optree
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import functional_optim as fo
from _parity import assert_close, grads_for_step, make_params
from compat.lamb import Lamb
from compat.lars import Lars
from functional_optim.lamb import lamb
from functional_optim.lars import lars

DTYPES = [torch.float64, torch.float32]


def _groups(ps, two_groups, kwargs, second):
    if not two_groups:
        return ps
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5 * kwargs.get("lr", 1e-3), **second}]


def _run_against(ref_cls, our_cls, kwargs, dtype, *, two_groups=True, second=None, steps=6, ref_kwargs=None,
                 scheduler=False):
    """Step the reference and ours on the same grads (None at step 2, zeros at step 3); compare params."""
    second = second or {}
    params = make_params(dtype)
    # scale so that the LAMB norm clamp (10) is met by one parameter
    params[0] = params[0] * 8.0
    ref = [p.clone().requires_grad_() for p in params]
    ours = [p.clone().requires_grad_() for p in params]
    opt_ref = ref_cls(_groups(ref, two_groups, kwargs, second), **kwargs, **(ref_kwargs or {}))
    opt_ours = our_cls(_groups(ours, two_groups, kwargs, second), **kwargs)
    scheds = [torch.optim.lr_scheduler.StepLR(o, 2, 0.5) for o in (opt_ref, opt_ours)] if scheduler else []
    for step in range(steps):
        for r, o, g in zip(ref, ours, grads_for_step(params, step)):
            r.grad = None if g is None else g.clone()
            o.grad = None if g is None else g.clone()
        grads_before = [None if o.grad is None else o.grad.clone() for o in ours]
        opt_ref.step()
        opt_ours.step()
        for s in scheds:
            s.step()
        for i, (r, o) in enumerate(zip(ref, ours)):
            assert_close(o.detach(), r.detach(), dtype, f"param {i} after step {step}")
        for o, g in zip(ours, grads_before):  # .grad is left as it was
            assert (o.grad is None) == (g is None) and (g is None or torch.equal(o.grad, g))
    return opt_ref, opt_ours


LAMB_CASES = {
    "defaults": {},
    "decoupled_wd": dict(lr=0.05, weight_decay=0.1),
    "l2": dict(lr=0.05, weight_decay=0.1, weight_decouple=False),
    "fixed_decay": dict(lr=0.05, weight_decay=0.1, fixed_decay=True),
    "no_grad_averaging": dict(lr=0.02, betas=(0.8, 0.95), grad_averaging=False),
    "adam": dict(lr=0.05, weight_decay=0.01, adam=True),
    "maximize_eps": dict(lr=0.05, eps=1e-3, maximize=True, weight_decay=0.05),
    "pre_norm": dict(lr=0.05, pre_norm=True, max_grad_norm=0.5),
    "pre_norm_off": dict(lr=0.05, pre_norm=True, max_grad_norm=0.0),
}


@pytest.mark.parametrize("ref_foreach", [False, None], ids=["ref_forloop", "ref_foreach"])
@pytest.mark.parametrize("case", list(LAMB_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compat_lamb_matches_pytorch_optimizer(dtype, case, ref_foreach):
    po = pytest.importorskip("pytorch_optimizer")
    kwargs = LAMB_CASES[case]
    _run_against(po.Lamb, Lamb, kwargs, dtype, second={"weight_decay": 0.2, "betas": (0.85, 0.99)},
                 ref_kwargs={"foreach": ref_foreach})


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compat_lamb_one_group_and_scheduler(dtype):
    po = pytest.importorskip("pytorch_optimizer")
    _run_against(po.Lamb, Lamb, dict(lr=0.05, weight_decay=0.1), dtype, two_groups=False, scheduler=True)
    _, ours = _run_against(po.Lamb, Lamb, dict(lr=0.05, weight_decay=0.1), dtype, scheduler=True)
    assert [g["step"] for g in ours.param_groups] == [6, 6]


LARS_CASES = {
    "defaults": {},
    "wd": dict(lr=0.1, weight_decay=0.1, trust_coefficient=0.02),
    "nesterov": dict(lr=0.1, weight_decay=0.01, nesterov=True, momentum=0.8),
    "dampening": dict(lr=0.1, weight_decay=0.01, dampening=0.3),
    "no_momentum": dict(lr=0.1, weight_decay=0.05, momentum=0.0),
    "maximize": dict(lr=0.1, weight_decay=0.05, maximize=True),
}


@pytest.mark.parametrize("ref_foreach", [False, None], ids=["ref_forloop", "ref_foreach"])
@pytest.mark.parametrize("case", list(LARS_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compat_lars_matches_pytorch_optimizer(dtype, case, ref_foreach):
    po = pytest.importorskip("pytorch_optimizer")
    kwargs = LARS_CASES[case]
    second = {"weight_decay": 0.2, "trust_coefficient": 0.05}
    if kwargs.get("momentum", 0.9) > 0:
        second["momentum"] = 0.5
    _run_against(po.LARS, Lars, kwargs, dtype, second=second, ref_kwargs={"foreach": ref_foreach})


def test_compat_lars_scheduler_and_zero_param():
    po = pytest.importorskip("pytorch_optimizer")
    _run_against(po.LARS, Lars, dict(lr=0.1, weight_decay=0.1), torch.float64, scheduler=True)
    # a zero matrix: ratio 1 (both)
    for cls in (po.LARS, Lars):
        w = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
        w.grad = torch.ones(3, 2, dtype=torch.float64)
        opt = cls([w], lr=0.1, weight_decay=0.1)
        opt.step()
        assert torch.allclose(w.detach(), torch.full((3, 2), -0.1, dtype=torch.float64))


def test_compat_signatures_defaults_and_refusals():
    po = pytest.importorskip("pytorch_optimizer")
    import inspect

    for ours, ref in ((Lamb, po.Lamb), (Lars, po.LARS)):
        a, b = inspect.signature(ours.__init__).parameters, inspect.signature(ref.__init__).parameters
        assert list(a) == list(b)
        assert all(a[k].default == b[k].default for k in a if k not in ("self",))
    w = torch.zeros(2, 2, requires_grad=True)
    assert Lamb([w]).param_groups[0].keys() - {"params"} == po.Lamb([w]).param_groups[0].keys() - {"params"}
    assert Lars([w]).param_groups[0].keys() == po.LARS([w]).param_groups[0].keys()
    with pytest.raises(ValueError, match="rectify"):
        Lamb([w], rectify=True)
    with pytest.raises(ValueError, match="adanorm"):
        Lamb([w], adanorm=True)
    with pytest.raises(ValueError, match="nesterov with dampening"):
        Lars([w], nesterov=True, dampening=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        Lamb([w], lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        Lars([w], weight_decay=-1.0)
    with pytest.raises(ValueError, match="cannot change 'weight_decouple'"):
        Lamb([{"params": [w], "weight_decouple": False}])


def test_compat_state_dict_round_trip():
    po = pytest.importorskip("pytorch_optimizer")
    kwargs = dict(lr=0.05, weight_decay=0.1)
    ref, ours = _run_against(po.Lamb, Lamb, kwargs, torch.float64, steps=3)
    params = [p for g in ours.param_groups for p in g["params"]]
    again = Lamb(_groups(params, True, kwargs, {"weight_decay": 0.2, "betas": (0.85, 0.99)}), **kwargs)
    again.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert [g["step"] for g in again.param_groups] == [3, 3]
    assert torch.equal(again.state[params[0]]["adam.mu"], ours.state[params[0]]["adam.mu"])


# ---------------------------------------------------------------------------- functional aliases
def test_fo_lars_without_trust_ratio_is_torch_sgd():
    from _composed import run_composed_parity

    tx = lars(lr=0.1, weight_decay=0.01, trust_ratio_mask=False, momentum=0.9, nesterov=True)
    run_composed_parity(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
                        tx, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fo_lars_matches_pytorch_optimizer_lars_without_decay(dtype):
    """optax's LARS with the ratio on matrices and no decay is pytorch_optimizer's LARS."""
    po = pytest.importorskip("pytorch_optimizer")
    from _composed import run_composed_parity

    mask = lambda ps: optree.tree_map(lambda p: p.ndim > 1, ps)  # noqa: E731
    tx = lars(lr=0.1, trust_coefficient=0.01, trust_ratio_mask=mask, momentum=0.9)
    run_composed_parity(lambda ps: po.LARS(ps, lr=0.1, trust_coefficient=0.01, momentum=0.9), tx, dtype)


def test_fo_lamb_is_optax_lamb():
    """optax's lamb: bias-corrected Adam, + wd p, ||p|| / ||u|| (1 where a norm is 0), -lr."""
    b1, b2, eps, wd, lr = 0.9, 0.99, 1e-6, 0.1, 0.01
    params = {f"p{i}": p for i, p in enumerate(make_params(torch.float64))}
    params["z"] = torch.zeros(3, dtype=torch.float64)
    tx = lamb(lr, b1, b2, eps, weight_decay=wd)
    state = tx.init(params)
    mu = {k: torch.zeros_like(p) for k, p in params.items()}
    nu = {k: torch.zeros_like(p) for k, p in params.items()}
    p_ref = dict(params)
    for t in range(1, 5):
        grads = {f"p{i}": g for i, g in enumerate(grads_for_step(make_params(torch.float64), t - 1))}
        grads["p1"] = p_ref["p1"] * 0 + 0.5  # no None here: optax's count is shared
        grads["z"] = torch.ones(3, dtype=torch.float64)
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        for k in p_ref:
            g = grads[k]
            mu[k] = b1 * mu[k] + (1 - b1) * g
            nu[k] = b2 * nu[k] + (1 - b2) * g * g
            u = (mu[k] / (1 - b1 ** t)) / (torch.sqrt(nu[k] / (1 - b2 ** t)) + eps) + wd * p_ref[k]
            pn, un = p_ref[k].norm(), u.norm()
            ratio = 1.0 if pn == 0 or un == 0 else pn / un
            p_ref[k] = p_ref[k] - lr * ratio * u
            torch.testing.assert_close(params[k], p_ref[k], rtol=1e-12, atol=1e-14)


def test_aliases_compile_without_recompiles_and_vmap():
    torch._dynamo.reset()
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    for tx in (lamb(weight_decay=0.1), lars(weight_decay=0.1)):
        counter = CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
        state = eager_state = tx.init(params)
        frames = []
        for k in range(3):
            hp = fo.replace_hparams(tx.hparams, lr=torch.tensor(1e-2 * (k + 1)),
                                    weight_decay=torch.tensor(0.1 / (k + 1)))
            grads = {"w": torch.randn(4, 3), "b": torch.randn(3)}
            out, state = compiled(grads, state, params, hp)
            ref, eager_state = tx.update(grads, eager_state, params, hp)
            for key in params:
                torch.testing.assert_close(out[key], ref[key])
            frames.append(counter.frame_count)
        assert frames[1:] == [frames[0]] * 2, frames
        torch._dynamo.reset()
        batched = {"w": torch.randn(3, 4, 3), "b": torch.randn(3, 3)}
        grads = {"w": torch.randn(3, 4, 3), "b": torch.randn(3, 3)}
        out, _ = torch.func.vmap(tx.update)(grads, torch.func.vmap(tx.init)(batched), batched)
        for i in range(3):
            single = {k: v[i] for k, v in batched.items()}
            ref, _ = tx.update({k: v[i] for k, v in grads.items()}, tx.init(single), single)
            for key in params:
                torch.testing.assert_close(out[key][i], ref[key])

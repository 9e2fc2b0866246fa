"""AdaBelief: scale_by_belief / fo.adabelief / compat.AdaBelief against pytorch_optimizer.AdaBelief."""

import pytest
import torch

import functional_optim as fo
from _reference_parity import (
    check_hypergradient,
    check_group_without_grads_counts_the_step,
    check_state_dict_cross_load,
    check_compiled_no_recompile,
    check_none_grads_and_purity,
    check_vmap,
    run_reference_parity,
)
from compat.adabelief import AdaBelief
from functional_optim.adabelief import ScaleByBeliefHParams, ScaleByBeliefState, adabelief, scale_by_belief

CASES = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "weight_decouple": False},
    {"weight_decay": 0.1, "fixed_decay": True},
    {"ams_bound": True},
    {"rectify": True},
    {"rectify": True, "degenerated_to_sgd": False},
    {"rectify": True, "ams_bound": True, "n_sma_threshold": 4},
    {"maximize": True, "weight_decay": 0.1, "weight_decouple": False},
    {"lr": 0.1, "betas": (0.5, 0.9), "eps": 1e-8},
]


def _functional_kwargs(kw):
    fk = dict(kw)
    if "betas" in fk:
        fk["b1"], fk["b2"] = fk.pop("betas")
    return fk


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kwargs", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_matches_pytorch_optimizer(kwargs, dtype):
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.AdaBelief, AdaBelief, kwargs, dtype, steps=8,
                         make_tx=lambda: adabelief(**_functional_kwargs(kwargs)))


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1, "weight_decouple": False}])
def test_two_param_groups_and_lr_schedule(kwargs):
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.AdaBelief, AdaBelief, kwargs, torch.float64, steps=6,
                         second_group={"betas": (0.8, 0.99), "eps": 1e-10, "weight_decay": 0.05})
    run_reference_parity(po.AdaBelief, AdaBelief, kwargs, torch.float64, steps=6,
                         lr_schedule=lambda t: 1e-2 / t, make_tx=lambda: adabelief(**kwargs))


def test_group_cannot_change_structure_flags():
    p = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="ams_bound"):
        AdaBelief([{"params": p[:1]}, {"params": p[1:], "ams_bound": True}])
    with pytest.raises(ValueError, match="adanorm"):
        AdaBelief(p, adanorm=True)
    with pytest.raises(ValueError, match="learning rate"):
        AdaBelief(p, lr=-1.0)
    with pytest.raises(ValueError, match="beta1"):
        AdaBelief(p, betas=(1.0, 0.9))


@pytest.mark.parametrize("flags", [{}, {"ams_bound": True}, {"rectify": True}, {"nesterov": True, "rectify": True}])
def test_block_compiles_without_recompiles(flags):
    tx = fo.chain(scale_by_belief(**flags), fo.scale_by_learning_rate(1e-2))
    check_compiled_no_recompile(tx, [{"b1": 0.9, "b2": 0.99, "lr": 0.01}, {"b1": 0.8, "b2": 0.999, "lr": 0.02}])


def test_alias_compiles_without_recompiles():
    check_compiled_no_recompile(adabelief(weight_decay=0.1), [{"lr": 0.01, "weight_decay": 0.1},
                                                              {"lr": 0.03, "weight_decay": 0.0}])


@pytest.mark.parametrize("flags", [{}, {"ams_bound": True, "rectify": True}])
def test_vmap(flags):
    check_vmap(adabelief(lr=0.1, weight_decay=0.1, **flags), steps=7)


@pytest.mark.parametrize("flags", [{}, {"ams_bound": True}])
def test_none_grads_and_purity(flags):
    check_none_grads_and_purity(adabelief(weight_decay=0.1, **flags))


def test_state_checks_name_the_path():
    tx = scale_by_belief()
    params = {"a": torch.zeros(3), "b": torch.zeros(2)}
    state = tx.init(params)
    bad = state._replace(nu={"a": torch.zeros(3), "b": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"state\.nu at \['b'\]"):
        tx.update(params, bad)
    with pytest.raises(TypeError, match="ScaleByBeliefState"):
        tx.update(params, (state.mu,))
    with pytest.raises(TypeError, match="ScaleByBeliefHParams"):
        tx.update(params, state, None, {"b1": 0.9})
    assert isinstance(state, ScaleByBeliefState) and state.max_nu == fo.EMPTY
    assert tx.hparams == ScaleByBeliefHParams()


def test_tensor_hparams_equal_float_hparams():
    params = [torch.randn(4, dtype=torch.float64)]
    tx = adabelief(lr=0.1, weight_decay=0.1)
    s1 = s2 = tx.init(params)
    hp = fo.replace_hparams(tx.hparams, lr=torch.tensor(0.1, dtype=torch.float64),
                            b1=torch.tensor(0.9, dtype=torch.float64), weight_decay=torch.tensor(0.1, dtype=torch.float64))
    for _ in range(3):
        g = [torch.randn(4, dtype=torch.float64)]
        u1, s1 = tx.update(g, s1, params)
        u2, s2 = tx.update(g, s2, params, hp)
        torch.testing.assert_close(u1[0], u2[0], rtol=1e-13, atol=0)


def test_state_dict_round_trip_and_functional_state_loads(tmp_path):
    base = [torch.randn(3, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)]
    a = [p.clone().requires_grad_() for p in base]
    b = [p.clone().requires_grad_() for p in base]
    opt_a = AdaBelief(a, lr=0.1, ams_bound=True)
    for p in a:
        p.grad = torch.ones_like(p)
    opt_a.step()
    opt_b = AdaBelief(b, lr=0.1, ams_bound=True)
    with torch.no_grad():
        for p, q in zip(b, a):
            p.copy_(q)
    opt_b.load_state_dict(opt_a.state_dict())
    for opt, ps in ((opt_a, a), (opt_b, b)):
        for p in ps:
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    tx = adabelief(ams_bound=True)
    state = tx.init(base)
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert type(loaded["adabelief"]) is ScaleByBeliefState


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=str)
@pytest.mark.parametrize("kwargs", [{"weight_decay": 0.1}, {"ams_bound": True, "rectify": True}], ids=["wd", "ams-rect"])
def test_complex_matches_pytorch_optimizer(kwargs, dtype):
    """Complex parameters are stepped on their real view, as pytorch_optimizer does."""
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.AdaBelief, AdaBelief, kwargs, dtype, steps=7, make_tx=lambda: adabelief(**kwargs))


@pytest.mark.parametrize("kwargs", [{}, {"ams_bound": True}, {"rectify": True, "weight_decay": 0.1}], ids=str)
def test_state_dict_cross_loads_with_pytorch_optimizer(kwargs):
    """state_dict() in pytorch_optimizer's layout (its keys, group["step"]); loads both ways."""
    po = pytest.importorskip("pytorch_optimizer")
    check_state_dict_cross_load(po.AdaBelief, AdaBelief, kwargs)


def test_group_without_grads_counts_the_step():
    po = pytest.importorskip("pytorch_optimizer")
    check_group_without_grads_counts_the_step(po.AdaBelief, AdaBelief, {})


def test_hypergradient_through_unrolled_updates():
    check_hypergradient(adabelief(weight_decay=0.1))


@pytest.mark.parametrize("rectify", [False, True])
def test_nesterov_is_optax_formula(rectify):
    """nesterov (optax's option, no reference package): numerator b1 m/(1-b1^(t+1)) + (1-b1) g/(1-b1^t)."""
    b1, b2, eps = 0.8, 0.9, 1e-16
    tx = scale_by_belief(b1, b2, eps, eps, nesterov=True, rectify=rectify)
    params = [torch.zeros(4, dtype=torch.float64)]
    state = tx.init(params)
    m = v = torch.zeros(4, dtype=torch.float64)
    seen = set()
    for t in range(1, 11):
        g = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
        u, state = tx.update([g], state, params)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g - m) ** 2 + eps
        num = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
        if not rectify:
            expected = num / (v.sqrt() / (1 - b2 ** t) ** 0.5 + eps)
        else:
            sma_max = 2 / (1 - b2) - 1
            sma = sma_max - 2 * t * b2 ** t / (1 - b2 ** t)
            if sma >= 5:
                rt = ((1 - b2 ** t) * (sma - 4) / (sma_max - 4) * (sma - 2) / sma * sma_max / (sma_max - 2)) ** 0.5
                expected = num * rt / (v.sqrt() + eps)
            else:
                expected = num
            seen.add(bool(sma >= 5))
        torch.testing.assert_close(u[0], expected, rtol=1e-12, atol=1e-15)
    assert not rectify or seen == {False, True}  # both branches met


def test_step_hooks_run_once():
    """torch wraps TransformationOptimizer.step with its hook runner once an instance exists; the
    reference classes call the unwrapped step, so each hook runs once per step."""
    import compat

    compat.TransformationOptimizer([torch.zeros(1, requires_grad=True)], fo.sgd(lr=0.1))
    for cls in (compat.AdaBelief, compat.ADOPT, compat.AdEMAMix, compat.Adan):
        p = torch.zeros(2, requires_grad=True)
        kwargs = {"max_grad_norm": 1.0} if cls is compat.Adan else {}
        opt = cls([p], **kwargs)
        calls = []
        opt.register_step_pre_hook(lambda *a: calls.append("pre"))
        opt.register_step_post_hook(lambda *a: calls.append("post"))
        p.grad = torch.ones(2)
        opt.step()
        assert calls == ["pre", "post"], (cls, calls)

"""AdEMAMix: scale_by_ademamix / fo.ademamix / compat.AdEMAMix against pytorch_optimizer.AdEMAMix."""

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
from compat.ademamix import AdEMAMix
from functional_optim.ademamix import ScaleByAdemamixHParams, ScaleByAdemamixState, ademamix, scale_by_ademamix

CASES = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "weight_decouple": True},
    {"weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True},
    {"t_alpha_beta3": 4.0},
    {"t_alpha_beta3": 100.0, "alpha": 8.0, "betas": (0.8, 0.99, 0.999)},
    {"maximize": True, "weight_decay": 0.1},
    {"lr": 0.1, "betas": (0.5, 0.9, 0.99), "eps": 1e-4, "alpha": 2.0},
]


def _functional_kwargs(kw):
    fk = dict(kw)
    if "betas" in fk:
        fk["b1"], fk["b2"], fk["b3"] = fk.pop("betas")
    return fk


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kwargs", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_matches_pytorch_optimizer(kwargs, dtype):
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.AdEMAMix, AdEMAMix, kwargs, dtype, steps=6,
                         make_tx=lambda: ademamix(**_functional_kwargs(kwargs)))


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1, "weight_decouple": True, "t_alpha_beta3": 3.0}])
def test_two_param_groups_and_lr_schedule(kwargs):
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.AdEMAMix, AdEMAMix, kwargs, torch.float64, steps=5,
                         second_group={"betas": (0.8, 0.99, 0.999), "alpha": 3.0, "eps": 1e-6, "weight_decay": 0.05})
    run_reference_parity(po.AdEMAMix, AdEMAMix, kwargs, torch.float64, steps=5,
                         lr_schedule=lambda t: 1e-2 / t, make_tx=lambda: ademamix(**kwargs))


def test_constructor_checks():
    p = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="t_alpha_beta3"):
        AdEMAMix([{"params": p[:1]}, {"params": p[1:], "t_alpha_beta3": 5.0}])
    with pytest.raises(ValueError, match="stable_adamw"):
        AdEMAMix(p, stable_adamw=True)
    with pytest.raises(ValueError, match="beta3"):
        AdEMAMix(p, betas=(0.9, 0.99, 1.5))
    with pytest.raises(ValueError, match="alpha"):
        AdEMAMix(p, alpha=-1.0)


def test_eps_root_is_inside_the_root():
    params = [torch.zeros(3, dtype=torch.float64)]
    g = [torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)]
    tx = scale_by_ademamix(b1=0.5, b2=0.5, b3=0.5, alpha=1.0, eps=0.0, eps_root=1.0)
    u, _ = tx.update(g, tx.init(params), params)
    expected = (g[0] + 0.5 * g[0]) / torch.sqrt(g[0] ** 2 + 1.0)
    torch.testing.assert_close(u[0], expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("warmup", [None, 3.0])
def test_block_compiles_without_recompiles(warmup):
    tx = fo.chain(scale_by_ademamix(t_alpha_beta3=warmup), fo.scale_by_learning_rate(1e-2))
    check_compiled_no_recompile(tx, [{"b1": 0.9, "b3": 0.999, "alpha": 5.0, "lr": 0.01, "eps_root": 0.0},
                                     {"b1": 0.8, "b3": 0.99, "alpha": 2.0, "lr": 0.02, "eps_root": 1e-8}])


def test_alias_compiles_without_recompiles():
    check_compiled_no_recompile(ademamix(weight_decay=0.1), [{"lr": 0.01, "weight_decay": 0.1},
                                                             {"lr": 0.03, "weight_decay": 0.0}])


def test_vmap():
    check_vmap(ademamix(lr=0.1, weight_decay=0.1, t_alpha_beta3=2.0), steps=4)


def test_none_grads_and_purity():
    check_none_grads_and_purity(ademamix(weight_decay=0.1))


def test_state_checks_name_the_path():
    tx = scale_by_ademamix()
    params = {"a": torch.zeros(3), "b": torch.zeros(2)}
    state = tx.init(params)
    bad = state._replace(m2={"a": torch.zeros(1), "b": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"state\.m2 at \['a'\]"):
        tx.update(params, bad)
    assert isinstance(state, ScaleByAdemamixState) and tx.hparams == ScaleByAdemamixHParams()


@pytest.mark.parametrize("kwargs", [{}, {"t_alpha_beta3": 5.0}], ids=str)
def test_state_dict_cross_loads_with_pytorch_optimizer(kwargs):
    """state_dict() in pytorch_optimizer's layout (its keys, group["step"]); loads both ways."""
    po = pytest.importorskip("pytorch_optimizer")
    check_state_dict_cross_load(po.AdEMAMix, AdEMAMix, kwargs)


def test_group_without_grads_counts_the_step():
    po = pytest.importorskip("pytorch_optimizer")
    check_group_without_grads_counts_the_step(po.AdEMAMix, AdEMAMix, {"t_alpha_beta3": 4.0})


def test_hypergradient_through_unrolled_updates():
    check_hypergradient(ademamix(weight_decay=0.1, t_alpha_beta3=3.0))

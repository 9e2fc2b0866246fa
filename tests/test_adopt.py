"""ADOPT: scale_by_adopt / fo.adopt / compat.ADOPT against pytorch_optimizer.ADOPT."""

import math

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
from compat.adopt import ADOPT
from functional_optim.adopt import ScaleByAdoptHParams, ScaleByAdoptState, adopt, scale_by_adopt

CASES = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "weight_decouple": True},
    {"weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True},
    {"clip_lambda": None},
    {"clip_lambda": lambda step: 0.5 + 0.1 * step},
    {"maximize": True, "weight_decay": 0.1},
    {"lr": 0.1, "betas": (0.5, 0.9), "eps": 1e-3},
]


def _functional_kwargs(kw):
    fk = dict(kw)
    if "betas" in fk:
        fk["b1"], fk["b2"] = fk.pop("betas")
    if "clip_lambda" in fk:
        fn = fk.pop("clip_lambda")
        fk["use_clipping"] = fn is not None
        fk["clip_value_fn"] = fn
    return fk


def _id(kw):
    return ",".join(f"{k}={'fn' if callable(v) else v}" for k, v in kw.items()) or "default"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kwargs", CASES, ids=_id)
def test_matches_pytorch_optimizer(kwargs, dtype):
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.ADOPT, ADOPT, kwargs, dtype, steps=6,
                         make_tx=lambda: adopt(**_functional_kwargs(kwargs)))


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1, "weight_decouple": True}])
def test_two_param_groups_and_lr_schedule(kwargs):
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.ADOPT, ADOPT, kwargs, torch.float64, steps=5,
                         second_group={"betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": 0.05})
    run_reference_parity(po.ADOPT, ADOPT, kwargs, torch.float64, steps=5,
                         lr_schedule=lambda t: 1e-2 / t, make_tx=lambda: adopt(**kwargs))


def test_constructor_checks():
    p = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="weight_decouple"):
        ADOPT([{"params": p[:1]}, {"params": p[1:], "weight_decouple": True}])
    with pytest.raises(ValueError, match="cautious"):
        ADOPT(p, cautious=True)
    with pytest.raises(ValueError, match="beta2"):
        ADOPT(p, betas=(0.9, 1.0))


def test_first_step_is_zero_then_clipped():
    tx = scale_by_adopt()
    params = [torch.zeros(3, dtype=torch.float64)]
    state = tx.init(params)
    g = [torch.tensor([1.0, -2.0, 1e-9], dtype=torch.float64)]
    u, state = tx.update(g, state, params)
    assert torch.equal(u[0], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(state.nu[0], g[0] * g[0]) and int(state.count) == 1
    u, state = tx.update([torch.tensor([1e6, -1e6, 0.0], dtype=torch.float64)], state, params)
    bound = 2 ** 0.25
    torch.testing.assert_close(u[0], torch.tensor([0.1 * bound, -0.1 * bound, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("clipping,nesterov", [(True, False), (False, False), (True, True)])
def test_block_compiles_without_recompiles(clipping, nesterov):
    tx = fo.chain(scale_by_adopt(use_clipping=clipping, nesterov=nesterov), fo.scale_by_learning_rate(1e-2))
    check_compiled_no_recompile(tx, [{"b1": 0.9, "b2": 0.99, "lr": 0.01, "eps": 1e-6},
                                     {"b1": 0.8, "b2": 0.999, "lr": 0.02, "eps": 1e-5}])


def test_alias_compiles_without_recompiles():
    check_compiled_no_recompile(adopt(weight_decay=0.1, weight_decouple=True),
                                [{"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.03, "weight_decay": 0.0}])


def test_vmap():
    check_vmap(adopt(lr=0.1, weight_decay=0.1), steps=4)


def test_none_grads_and_purity():
    check_none_grads_and_purity(adopt(weight_decay=0.1))


def test_state_checks_name_the_path():
    tx = scale_by_adopt()
    params = {"a": torch.zeros(3), "b": torch.zeros(2)}
    state = tx.init(params)
    bad = state._replace(mu={"a": torch.zeros(3), "b": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"state\.mu at \['b'\]"):
        tx.update(params, bad)
    with pytest.raises(ValueError, match="count"):
        tx.update(params, state._replace(count=torch.zeros(2)))
    assert isinstance(state, ScaleByAdoptState) and tx.hparams == ScaleByAdoptHParams()


def test_default_clip_matches_pytorch_optimizer_lambda():
    assert ADOPT.__init__.__defaults__[2](16.0) == math.pow(16.0, 0.25)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=str)
def test_complex_matches_pytorch_optimizer(dtype):
    """Complex parameters are stepped on their real view, as pytorch_optimizer does."""
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.ADOPT, ADOPT, {"weight_decay": 0.1}, dtype, steps=5,
                         make_tx=lambda: adopt(weight_decay=0.1))


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1}], ids=str)
def test_state_dict_cross_loads_with_pytorch_optimizer(kwargs):
    """state_dict() in pytorch_optimizer's layout (its keys, group["step"]); loads both ways."""
    po = pytest.importorskip("pytorch_optimizer")
    check_state_dict_cross_load(po.ADOPT, ADOPT, kwargs)


def test_group_without_grads_counts_the_step():
    po = pytest.importorskip("pytorch_optimizer")
    check_group_without_grads_counts_the_step(po.ADOPT, ADOPT, {})


def test_hypergradient_through_unrolled_updates():
    check_hypergradient(adopt(weight_decay=0.1))


def test_nesterov_is_optax_formula():
    """nesterov (optax's option, no reference package): update b1 m_t + (1-b1) clip(g / max(sqrt(nu), eps))."""
    b1, b2, eps = 0.8, 0.9, 1e-6
    tx = scale_by_adopt(b1, b2, eps, nesterov=True)
    params = [torch.zeros(4, dtype=torch.float64)]
    state = tx.init(params)
    m = nu = torch.zeros(4, dtype=torch.float64)
    for t in range(1, 6):
        g = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
        u, state = tx.update([g], state, params)
        if t == 1:
            nu = g * g
            expected = torch.zeros(4, dtype=torch.float64)
        else:
            normed = torch.clamp(g / torch.clamp_min(nu.sqrt(), eps), -t ** 0.25, t ** 0.25)
            m = b1 * m + (1 - b1) * normed
            expected = b1 * m + (1 - b1) * normed
            nu = b2 * nu + (1 - b2) * g * g
        torch.testing.assert_close(u[0], expected, rtol=1e-12, atol=1e-15)

"""Adan: scale_by_adan / fo.adan / compat.Adan against pytorch_optimizer.Adan."""

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
from compat.adan import Adan
from functional_optim.adan import ScaleByAdanHParams, ScaleByAdanState, adan, scale_by_adan

CASES = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "weight_decouple": True},
    {"max_grad_norm": 1.0},
    {"max_grad_norm": 100.0, "weight_decay": 0.05},
    {"lr": 0.1, "betas": (0.5, 0.9, 0.99), "eps": 1e-4},
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
    # pytorch_optimizer.Adan cannot step a 0-d parameter with max_grad_norm > 0 (its (1,)-shaped
    # clip factor does not broadcast into a 0-d gradient in place)
    run_reference_parity(po.Adan, Adan, kwargs, dtype, steps=6, make_tx=lambda: adan(**_functional_kwargs(kwargs)),
                         skip_0d="max_grad_norm" in kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1, "weight_decouple": True}])
def test_two_param_groups_and_lr_schedule(kwargs):
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.Adan, Adan, kwargs, torch.float64, steps=5,
                         second_group={"betas": (0.9, 0.9, 0.999), "eps": 1e-6, "weight_decay": 0.05})
    run_reference_parity(po.Adan, Adan, kwargs, torch.float64, steps=5,
                         lr_schedule=lambda t: 1e-2 / t, make_tx=lambda: adan(**kwargs))


def test_constructor_checks():
    p = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="weight_decouple"):
        Adan([{"params": p[:1]}, {"params": p[1:], "weight_decouple": True}])
    with pytest.raises(ValueError, match="use_gc"):
        Adan(p, use_gc=True)
    with pytest.raises(ValueError, match="max_grad_norm"):
        Adan(p, max_grad_norm=-1.0)


def test_first_difference_is_zero_per_leaf():
    """A leaf whose first gradient comes at step 2 starts with a zero difference (as the reference)."""
    tx = scale_by_adan(eps=0.0)
    params = [torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    state = tx.init(params)
    _, state = tx.update([torch.ones(2, dtype=torch.float64), None], state, params)
    assert state.has_prev[0].item() and not state.has_prev[1].item()
    g = torch.tensor([3.0, -1.0], dtype=torch.float64)
    _, state = tx.update([torch.ones(2, dtype=torch.float64), g], state, params)
    assert torch.equal(state.v[1], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(state.prev_grad[1], g)


def test_block_compiles_without_recompiles():
    tx = fo.chain(scale_by_adan(), fo.scale_by_learning_rate(1e-2))
    check_compiled_no_recompile(tx, [{"b1": 0.98, "b2": 0.92, "lr": 0.01, "eps_root": 0.0},
                                     {"b1": 0.9, "b2": 0.8, "lr": 0.02, "eps_root": 1e-8}])


@pytest.mark.parametrize("kwargs", [{"weight_decay": 0.1}, {"weight_decay": 0.1, "weight_decouple": True,
                                                           "max_grad_norm": 1.0}])
def test_alias_compiles_without_recompiles(kwargs):
    check_compiled_no_recompile(adan(**kwargs), [{"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.03, "weight_decay": 0.0}])


def test_vmap():
    check_vmap(adan(lr=0.1, weight_decay=0.1), steps=4)


def test_none_grads_and_purity():
    check_none_grads_and_purity(adan(weight_decay=0.1))


def test_state_checks_name_the_path():
    tx = scale_by_adan()
    params = {"a": torch.zeros(3), "b": torch.zeros(2)}
    state = tx.init(params)
    bad = state._replace(has_prev={"a": torch.zeros((), dtype=torch.bool), "b": torch.zeros(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"state\.has_prev at \['b'\]"):
        tx.update(params, bad)
    assert isinstance(state, ScaleByAdanState) and tx.hparams == ScaleByAdanHParams()


def test_maximize_is_the_reference_on_negated_gradients():
    """Ours: ``maximize`` == minimising with ``-g``. pytorch_optimizer.Adan(maximize=True) differs
    from that: it stores the previous gradient before negating, so its first difference is ``-2g``."""
    po = pytest.importorskip("pytorch_optimizer")
    from _parity import grads_for_step, make_params

    base = make_params(torch.float64)
    ref_p = [p.clone().requires_grad_() for p in base]
    our_p = [p.clone().requires_grad_() for p in base]
    ref, ours = po.Adan(ref_p, weight_decay=0.1), Adan(our_p, weight_decay=0.1, maximize=True)
    for step in range(1, 5):
        grads = grads_for_step(base, step)
        for p, q, g in zip(ref_p, our_p, grads):
            p.grad = None if g is None else -g.clone()
            q.grad = None if g is None else g.clone()
        ref.step()
        ours.step()
        for a, b in zip(our_p, ref_p):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=str)
def test_complex_matches_pytorch_optimizer(dtype):
    """Complex parameters are stepped on their real view, as pytorch_optimizer does."""
    po = pytest.importorskip("pytorch_optimizer")
    run_reference_parity(po.Adan, Adan, {"weight_decay": 0.1}, dtype, steps=5, make_tx=lambda: adan(weight_decay=0.1))


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.1, "weight_decouple": True}], ids=str)
def test_state_dict_cross_loads_with_pytorch_optimizer(kwargs):
    """state_dict() in pytorch_optimizer's layout (its keys, group["step"]); loads both ways."""
    po = pytest.importorskip("pytorch_optimizer")
    check_state_dict_cross_load(po.Adan, Adan, kwargs)


def test_group_without_grads_counts_the_step():
    po = pytest.importorskip("pytorch_optimizer")
    check_group_without_grads_counts_the_step(po.Adan, Adan, {"weight_decay": 0.1})


def test_gradient_clip_spans_param_groups():
    po = pytest.importorskip("pytorch_optimizer")
    for dtype in (torch.float64, torch.float32):
        run_reference_parity(po.Adan, Adan, {"max_grad_norm": 1.0, "weight_decay": 0.1}, dtype, steps=4,
                             second_group={"betas": (0.9, 0.9, 0.999), "lr": 0.01}, skip_0d=True)


def test_gradient_clip_leaves_the_callers_grads():
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.full((3,), 10.0)
    Adan([p], max_grad_norm=1.0).step()
    assert torch.equal(p.grad, torch.full((3,), 10.0))


def test_hypergradient_through_unrolled_updates():
    check_hypergradient(adan(weight_decay=0.1))

"""Gradient transformations against their torch counterparts; apply_if_finite; compile."""

import math

import pytest
import torch

import functional_optim as fo
from _composed import run_composed_parity
from _parity import assert_close, make_params
from functional_optim.combine import chain
from functional_optim.transforms import (
    ApplyIfFiniteState,
    ClipByGlobalNormHParams,
    add_decayed_weights,
    apply_if_finite,
    clip,
    clip_by_global_norm,
    flip_sign,
    global_norm,
    scale,
    scale_by_learning_rate,
    scale_by_sign,
    set_to_zero,
    trace,
    zero_nans,
)

DTYPES = [torch.float64, torch.float32]


def _grads(dtype, big=False):
    g = torch.Generator().manual_seed(3)
    params = make_params(dtype)
    grads = [torch.randn(p.shape, generator=g, dtype=dtype) * (10.0 if big else 0.01) for p in params]
    grads[1] = None
    return params, grads


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clip_by_global_norm_matches_clip_grad_norm_(dtype, big, norm_type):
    params, grads = _grads(dtype, big)
    ref = [p.clone().requires_grad_() for p in params]
    for r, g in zip(ref, grads):
        r.grad = None if g is None else g.clone()
    total = torch.nn.utils.clip_grad_norm_(ref, max_norm=1.0, norm_type=norm_type)
    tx = clip_by_global_norm(1.0, norm_type=norm_type)
    tree = dict(enumerate(grads))
    out, _ = tx.update(tree, tx.init(dict(enumerate(params))))
    assert out[1] is None
    assert_close(global_norm(tree, norm_type), total, dtype)
    for i, r in enumerate(ref):
        if r.grad is not None:
            assert_close(out[i], r.grad, dtype, f"leaf {i}")
    # a tensor max_norm gives the same result (it can then change without recompiling)
    out_t, _ = tx.update(tree, tx.init(tree), None, ClipByGlobalNormHParams(torch.tensor(1.0, dtype=torch.float64)))
    for i in (0, 2, 3):
        assert_close(out_t[i], out[i], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clip_matches_clip_grad_value_(dtype):
    params, grads = _grads(dtype, big=True)
    ref = [p.clone().requires_grad_() for p in params]
    for r, g in zip(ref, grads):
        r.grad = None if g is None else g.clone()
    torch.nn.utils.clip_grad_value_(ref, clip_value=0.5)
    out, _ = clip(0.5).update(dict(enumerate(grads)), clip(0.5).init(None))
    for i, r in enumerate(ref):
        assert (out[i] is None) == (r.grad is None)
        if r.grad is not None:
            assert torch.equal(out[i], r.grad)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decay_trace_lr_is_sgd(dtype, nesterov):
    """chain(add_decayed_weights, trace, scale_by_learning_rate) == torch.optim.SGD with momentum."""
    kw = dict(lr=0.1, momentum=0.8, weight_decay=0.05, nesterov=nesterov)
    tx = chain(add_decayed_weights(0.05), trace(0.8, nesterov=nesterov), scale_by_learning_rate(0.1))
    run_composed_parity(lambda ps: torch.optim.SGD(ps, **kw), tx, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_decayed_weights_then_adam_is_adam_l2(dtype):
    tx = chain(add_decayed_weights(0.1), fo.adam(lr=0.05, betas=(0.8, 0.9)))
    run_composed_parity(lambda ps: torch.optim.Adam(ps, lr=0.05, betas=(0.8, 0.9), weight_decay=0.1), tx, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clip_then_adamw_is_clip_grad_norm_then_adamw(dtype):
    tx = chain(clip_by_global_norm(0.5), fo.adamw(lr=0.05, weight_decay=0.1))
    run_composed_parity(lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1), tx, dtype,
                        before_step=lambda ps, step: torch.nn.utils.clip_grad_norm_(ps, 0.5))


def test_elementwise_transforms():
    u = {"a": torch.tensor([-2.0, 0.0, 3.0]), "b": None}
    p = {"a": torch.tensor([1.0, 2.0, 4.0]), "b": torch.tensor(1.0)}

    def run(tx):
        return tx.update(u, tx.init(p), p)[0]

    assert torch.equal(run(scale(0.5))["a"], u["a"] * 0.5)
    assert torch.equal(run(flip_sign())["a"], -u["a"])
    assert torch.equal(run(scale_by_sign())["a"], torch.sign(u["a"]))
    assert torch.equal(run(set_to_zero())["a"], torch.zeros(3))
    assert torch.equal(run(scale_by_learning_rate(0.1))["a"], u["a"] * -0.1)
    assert torch.equal(run(scale_by_learning_rate(0.1, flip_sign=False))["a"], u["a"] * 0.1)
    assert torch.equal(run(add_decayed_weights(0.5))["a"], u["a"] + 0.5 * p["a"])
    for tx in (scale(0.5), flip_sign(), scale_by_sign(), set_to_zero(), add_decayed_weights(0.5), clip(1.0)):
        assert run(tx)["b"] is None
    with pytest.raises(ValueError, match="needs params"):
        add_decayed_weights(0.1).update(u, add_decayed_weights(0.1).init(p))
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        add_decayed_weights(-1)
    with pytest.raises(TypeError, match="expects hparams of type ScaleHParams"):
        scale(1.0).update(u, scale(1.0).init(p), p, ClipByGlobalNormHParams(1.0))


def test_zero_nans_records_and_zeroes():
    tx = zero_nans()
    p = {"a": torch.zeros(3), "b": torch.zeros(2), "c": torch.zeros(())}
    state = tx.init(p)
    out, state = tx.update({"a": torch.tensor([1.0, math.nan, 2.0]), "b": torch.ones(2), "c": None}, state)
    assert torch.equal(out["a"], torch.tensor([1.0, 0.0, 2.0])) and out["c"] is None
    assert bool(state.found_nan["a"]) and not bool(state.found_nan["b"]) and not bool(state.found_nan["c"])


def test_apply_if_finite_skips_whole_step_and_counts():
    params = {"w": torch.randn(3, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    inner = fo.adam(lr=0.1)
    tx = apply_if_finite(inner)
    state = tx.init(params)
    ref_state = inner.init(params)
    good = {"w": torch.randn(3, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    bad = {"w": torch.tensor([1.0, math.inf, 0.0], dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}

    for grads, finite in [(good, True), (bad, False), ({"w": good["w"], "b": torch.full((2,), math.nan,
                                                        dtype=torch.float64)}, False), (good, True)]:
        updates, state = tx.update(grads, state, params)
        if finite:
            ref_updates, ref_state = inner.update(grads, ref_state, params)
            for k in params:
                assert torch.equal(updates[k], ref_updates[k])
        else:
            for k in params:
                assert torch.equal(updates[k], torch.zeros_like(params[k]))
        for field in ref_state._fields:  # inner state: exactly the state of the finite steps only
            if isinstance(getattr(ref_state, field), fo.Empty):
                assert isinstance(getattr(state.inner_state, field), fo.Empty)
                continue
            for k in params:
                ours, ref = getattr(state.inner_state, field)[k], getattr(ref_state, field)[k]
                assert torch.equal(ours, ref) if isinstance(ref, torch.Tensor) else ours == ref, (field, k)
        params = fo.apply_updates(params, updates)
        assert bool(state.last_finite) == finite
    assert int(state.total_notfinite) == 2 and int(state.notfinite_count) == 0
    assert isinstance(fo.combine.tree_get(state, ApplyIfFiniteState), ApplyIfFiniteState)


def test_apply_if_finite_max_consecutive_errors():
    params = {"w": torch.zeros(2)}
    tx = apply_if_finite(scale(1.0), max_consecutive_errors=2)
    state = tx.init(params)
    bad = {"w": torch.tensor([math.nan, 1.0])}
    applied = []
    for _ in range(4):
        u, state = tx.update(bad, state, params)
        applied.append(bool(torch.isnan(u["w"]).any()))
    assert applied == [False, False, True, True] and int(state.notfinite_count) == 4


def test_compiled_clip_skip_adam_no_recompile():
    """chain(clip, apply_if_finite(adam)) compiles in one graph; new tensor hparams and a skipped
    step do not recompile, and results equal eager."""
    from torch._dynamo.testing import CompileCounter

    tx = chain(clip_by_global_norm(1.0), apply_if_finite(fo.adam(lr=0.1)))
    params = [torch.randn(4, 3), torch.randn(3)]  # a list: dynamo (torch 2.13) cannot flatten an all-None dict with optree 0.20

    def step(params, grads, state, max_norm, lr):
        hp = (ClipByGlobalNormHParams(max_norm), tx.hparams[1]._replace(lr=lr))
        updates, state = tx.update(grads, state, params, hp)
        return fo.apply_updates(params, updates), state

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    state_c = state_e = tx.init(params)
    p_c = p_e = params
    for i in range(4):
        grads = [torch.randn(4, 3) * 5, torch.randn(3)]
        if i == 2:
            grads[1] = torch.full((3,), math.inf)
        args = (torch.tensor(1.0 / (i + 1)), torch.tensor(0.1 * (i + 1)))
        p_c, state_c = compiled(p_c, grads, state_c, *args)
        p_e, state_e = step(p_e, grads, state_e, *args)
        for a, b in zip(p_c, p_e):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1
    assert int(state_c[1].total_notfinite) == 1

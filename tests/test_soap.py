"""SOAP: scale_by_soap / fo.soap / compat.SOAP against pytorch_optimizer.SOAP.

The parity runs use ``_reference_parity``'s checks on SOAP's own parameter sets (the shared 2-D,
1-D, 0-d and non-contiguous parameters, plus a 3-D, a 4-D and one with a dimension above
``max_precondition_dim``), with ``precondition_frequency`` small enough that every run crosses
at least two basis refreshes. A ``None`` gradient at step 2 (parameter 1) makes that leaf skip a
step; in the state-dict checks the last parameter starts late (its first gradient at step 3).
"""

import copy
import inspect

import pytest
import torch

import _reference_parity
import functional_optim as fo
from _parity import assert_close, make_params, signature_shape
from _reference_parity import (
    check_compiled_no_recompile,
    check_group_without_grads_counts_the_step,
    check_hypergradient,
    check_none_grads_and_purity,
    check_state_dict_cross_load,
    check_vmap,
    run_reference_parity,
)
from compat.soap import SOAP
from functional_optim.soap import ScaleBySoapHParams, ScaleBySoapState, factor_sizes, merged_shape, scale_by_soap, soap


def _with_extra_shapes(dtype, seed=0):
    """The shared parameters plus a 3-D, a 12 x 3 (12 > max_precondition_dim=8 in some cases) and a 4-D one."""
    g = torch.Generator().manual_seed(seed + 1)
    real = torch.float64 if dtype == torch.float64 else dtype
    return make_params(dtype, seed) + [torch.randn(s, generator=g, dtype=real) for s in ((2, 3, 4), (12, 3),
                                                                                        (2, 3, 2, 3))]


def _mergeable(dtype, seed=0):
    """Parameters the reference can merge with ``max_precondition_dim=6`` (it fails to reshape a vector
    of 2..6 elements and a tensor of <= 6 elements): (5,3), (7,), (), (3,6)^T, (2,3,4), (2,3,2,3)."""
    g = torch.Generator().manual_seed(seed)
    shapes = ((5, 3), (7,), (), (3, 6), (2, 3, 4), (2, 3, 2, 3))
    params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    params[3] = params[3].t()
    return params


@pytest.fixture
def param_set(monkeypatch):
    """``param_set(make)``: the parity checks of ``_reference_parity`` run on ``make(dtype)``."""
    def use(make):
        monkeypatch.setattr(_reference_parity, "make_params", make)
    return use


def _functional_kwargs(kw):
    fk = dict(kw)
    if "betas" in fk:
        fk["b1"], fk["b2"] = fk.pop("betas")
    return fk


def _id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "default"


CASES = [
    {"precondition_frequency": 2},
    {"precondition_frequency": 2, "precondition_1d": True},
    {"precondition_frequency": 3, "precondition_1d": True, "max_precondition_dim": 8},
    {"precondition_frequency": 2, "normalize_gradient": True, "correct_bias": False},
    {"precondition_frequency": 2, "shampoo_beta": 0.7, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.0},
    {"precondition_frequency": 2, "maximize": True, "weight_decay": 0.1, "lr": 0.02},
    {"precondition_frequency": 2, "data_format": "channels_last"},  # no effect without merge_dims
]

MERGE_CASES = [
    {"precondition_frequency": 2, "merge_dims": True, "max_precondition_dim": 6},
    {"precondition_frequency": 2, "merge_dims": True, "max_precondition_dim": 6, "precondition_1d": True,
     "data_format": "channels_last"},
    {"precondition_frequency": 3, "merge_dims": True, "max_precondition_dim": 6, "normalize_gradient": True,
     "data_format": "channels_last"},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kwargs", CASES, ids=_id)
def test_matches_pytorch_optimizer(kwargs, dtype, param_set):
    po = pytest.importorskip("pytorch_optimizer")
    param_set(_with_extra_shapes)
    run_reference_parity(po.SOAP, SOAP, kwargs, dtype, steps=7, make_tx=lambda: soap(**_functional_kwargs(kwargs)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kwargs", MERGE_CASES, ids=_id)
def test_merge_dims_matches_pytorch_optimizer(kwargs, dtype, param_set):
    po = pytest.importorskip("pytorch_optimizer")
    param_set(_mergeable)
    run_reference_parity(po.SOAP, SOAP, kwargs, dtype, steps=7, make_tx=lambda: soap(**_functional_kwargs(kwargs)))


def test_two_param_groups_and_lr_schedule(param_set):
    po = pytest.importorskip("pytorch_optimizer")
    param_set(_with_extra_shapes)
    kwargs = {"precondition_frequency": 2, "precondition_1d": True}
    run_reference_parity(po.SOAP, SOAP, kwargs, torch.float64, steps=7,
                         second_group={"betas": (0.8, 0.9), "eps": 1e-4, "weight_decay": 0.05, "shampoo_beta": 0.5,
                                       "precondition_frequency": 3})
    run_reference_parity(po.SOAP, SOAP, kwargs, torch.float64, steps=7, lr_schedule=lambda t: 1e-2 / t,
                         make_tx=lambda: soap(**kwargs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_matches_pytorch_optimizer(dtype):
    """The reference's eigh falls back to float64 for half precisions (as ours); QR runs in float32."""
    po = pytest.importorskip("pytorch_optimizer")
    base = [p.to(dtype) for p in make_params(torch.float32)]
    ref_p = [p.clone().requires_grad_() for p in base]
    ref = po.SOAP(ref_p, lr=0.05, precondition_frequency=2, precondition_1d=True)
    tx = soap(lr=0.05, precondition_frequency=2, precondition_1d=True)
    params = [p.clone() for p in base]
    state = tx.init(params)
    for step in range(1, 7):
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(step)).to(dtype) for p in base]
        for p, g in zip(ref_p, grads):
            p.grad = g.clone()
        ref.step()
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        for a, b in zip(params, ref_p):
            torch.testing.assert_close(a, b.detach(), rtol=1e-2, atol=1e-2)


def test_merged_into_one_dimension_is_a_rotated_vector():
    """A shape that merges into one dimension (the reference fails to reshape it) is rotated as
    ``(numel,)``: equal to the reference on the flattened parameter with ``precondition_1d``."""
    po = pytest.importorskip("pytorch_optimizer")
    base = torch.randn(5, 3, dtype=torch.float64)
    ref_p = base.reshape(15).clone().requires_grad_()
    ref = po.SOAP([ref_p], precondition_frequency=2, precondition_1d=True)
    tx = soap(precondition_frequency=2, merge_dims=True)
    params = [base.clone()]
    state = tx.init(params)
    assert merged_shape((5, 3), 10000) == (15,) and state["soap"].gg[0][0].shape == (15, 15)
    for step in range(1, 7):
        g = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        ref_p.grad = g.reshape(15).clone()
        ref.step()
        updates, state = tx.update([g], state, params)
        params = fo.apply_updates(params, updates)
        assert_close(params[0].reshape(15), ref_p.detach(), torch.float64, f"step {step}")


def test_layout_rules():
    assert merged_shape((1, 2, 512, 1, 2048, 1, 3, 4), 1024) == (1024, 2048, 12)
    assert merged_shape((20, 3), 8) == (1, 20, 3)  # a first dimension above the bound leaves a leading 1
    assert factor_sizes((20, 3), max_precondition_dim=8, merge_dims=True) == [1, None, 3]
    assert factor_sizes((7,), max_precondition_dim=6, merge_dims=True, precondition_1d=True) == [None]
    assert factor_sizes((4,)) == [None] and factor_sizes((4,), precondition_1d=True) == [4]
    assert factor_sizes(()) == [] and factor_sizes((), merge_dims=True) == [1]
    # NHWC (4, 2, 3, 2) merges as NCHW (4, 2, 2, 3)
    assert factor_sizes((4, 2, 3, 2), max_precondition_dim=6, merge_dims=True, data_format="channels_last") == [4, 4, 3]
    assert factor_sizes((4, 2, 3, 2), max_precondition_dim=6, merge_dims=True) == [4, 6, 2]


def test_first_update_only_starts_the_preconditioner():
    """Update 1 is zero (weight decay included); the bases are the factors' eigenvectors, by
    decreasing eigenvalue; the moments stay zero."""
    tx = soap(weight_decay=0.5, precondition_1d=True)
    params = {"w": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}
    state = tx.init(params)
    grads = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in params.items()}
    updates, state = tx.update(grads, state, params)
    for u in updates.values():
        assert torch.equal(u, torch.zeros_like(u))
    inner = state["soap"]
    assert int(inner.count) == 1 and bool(inner.started["w"]) and bool(inner.started["b"])
    assert torch.equal(inner.mu["w"], torch.zeros(4, 3, dtype=torch.float64))
    factor = inner.gg[0]["w"]
    torch.testing.assert_close(factor, 0.05 * grads["w"] @ grads["w"].T, rtol=1e-14, atol=1e-15)
    q = inner.q[0]["w"]
    eig = torch.diagonal(q.T @ factor @ q)
    assert torch.all(eig[:-1] >= eig[1:] - 1e-12)
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)


def test_group_without_grads_counts_the_step():
    po = pytest.importorskip("pytorch_optimizer")
    check_group_without_grads_counts_the_step(po.SOAP, SOAP, {"precondition_frequency": 2, "precondition_1d": True})


@pytest.mark.parametrize("kwargs,make", [
    ({"precondition_frequency": 2, "precondition_1d": True}, _with_extra_shapes),
    ({"precondition_frequency": 2, "max_precondition_dim": 8, "weight_decay": 0.1}, _with_extra_shapes),
    ({"precondition_frequency": 2, "merge_dims": True, "max_precondition_dim": 6, "data_format": "channels_last"},
     _mergeable),
], ids=["1d", "max_dim", "merge_channels_last"])
def test_state_dict_cross_loads_with_pytorch_optimizer(kwargs, make, param_set):
    """state_dict() in pytorch_optimizer's layout (exp_avg, exp_avg_sq, GG, Q, precondition_frequency,
    shampoo_beta; group["step"]); loads both ways, also for a parameter without state yet."""
    po = pytest.importorskip("pytorch_optimizer")
    param_set(make)
    check_state_dict_cross_load(po.SOAP, SOAP, kwargs)


def test_state_dict_round_trip_and_bad_reference_lists():
    po = pytest.importorskip("pytorch_optimizer")
    ps = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    ref = po.SOAP(ps, precondition_1d=True)
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn(p.shape)
        ref.step()
    ours = SOAP([p.detach().clone().requires_grad_() for p in ps], precondition_1d=True)
    ours.load_state_dict(copy.deepcopy(ours.state_dict()))  # an empty optimizer's own state dict
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    again = SOAP([p.detach().clone().requires_grad_() for p in ps], precondition_1d=True)
    again.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert again.state_dict()["param_groups"][0]["step"] == 2
    bad = copy.deepcopy(ref.state_dict())
    bad["state"][1]["GG"] = []
    fresh = SOAP([p.detach().clone().requires_grad_() for p in ps], precondition_1d=True)
    with pytest.raises(ValueError, match="parameter 1"):
        fresh.load_state_dict(bad)
    assert not fresh.state  # nothing was loaded
    small_p = [p.detach().clone().requires_grad_() for p in ps]
    small = po.SOAP(small_p, max_precondition_dim=3)  # the 4 x 3 parameter's GG: [[], 3 x 3]
    for p in small_p:
        p.grad = torch.randn(p.shape)
    small.step()
    with pytest.raises(ValueError, match=r"parameter 0: GG\[0\]"):
        SOAP([p.detach().clone().requires_grad_() for p in ps]).load_state_dict(copy.deepcopy(small.state_dict()))


def _hp(**values):
    return values


def test_block_compiles_without_recompiles():
    """One graph for every count (refreshes at counts 2 and 4) and changing tensor hparams."""
    tx = fo.chain(scale_by_soap(precondition_1d=True, normalize_gradient=True), fo.scale_by_learning_rate(1e-2))
    check_compiled_no_recompile(tx, [_hp(b1=0.9, b2=0.95, shampoo_beta=0.9, eps=1e-8, precondition_frequency=2,
                                         lr=0.01),
                                     _hp(b1=0.8, b2=0.99, shampoo_beta=0.8, eps=1e-7, precondition_frequency=2,
                                         lr=0.02)], steps=6)


def test_alias_compiles_without_recompiles():
    tx = soap(precondition_frequency=2, precondition_1d=True, weight_decay=0.1)
    check_compiled_no_recompile(tx, [_hp(lr=0.01, weight_decay=0.1, precondition_frequency=2),
                                     _hp(lr=0.03, weight_decay=0.0, precondition_frequency=2)], steps=6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compiled_late_start_matches_eager(dtype):
    """A leaf whose first gradient comes at a refresh step (count 2): its start and both refreshes
    run inside the compiled graph (torch.cond) and equal the eager update bitwise. The late start's
    factor has rank one, so rounding decides the basis of its null space, and the gradient's
    components there are rounding noise divided by ``eps`` (in the reference too): only the same
    kernels on the same layouts agree. The bases keep LAPACK's column-major layout in both (a
    row-major copy in the graph made ``L Q`` another BLAS call, and the updates differed by 2e-3)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = soap(precondition_frequency=2, precondition_1d=True)
    gen = torch.Generator().manual_seed(3)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    params = [randn(4, 3), randn(5)]
    state = tx.init(params)
    for _ in range(2):
        _, state = tx.update([randn(4, 3), None], state, params)
    assert not bool(state["soap"].started[1])

    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    counter = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    p_c = p_e = params
    s_c = s_e = state
    for _ in range(3):
        grads = [randn(4, 3), randn(5)]
        p_c, s_c = compiled(p_c, grads, s_c)
        p_e, s_e = step(p_e, grads, s_e)
        for a, b in zip(p_c, p_e):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for tree_c, tree_e in zip(s_c["soap"].q, s_e["soap"].q):
        for a, b in zip(tree_c, tree_e):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
                assert a.stride() == b.stride() == (1, a.shape[0])
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_vmap():
    check_vmap(soap(lr=0.1, weight_decay=0.1, precondition_frequency=2, precondition_1d=True), steps=5)


def test_none_grads_and_purity():
    check_none_grads_and_purity(soap(weight_decay=0.1, precondition_1d=True, precondition_frequency=1))


def test_hypergradient_through_unrolled_updates():
    check_hypergradient(soap(lr=0.1, weight_decay=0.1, precondition_1d=True))


def test_func_grad_equals_autograd():
    """torch.func.grad (both branches of every choice computed, torch.where picks) gives the
    gradient that eager autograd gives (only the chosen branches run); the bases are constants."""
    tx = soap(lr=0.05, precondition_frequency=2, precondition_1d=True)
    x = torch.randn(6, 4, dtype=torch.float64)

    def loss_after(w):
        params = [w]
        state = tx.init(params)
        for step in range(5):
            grad = torch.tanh(x.T @ (x @ params[0]) + step)
            updates, state = tx.update([grad], state, params)
            params = fo.apply_updates(params, updates)
        return (params[0] ** 2).sum()

    w0 = torch.randn(4, dtype=torch.float64)
    w = w0.clone().requires_grad_()
    expected, = torch.autograd.grad(loss_after(w), w)
    torch.testing.assert_close(torch.func.grad(loss_after)(w0), expected, rtol=1e-12, atol=1e-14)


def test_state_checks_name_the_path():
    tx = scale_by_soap()
    params = {"a": torch.zeros(3, 2), "b": torch.zeros(2)}
    state = tx.init(params)
    assert isinstance(state, ScaleBySoapState) and tx.hparams == ScaleBySoapHParams()
    assert len(state.gg) == 2 and fo.tree.is_empty(state.gg[0]["b"])
    bad = state._replace(gg=({"a": torch.zeros(2, 2), "b": fo.EMPTY}, state.gg[1]))
    with pytest.raises(ValueError, match=r"state\.gg\[0\] at \['a'\]"):
        tx.update(params, bad)
    bad = state._replace(q=(state.q[0], {"a": state.q[1]["a"], "b": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match=r"state\.q\[1\] at \['b'\]"):
        tx.update(params, bad)
    with pytest.raises(ValueError, match=r"state\.mu at \['b'\]"):
        tx.update(params, state._replace(mu={"a": torch.zeros(3, 2), "b": torch.zeros(3)}))
    with pytest.raises(ValueError, match="count"):
        tx.update(params, state._replace(count=torch.zeros(2)))


def test_complex_and_sparse_are_refused_before_anything_changes():
    with pytest.raises(RuntimeError, match="complex"):
        soap().init([torch.zeros(2, dtype=torch.complex64)])
    p = torch.zeros(3, 2, requires_grad=True)
    opt = SOAP([p])
    p.grad = torch.eye(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3, 2))


def test_state_loads_with_weights_only(tmp_path):
    tx = soap(precondition_1d=True)
    params = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    state = tx.init(params)
    _, state = tx.update({k: torch.randn(v.shape) for k, v in params.items()}, state, params)
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    for a, b in zip(fo.tree.flatten(loaded)[0], fo.tree.flatten(state)[0]):
        assert (fo.tree.is_empty(a) and fo.tree.is_empty(b)) or torch.equal(a, b)


BAD_ARGS = [
    {"lr": -1.0},
    {"betas": (1.0, 0.9)},
    {"betas": (0.9, -0.1)},
    {"shampoo_beta": -0.1},
    {"weight_decay": -1.0},
    {"precondition_frequency": 0},
    {"max_precondition_dim": 0},
    {"eps": -1.0},
]


@pytest.mark.parametrize("kwargs", BAD_ARGS, ids=_id)
def test_constructor_checks_match_pytorch_optimizer(kwargs):
    """The reference's messages, as ValueError (its NegativeLRError is a plain Exception)."""
    po = pytest.importorskip("pytorch_optimizer")
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(Exception) as ref_error:
        po.SOAP(p, **kwargs)
    with pytest.raises(ValueError) as our_error:
        SOAP(p, **kwargs)
    assert str(our_error.value) == str(ref_error.value)
    with pytest.raises(ValueError):
        soap(**_functional_kwargs(kwargs))


def test_signature_defaults_and_static_flags():
    po = pytest.importorskip("pytorch_optimizer")
    assert signature_shape(SOAP.__init__) == signature_shape(po.SOAP.__init__)
    p = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    assert SOAP(p).param_groups[0].keys() == po.SOAP(p).param_groups[0].keys()
    assert str(SOAP(p)) == "SOAP" and SOAP(p, data_format="channels_last").data_format == "channels_last"
    for key, value in (("merge_dims", True), ("max_precondition_dim", 8), ("precondition_1d", True),
                       ("correct_bias", False), ("normalize_gradient", True)):
        with pytest.raises(ValueError, match=key):
            SOAP([{"params": p[:1]}, {"params": p[1:], key: value}])
    SOAP([{"params": p[:1]}, {"params": p[1:], "precondition_frequency": 3, "shampoo_beta": 0.5}])
    with pytest.raises(ValueError, match="data_format"):
        SOAP(p, data_format="nhwc")
    assert inspect.signature(soap).parameters["lr"].default == 3e-3


def test_closure_and_step_hooks():
    """The closure's loss is returned and each step hook runs once; a twin loaded from the state dict
    steps alike."""
    p = torch.randn(3, 2, requires_grad=True)
    opt = SOAP([p], lr=0.1, precondition_frequency=1)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    expected = float((p.detach() ** 2).sum())
    assert float(opt.step(closure).detach()) == expected
    assert calls == ["pre", "post"]
    twin_p = p.detach().clone().requires_grad_()
    twin = SOAP([twin_p], lr=0.1, precondition_frequency=1)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for o, q in ((opt, p), (twin, twin_p)):
        q.grad = torch.ones(3, 2)
        o.step()
    assert torch.equal(twin_p, p) and not torch.equal(p.detach(), torch.zeros(3, 2))

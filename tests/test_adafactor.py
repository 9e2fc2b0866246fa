"""Adafactor: functional and compat against torch.optim.Adafactor, every flag and implementation."""

import copy
import itertools

import pytest
import torch

import compat.adafactor as compat_adafactor
import functional_optim as fo
from _parity import (
    IMPLS, TOL, assert_close, assert_state_dicts_match, run_compat_parity, run_functional_parity, signature_shape,
)
from functional_optim.adafactor import AdafactorHParams, adafactor

Adafactor = compat_adafactor.Adafactor
IMPLEMENTATIONS = ["forloop", "foreach"]  # torch has no fused Adafactor
FLAGS = [
    dict(maximize=m, weight_decay=w, eps=e)
    for m, w, e in itertools.product([False, True], [0.0, 0.1], [(None, 1e-3), (1e-4, 0.5)])
]
DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_functional_matches_torch(flags, dtype):
    kwargs = dict(lr=0.05, beta2_decay=-0.6, d=1.5, **flags)
    run_functional_parity(torch.optim.Adafactor, lambda: adafactor(**kwargs), kwargs, dtype)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compat_matches_torch(impl, flags, dtype):
    kwargs = dict(lr=0.05, beta2_decay=-0.6, d=1.5, **flags, **IMPLS[impl])
    run_compat_parity(torch.optim.Adafactor, Adafactor, kwargs, dtype, swap_at=2)


@pytest.mark.parametrize("foreach", [None, False, True])
@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64], ids=str)
def test_compat_tensor_lr_matches_torch(foreach, lr_dtype):
    """A tensor lr is used as torch uses it (Python min/max on it, so a float32 lr stays float32)."""
    kwargs = dict(lr=torch.tensor(0.05, dtype=lr_dtype), weight_decay=0.1, foreach=foreach)
    run_compat_parity(torch.optim.Adafactor, Adafactor, kwargs, torch.float64, two_groups=False, swap_at=1)


def test_functional_tensor_hparams_match_torch():
    """0-d float64 tensor hparams give torch's result (the pure path computes scalars in float64)."""
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    kwargs = dict(lr=t(0.05), beta2_decay=t(-0.6), eps=(t(1e-4), t(0.5)), d=t(1.5), weight_decay=t(0.1))
    floats = {k: (tuple(float(e) for e in v) if isinstance(v, tuple) else float(v)) for k, v in kwargs.items()}
    run_functional_parity(torch.optim.Adafactor, lambda: adafactor(**kwargs), floats, torch.float64)


def _step_both(ref_params, our_params, opt_ref, opt_ours, grads_per_step):
    for grads in grads_per_step:
        for r, o, g in zip(ref_params, our_params, grads):
            r.grad, o.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_ours.step()
        for r, o in zip(ref_params, our_params):
            assert_close(o.detach(), r.detach(), r.dtype)
        assert_state_dicts_match(opt_ours.state_dict(), opt_ref.state_dict(), torch.float64)


@pytest.mark.parametrize("foreach", [False, True])
def test_compat_batched_and_mixed_dtype_params(foreach):
    """3-d params factor over the last two dims; with mixed dtypes in one group, eps1=None is
    resolved once per group as torch does. Tiny grads make eps1 decide the step."""
    gen = torch.Generator().manual_seed(3)
    shapes_dtypes = [((4,), torch.float32), ((2, 3, 5), torch.float64), ((3, 2), torch.float32), ((), torch.float64)]
    params = [torch.randn(s, generator=gen, dtype=dt) for s, dt in shapes_dtypes]
    ref = [p.clone().requires_grad_() for p in params]
    ours = [p.clone().requires_grad_() for p in params]
    grads = [[1e-9 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params] for _ in range(3)]
    _step_both(ref, ours, torch.optim.Adafactor(ref, foreach=foreach), Adafactor(ours, foreach=foreach), grads)


def test_functional_batched_and_mixed_dtype_params():
    """eps1=None takes the dtype of the first leaf in the tree's flattening order (dict keys sorted)."""
    gen = torch.Generator().manual_seed(4)
    params = {"a": torch.randn(4, generator=gen), "b": torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)}
    ref = [p.clone().requires_grad_() for p in params.values()]
    opt_ref = torch.optim.Adafactor(ref, weight_decay=0.1)
    tx = adafactor(weight_decay=0.1)
    state = tx.init(params)
    for _ in range(3):
        grads = {k: 1e-9 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}
        for r, g in zip(ref, grads.values()):
            r.grad = g.clone()
        opt_ref.step()
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        for (k, p), r in zip(params.items(), ref):
            assert_close(p, r.detach(), p.dtype, k)
            for key, value in opt_ref.state[r].items():
                assert_close(getattr(state, key)[k].to(value.dtype), value, p.dtype, f"{k}.{key}")


def test_factored_state_is_m_plus_n():
    m, n = 64, 32
    tx = adafactor()
    state = tx.init({"w": torch.zeros(m, n), "b": torch.zeros(n)})
    assert state.row_var["w"].shape == (m, 1) and state.col_var["w"].shape == (1, n)
    no_tensor = lambda x: not isinstance(x, torch.Tensor)  # noqa: E731 - an unused slot holds no tensor
    assert no_tensor(state.variance["w"]) and no_tensor(state.row_var["b"]) and no_tensor(state.col_var["b"])
    assert state.variance["b"].shape == (n,)
    params = {"w": torch.ones(m, n), "b": torch.ones(n)}
    _, state = tx.update({"w": torch.randn(m, n), "b": torch.randn(n)}, state, params)
    assert state.row_var["w"].numel() + state.col_var["w"].numel() == m + n
    assert no_tensor(state.variance["w"])

    w = torch.nn.Parameter(torch.randn(m, n))
    opt = Adafactor([w])
    w.grad = torch.randn(m, n)
    opt.step()
    assert list(opt.state[w]) == ["step", "row_var", "col_var"]
    assert sum(t.numel() for k, t in opt.state[w].items() if k != "step") == m + n


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return type(e), str(e)
    return None


BAD_KWARGS = [
    dict(lr=-1.0),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(lr=None),
    dict(beta2_decay=0.5),
    dict(eps=(-1e-3, 1e-3)),
    dict(eps=(None, -1.0)),
    dict(eps=1e-3),
    dict(d=0.5),
    dict(weight_decay=-0.1),
    dict(lr=-1.0, d=0.5),  # first failing check wins
]


@pytest.mark.parametrize("kwargs", BAD_KWARGS, ids=str)
def test_validation_errors_match_torch(kwargs):
    p = [torch.nn.Parameter(torch.randn(2))]
    expected = _raised(lambda: torch.optim.Adafactor(p, **kwargs))
    assert expected is not None
    assert _raised(lambda: Adafactor(p, **kwargs)) == expected
    assert _raised(lambda: adafactor(**kwargs)) == expected


@pytest.mark.parametrize("case", ["complex", "sparse"])
def test_complex_and_sparse_raise_torch_errors(case):
    dtype = torch.complex64 if case == "complex" else torch.float32
    make_grad = (lambda p: p.to_sparse()) if case == "sparse" else (lambda p: p)
    p_ref, p_ours = (torch.randn(3, dtype=dtype, requires_grad=True) for _ in range(2))
    p_ref.grad, p_ours.grad = make_grad(torch.ones(3, dtype=dtype)), make_grad(torch.ones(3, dtype=dtype))
    expected = _raised(torch.optim.Adafactor([p_ref]).step)
    assert expected is not None and expected[0] is RuntimeError
    assert _raised(Adafactor([p_ours]).step) == expected
    params = [p_ours.detach()]
    if case == "complex":  # the functional optimizer refuses complex params already at init
        expected_init = (RuntimeError, "adafactor does not support complex parameters")
        assert _raised(lambda: adafactor().init(params)) == expected_init
    else:
        tx = adafactor()
        assert _raised(lambda: tx.update([p_ours.grad], tx.init(params), params)) == expected


def test_grad_scaling_is_rejected_like_torch():
    p_ref, p_ours = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    p_ref.grad, p_ours.grad = torch.ones(3), torch.ones(3)
    opt_ref, opt_ours = torch.optim.Adafactor([p_ref]), Adafactor([p_ours])
    opt_ref.grad_scale = opt_ours.grad_scale = torch.tensor(1.0)
    expected = _raised(opt_ref.step)
    assert expected is not None and _raised(opt_ours.step) == expected


def test_setstate_and_deepcopy_like_torch():
    p_ref, p_ours = torch.randn(3, 2, requires_grad=True), torch.randn(3, 2, requires_grad=True)
    opts = []
    for cls, p in [(torch.optim.Adafactor, p_ref), (Adafactor, p_ours)]:
        p.grad = torch.ones(3, 2)
        opt = cls([p])
        opt.step()
        opt.state[p]["step"] = 1.0  # an old checkpoint with a Python step
        state = opt.__getstate__()
        del state["defaults"]["foreach"]
        for g in state["param_groups"]:
            del g["foreach"]
        opt.__setstate__(state)
        opts.append(copy.deepcopy(opt))
    assert_state_dicts_match(opts[1].state_dict(), opts[0].state_dict(), torch.float32)


def test_step_runs_without_grad_and_returns_closure_loss():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = Adafactor([p])

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # in-place updates of a leaf would raise unless step is no_grad
        loss = opt.step(closure)
    assert torch.is_tensor(loss) and p.is_leaf and p.requires_grad


def test_functional_update_compiles_without_graph_breaks_or_recompiles():
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    tx = adafactor()
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    grads = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    state = tx.init(params)

    def hp(lr, wd, d):
        t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
        return AdafactorHParams(lr=t(lr), beta2_decay=t(-0.8), eps=(None, t(1e-3)), d=t(d), weight_decay=t(wd))

    counters.clear()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    frames_after_first_call = None
    for lr, wd, d in [(0.05, 0.1, 1.0), (0.002, 0.0, 1.3), (0.3, 0.2, 2.0)]:
        expected_updates, expected_state = tx.update(grads, state, params, hp(lr, wd, d))
        updates, new_state = compiled(grads, state, params, hp(lr, wd, d))
        rtol, atol = TOL[torch.float64]
        torch.testing.assert_close(updates, expected_updates, rtol=rtol, atol=atol)
        torch.testing.assert_close(tuple(new_state), tuple(expected_state), rtol=rtol, atol=atol)
        params, state = fo.apply_updates(params, updates), new_state
        frames_after_first_call = frames_after_first_call or counter.frame_count
    # one graph; a cold first compile may run the backend twice (dynamo restarts its analysis
    # once to tensorify scalars), but changing the tensor hparams never compiles again
    assert counters["stats"]["unique_graphs"] == 1
    assert counter.frame_count == frames_after_first_call


def test_signature_and_defaults_match_torch():
    assert signature_shape(Adafactor.__init__) == signature_shape(torch.optim.Adafactor.__init__)
    assert signature_shape(adafactor) == [
        s for s in signature_shape(torch.optim.Adafactor.__init__) if s[0] not in ("self", "params", "foreach")
    ]
    p = [torch.nn.Parameter(torch.randn(2))]
    assert Adafactor(p).defaults == torch.optim.Adafactor(p).defaults

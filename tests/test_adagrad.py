"""Adagrad: functional and compat against torch.optim.Adagrad, every flag and implementation.

Expected values always come from running ``torch.optim.Adagrad`` on the same inputs.
"""

import copy
import itertools

import pytest
import torch
import torch._dynamo.testing

from compat.adagrad import Adagrad
from conftest import requires_cuda
from _versions import TORCH_VERSION, adagrad_creates_state_of_added_groups, skip_unless_torch_adagrad_fused_on
from functional_optim import apply_updates
from functional_optim.adagrad import AdagradHParams, adagrad
from _parity import (
    IMPLS,
    assert_close,
    assert_state_dicts_match,
    grads_for_step,
    make_params,
    run_compat_parity,
    run_functional_parity,
    signature_shape,
)

FLAGS = [
    dict(maximize=m, weight_decay=w, lr_decay=d, initial_accumulator_value=a)
    for m, w, (d, a) in itertools.product([False, True], [0.0, 0.1], [(0.0, 0.0), (0.05, 0.3)])
]
SPARSE_FLAGS = [f for f in FLAGS if f["weight_decay"] == 0.0]
DTYPES = [torch.float64, torch.float32, torch.complex128]
HPARAMS = dict(lr=0.05, eps=1e-6)


def _functional_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in ("foreach", "fused", "differentiable")}


def sparse_grads_for_step(params, step):
    """:func:`grads_for_step`, but 2-D params get uncoalesced sparse COO grads.

    The first 2-D param gets a hybrid grad (whole rows, as ``nn.Embedding(sparse=True)``), the
    other one element-wise entries; both repeat an index so that coalescing matters.
    """
    g = torch.Generator().manual_seed(7000 + step)
    out = []
    for i, (p, dense) in enumerate(zip(params, grads_for_step(params, step))):
        if dense is None or p.dim() != 2:
            out.append(dense)
            continue
        rows = torch.tensor([0, p.shape[0] - 1, 0, 1])
        if i == 0:
            values = torch.randn(len(rows), p.shape[1], generator=g, dtype=dense.real.dtype)
            indices = rows[None]
        else:
            values = torch.randn(len(rows), generator=g, dtype=dense.real.dtype)
            indices = torch.stack([rows, torch.tensor([2, 0, 2, 1])])
        if p.dtype.is_complex:
            values = torch.complex(values, torch.randn(values.shape, generator=g, dtype=values.dtype))
        out.append(torch.sparse_coo_tensor(indices, values, p.shape))
    return out


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_functional_matches_torch(flags, dtype):
    kwargs = dict(HPARAMS, **flags)
    run_functional_parity(torch.optim.Adagrad, lambda: adagrad(**kwargs), kwargs, dtype)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compat_matches_torch(impl, flags, dtype):
    if impl == "fused" and dtype.is_complex:
        pytest.skip("torch's fused Adagrad rejects complex params (tested below)")
    kwargs = dict(HPARAMS, **flags, **IMPLS[impl])
    run_compat_parity(torch.optim.Adagrad, Adagrad, kwargs, dtype, swap_at=2)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compat_tensor_lr_matches_torch(impl, dtype):
    kwargs = dict(lr=torch.tensor(0.05), lr_decay=0.05, weight_decay=0.1, **IMPLS[impl])
    run_compat_parity(torch.optim.Adagrad, Adagrad, kwargs, dtype, two_groups=False, swap_at=2)


def test_functional_tensor_hparams_match_float_hparams():
    params = {"w": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn((), dtype=torch.float64)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    tx = adagrad(weight_decay=0.1, lr_decay=0.05)
    floats = AdagradHParams(lr=0.05, lr_decay=0.05, weight_decay=0.1, eps=1e-6)
    tensors = AdagradHParams(*(torch.tensor(v, dtype=torch.float64) for v in floats))
    state = tx.init(params)
    for _ in range(3):
        u_f, s_f = tx.update(grads, state, params, floats)
        u_t, s_t = tx.update(grads, state, params, tensors)
        for k in params:
            assert_close(u_t[k], u_f[k], torch.float64, k)
            assert_close(s_t.sum[k], s_f.sum[k], torch.float64, k)
        params, state = apply_updates(params, u_f), s_f


# ---------------------------------------------------------------------------------- sparse
@pytest.mark.parametrize("impl", ["forloop", "foreach"])
@pytest.mark.parametrize("flags", SPARSE_FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compat_sparse_matches_torch(impl, flags, dtype):
    kwargs = dict(HPARAMS, **flags, **IMPLS[impl])
    run_compat_parity(torch.optim.Adagrad, Adagrad, kwargs, dtype, swap_at=2, grad_fn=sparse_grads_for_step)


@pytest.mark.parametrize("flags", SPARSE_FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_functional_sparse_matches_torch(flags, dtype):
    kwargs = dict(HPARAMS, **flags)
    run_functional_parity(torch.optim.Adagrad, lambda: adagrad(**kwargs), kwargs, dtype,
                          grad_fn=sparse_grads_for_step)


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


def _step_with(cls, params, grads, **kwargs):
    ps = [p.clone().requires_grad_() for p in params]
    opt = cls(ps, **kwargs)
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()


@pytest.mark.parametrize("impl", list(IMPLS))
def test_sparse_grad_errors_match_torch(impl):
    """weight_decay with a sparse grad, and fused with a sparse grad, raise torch's errors."""
    params = [torch.randn(5, 3), torch.randn(4)]
    grads = sparse_grads_for_step(params, 0)
    cases = [dict(weight_decay=0.1)] + ([dict()] if impl == "fused" else [])
    for kwargs in cases:
        kwargs.update(IMPLS[impl])
        expected = _raised(lambda: _step_with(torch.optim.Adagrad, params, grads, **kwargs))
        assert _raised(lambda: _step_with(Adagrad, params, grads, **kwargs)) == expected
    if impl == "forloop":
        tx = adagrad(weight_decay=0.1)
        tree = dict(enumerate(params))
        expected = _raised(lambda: _step_with(torch.optim.Adagrad, params, grads, weight_decay=0.1))
        assert _raised(lambda: tx.update(dict(enumerate(grads)), tx.init(tree), tree)) == expected


@pytest.mark.parametrize("complex_first", [True, False])
def test_fused_complex_errors_match_torch(complex_first):
    params = [torch.randn(3, dtype=torch.complex64), torch.randn(2)]
    if not complex_first:
        params.reverse()
    grads = [torch.randn_like(p) for p in params]
    expected = _raised(lambda: _step_with(torch.optim.Adagrad, params, grads, fused=True))
    assert _raised(lambda: _step_with(Adagrad, params, grads, fused=True)) == expected


# ---------------------------------------------------------------------------------- API
def test_signature_and_defaults_match_torch():
    assert signature_shape(Adagrad.__init__) == signature_shape(torch.optim.Adagrad.__init__)
    p = [torch.nn.Parameter(torch.randn(2))]
    assert Adagrad(p).defaults == torch.optim.Adagrad(p).defaults


BAD_KWARGS = [
    dict(lr=-1.0),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(lr=torch.tensor(-0.1)),
    dict(lr_decay=-0.5),
    dict(weight_decay=-1e-2),
    dict(initial_accumulator_value=-1.0),
    dict(eps=-1e-10),
    dict(lr=-1.0, eps=-1.0),  # the first failing check wins
    dict(fused=True, differentiable=True),
    dict(fused=True, foreach=True),
]


@pytest.mark.parametrize("kwargs", BAD_KWARGS, ids=str)
def test_validation_errors_match_torch(kwargs):
    params = [torch.nn.Parameter(torch.randn(2))]
    expected = _raised(lambda: torch.optim.Adagrad(params, **kwargs))
    assert _raised(lambda: Adagrad(params, **kwargs)) == expected
    functional = {k: v for k, v in kwargs.items() if k in AdagradHParams._fields + ("initial_accumulator_value",)}
    if len(functional) == len(kwargs):
        assert _raised(lambda: adagrad(**functional)) == expected


@pytest.mark.parametrize("fused", [None, True])
@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64], ids=str)
def test_state_created_at_construction(fused, default_dtype):
    """step and sum exist before any step, with torch's dtypes and devices, for every group."""
    torch.set_default_dtype(default_dtype)
    params = [torch.randn(3, 2), torch.randn(4), torch.randn(3, dtype=torch.complex128)]
    if fused:
        params.pop()
    groups = lambda ps: [{"params": ps[:1], "initial_accumulator_value": 9.0}, {"params": ps[1:]}]  # noqa: E731
    kwargs = dict(initial_accumulator_value=0.25, fused=fused)
    ref = torch.optim.Adagrad(groups([p.clone() for p in params]), **kwargs)
    ours = Adagrad(groups([p.clone() for p in params]), **kwargs)
    assert len(ours.state) == len(params)
    assert_state_dicts_match(ours.state_dict(), ref.state_dict(), torch.float64)


def test_add_param_group_state_matches_torch():
    """A group added later gets its state on its first step, from the constructor's accumulator value.

    torch 2.11 creates state only in the constructor (a group added later fails there with
    ``KeyError: 'sum'``); there the reference is torch given both groups at construction, whose
    state (constructor's accumulator value for every group) is what torch >= 2.12 creates lazily.
    """
    def run(cls, add_later):
        torch.manual_seed(0)
        first, later = torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True)
        later_group = {"params": [later], "initial_accumulator_value": 3.0, "lr": 0.1}
        if add_later:
            opt = cls([first], initial_accumulator_value=0.5)
            opt.add_param_group(later_group)
            assert len(opt.state) == 1
        else:
            opt = cls([{"params": [first]}, later_group], initial_accumulator_value=0.5)
        for p in (first, later):
            p.grad = torch.ones_like(p)
        opt.step()
        return opt, later

    ref, ref_p = run(torch.optim.Adagrad, add_later=adagrad_creates_state_of_added_groups())
    ours, our_p = run(Adagrad, add_later=True)
    assert_close(our_p.detach(), ref_p.detach(), torch.float32)
    assert_state_dicts_match(ours.state_dict(), ref.state_dict(), torch.float32)


def test_setstate_converts_float_steps_like_torch():
    results = []
    for cls in (torch.optim.Adagrad, Adagrad):
        p = torch.randn(3, requires_grad=True)
        opt = cls([p])
        state = opt.__getstate__()
        state["state"][p]["step"] = 4.0
        for group in state["param_groups"]:
            del group["foreach"], group["maximize"], group["differentiable"], group["fused"]
        opt.__setstate__(state)
        step = opt.state[p]["step"]
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        results.append((step.dtype, step.device, float(step), group))
    assert results[1] == results[0]


def test_share_memory_shares_sums():
    p = torch.randn(4, requires_grad=True)
    ref, ours = torch.optim.Adagrad([p]), Adagrad([p.detach().clone().requires_grad_()])
    ref.share_memory()
    ours.share_memory()
    assert all(s["sum"].is_shared() for s in ours.state.values())
    assert [s["sum"].is_shared() for s in ours.state.values()] == [s["sum"].is_shared() for s in ref.state.values()]


@pytest.mark.parametrize("found_inf", [0.0, 1.0])
def test_fused_grad_scaler_contract_matches_torch(found_inf):
    """``grad_scale``/``found_inf`` set by GradScaler reach the fused kernel as in torch."""
    params = [torch.randn(3, 2), torch.randn(4)]
    results = []
    for cls in (torch.optim.Adagrad, Adagrad):
        ps = [p.clone().requires_grad_() for p in params]
        opt = cls(ps, lr=0.1, fused=True)
        # torch >= 2.12 tells GradScaler to hand over grad_scale/found_inf; 2.11 lets GradScaler
        # unscale (its step still honours the attributes, set by hand here); compat follows torch
        results.append(getattr(opt, "_step_supports_amp_scaling", False))
        opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(found_inf)
        for p in ps:
            p.grad = torch.full_like(p, 2.0)
        opt.step()
        results.append((ps, opt.state_dict()))
    ref_supports, (ref_ps, ref_sd), our_supports, (our_ps, our_sd) = results
    assert our_supports == ref_supports
    for r, o in zip(ref_ps, our_ps):
        assert_close(o.detach(), r.detach(), torch.float32)
    assert_state_dicts_match(our_sd, ref_sd, torch.float32)


# ---------------------------------------------------------------------------------- autograd
@pytest.mark.parametrize("flags", [dict(initial_accumulator_value=0.1), FLAGS[-1]], ids=str)
def test_differentiable_matches_torch_and_grad_flows(flags):
    """differentiable=True: same values as torch, and the same gradient through two steps."""
    results = []
    for cls in (torch.optim.Adagrad, Adagrad):
        torch.manual_seed(0)
        w = torch.randn(3, dtype=torch.float64, requires_grad=True)
        params = [torch.randn(3, dtype=torch.float64), torch.randn((), dtype=torch.float64)]
        opt = cls(params, lr=0.1, differentiable=True, **flags)
        for _ in range(2):
            params[0].grad = w * params[0].detach().clone()
            params[1].grad = (w.sum() * 0.5).detach()
            opt.step()
        (dw,) = torch.autograd.grad(params[0].sum(), w)
        results.append(([p.detach() for p in params], dw, opt.state_dict()))
    (ref_p, ref_dw, ref_sd), (our_p, our_dw, our_sd) = results
    for r, o in zip(ref_p, our_p):
        assert_close(o, r, torch.float64)
    assert_close(our_dw, ref_dw, torch.float64)
    for pid, entry in ref_sd["state"].items():
        assert_close(our_sd["state"][pid]["sum"].detach(), entry["sum"].detach(), torch.float64)


def test_functional_update_leaves_state_untouched():
    params = {"w": torch.randn(3, 2), "e": torch.randn(5, 3)}
    tx = adagrad(lr_decay=0.1, initial_accumulator_value=0.2)
    state = tx.init(params)
    before = copy.deepcopy(state)
    grads = {"w": torch.randn(3, 2), "e": sparse_grads_for_step([params["e"]], 0)[0]}
    tx.update(grads, state, params)
    for name in state._fields:
        for k in params:
            assert torch.equal(getattr(state, name)[k], getattr(before, name)[k]), (name, k)


def test_functional_update_compiles_without_recompiling_on_new_hparams():
    """fullgraph=True; changing 0-d tensor hparams between calls reuses the one graph."""
    params = {"w": torch.randn(3, 2), "b": torch.randn(())}
    tx = adagrad(maximize=True, initial_accumulator_value=0.1)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state_c = state_e = tx.init(params)
    params_c = params_e = params
    for i in range(3):
        hp = AdagradHParams(*(torch.tensor(v) for v in (0.1 * (i + 1), 0.01 * i, 0.05, 1e-8)))
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        updates_c, state_c = compiled(grads, state_c, params_c, hp)
        updates_e, state_e = tx.update(grads, state_e, params_e, hp)
        params_c, params_e = apply_updates(params_c, updates_c), apply_updates(params_e, updates_e)
        for k in params:
            assert_close(params_c[k], params_e[k], torch.float32, k)
            assert_close(state_c.sum[k], state_e.sum[k], torch.float32, k)
            assert float(state_c.step[k]) == float(state_e.step[k]) == i + 1
    assert counter.frame_count == 1


# ---------------------------------------------------------------------------------- CUDA
@requires_cuda
@pytest.mark.parametrize("impl", list(IMPLS) + ["default"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compat_matches_torch_on_cuda(impl, dtype):
    if impl == "fused":
        skip_unless_torch_adagrad_fused_on("cuda")
    kwargs = dict(HPARAMS, lr_decay=0.05, weight_decay=0.1, maximize=True, **IMPLS.get(impl, {}))
    _run_on_cuda(kwargs, dtype, grads_for_step)


@requires_cuda
@pytest.mark.parametrize("impl", ["forloop", "foreach", "default"])
def test_compat_sparse_matches_torch_on_cuda(impl):
    kwargs = dict(HPARAMS, lr_decay=0.05, **IMPLS.get(impl, {}))
    error = _torch_error_on_cuda(kwargs, torch.float32, sparse_grads_for_step)
    if error is not None and TORCH_VERSION < (2, 13):
        pytest.skip(f"torch {torch.__version__}'s own torch.optim.Adagrad fails on sparse CUDA grads "
                    f"(this test runs from torch 2.13 on): {error}")
    _run_on_cuda(kwargs, torch.float32, sparse_grads_for_step)


def _torch_error_on_cuda(kwargs, dtype, grad_fn):
    """torch.optim.Adagrad alone on :func:`_run_on_cuda`'s inputs: ``None``, or the error it raises."""
    params = [p.cuda().requires_grad_() for p in make_params(dtype)]
    opt = torch.optim.Adagrad(params, **kwargs)
    try:
        for step in range(4):
            for p, g in zip(params, grad_fn(params, step)):
                p.grad = None if g is None else g.cuda()
            opt.step()
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - whatever torch raises is the skip reason
        return f"{type(e).__name__}: {e}"
    return None


def _run_on_cuda(kwargs, dtype, grad_fn):
    params = [p.cuda() for p in make_params(dtype)]
    ref = [p.clone().requires_grad_() for p in params]
    ours = [p.clone().requires_grad_() for p in params]
    opt_ref, opt_ours = torch.optim.Adagrad(ref, **kwargs), Adagrad(ours, **kwargs)
    for step in range(4):
        for r, o, g in zip(ref, ours, grad_fn(params, step)):
            r.grad = None if g is None else g.cuda()
            o.grad = None if g is None else g.cuda()
        opt_ref.step()
        opt_ours.step()
        for r, o in zip(ref, ours):
            assert_close(o.detach(), r.detach(), dtype, f"step {step}")
        assert_state_dicts_match(opt_ours.state_dict(), opt_ref.state_dict(), dtype)

"""Adadelta: functional and compat against torch.optim.Adadelta, every flag and implementation."""

import copy
import inspect
import itertools
import pickle

import pytest
import torch
from conftest import requires_cuda

from _parity import (
    compare_on_cuda,
    assert_close,
    assert_state_dicts_match,
    grads_for_step,
    make_params,
    run_compat_parity,
    run_functional_parity,
)
from compat.adadelta import Adadelta
from functional_optim import apply_updates
from functional_optim.adadelta import AdadeltaHParams, AdadeltaState, adadelta

FLAGS = [dict(maximize=m, weight_decay=w) for m, w in itertools.product([False, True], [0.0, 0.1])]
DTYPES = [torch.float64, torch.float32, torch.complex128]
# torch has no fused Adadelta; None is torch's default choice (for-loop on CPU)
IMPLS = {"default": {}, "forloop": {"foreach": False}, "foreach": {"foreach": True}}
HP = dict(lr=0.5, rho=0.8, eps=1e-4)


def test_signature_is_torchs():
    assert inspect.signature(Adadelta) == inspect.signature(torch.optim.Adadelta)


@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_functional_matches_torch(flags, dtype):
    kwargs = dict(HP, **flags)
    run_functional_parity(torch.optim.Adadelta, lambda: adadelta(**kwargs), kwargs, dtype)


def test_functional_defaults_and_tensor_lr_match_torch():
    run_functional_parity(torch.optim.Adadelta, adadelta, {}, torch.float64)
    kwargs = dict(HP, lr=torch.tensor(0.5, dtype=torch.float64))
    run_functional_parity(torch.optim.Adadelta, lambda: adadelta(**kwargs), kwargs, torch.float64)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compat_matches_torch(impl, flags, dtype):
    kwargs = dict(HP, **flags, **IMPLS[impl])
    run_compat_parity(torch.optim.Adadelta, Adadelta, kwargs, dtype, swap_at=2)


@pytest.mark.parametrize("impl", ["forloop", "foreach"])
@pytest.mark.parametrize("lr", [torch.tensor(0.5), torch.tensor([0.5])], ids=["0d", "1elem"])
def test_compat_tensor_lr_matches_torch(impl, lr):
    kwargs = dict(HP, lr=lr, weight_decay=0.1, **IMPLS[impl])
    run_compat_parity(torch.optim.Adadelta, Adadelta, kwargs, torch.float32, swap_at=2)


def test_compat_defaults_match_torch():
    run_compat_parity(torch.optim.Adadelta, Adadelta, {}, torch.float64, two_groups=False)
    params = [torch.zeros(2, requires_grad=True)]
    assert Adadelta(params).defaults == torch.optim.Adadelta(params).defaults


def _stepped(cls, dtype=torch.float64, steps=2, **kwargs):
    params = [p.requires_grad_() for p in make_params(dtype)]
    opt = cls(params, **kwargs)
    for step in range(steps):
        for p, g in zip(params, grads_for_step(params, step)):
            p.grad = g
        opt.step()
    return opt


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


BAD_HPARAMS = [
    dict(lr=-1.0),
    dict(lr=float("nan")),
    dict(lr=torch.tensor(-0.5)),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(rho=-0.1),
    dict(rho=1.5),
    dict(eps=-1e-6),
    dict(weight_decay=-0.1),
    dict(lr=-1.0, rho=2.0),  # the first failing check wins, as in torch
    dict(rho=2.0, eps=-1.0, weight_decay=-1.0),
]


@pytest.mark.parametrize("bad", BAD_HPARAMS, ids=str)
def test_validation_errors_match_torch(bad):
    params = [torch.zeros(2, requires_grad=True)]
    expected = _raised(lambda: torch.optim.Adadelta(params, **bad))
    assert _raised(lambda: Adadelta(params, **bad)) == expected
    assert _raised(lambda: adadelta(**bad)) == expected


def test_boundary_hparams_are_accepted_like_torch():
    params = [torch.zeros(2, requires_grad=True)]
    for ok in (dict(lr=0.0), dict(rho=0.0), dict(rho=1.0), dict(eps=0.0), dict(weight_decay=0.0)):
        torch.optim.Adadelta(params, **ok)
        Adadelta(params, **ok)
        adadelta(**ok)


def test_unknown_kwarg_fused_rejected_like_torch():
    params = [torch.zeros(2, requires_grad=True)]
    expected = _raised(lambda: torch.optim.Adadelta(params, fused=True))
    assert _raised(lambda: Adadelta(params, fused=True)) == expected


@pytest.mark.parametrize("impl", ["forloop", "foreach"])
def test_capturable_on_cpu_raises_like_torch(impl):
    ours, ref = [], []
    for cls, out in ((torch.optim.Adadelta, ref), (Adadelta, ours)):
        p = torch.ones(3, requires_grad=True)
        opt = cls([p], capturable=True, **IMPLS[impl])
        p.grad = torch.ones(3)
        out.append(_raised(opt.step))
        out.append(opt.state_dict())
    assert ours[0] == ref[0] and ours[0][0] is AssertionError
    assert_state_dicts_match(ours[1], ref[1], torch.float32)  # state was created before the check


def test_foreach_differentiable_raises_like_torch():
    errors = []
    for cls in (torch.optim.Adadelta, Adadelta):
        p = torch.ones(3, requires_grad=True)
        opt = cls([p], foreach=True, differentiable=True, capturable=True)
        p.grad = torch.ones(3)
        errors.append(_raised(opt.step))
    assert errors[0] == errors[1] and errors[0][0] is AssertionError


def test_sparse_grad_raises_like_torch():
    errors = []
    for cls in (torch.optim.Adadelta, Adadelta):
        p = torch.ones(3, requires_grad=True)
        opt = cls([p])
        p.grad = torch.ones(3).to_sparse()
        errors.append(_raised(opt.step))
    assert errors[0] == errors[1] and errors[0][0] is RuntimeError


def test_state_layout_matches_torch():
    ref, ours = _stepped(torch.optim.Adadelta), _stepped(Adadelta)
    for r, o in zip(ref.state.values(), ours.state.values()):
        assert list(o) == list(r) == ["step", "square_avg", "acc_delta"]
        for key in r:
            assert (o[key].dtype, o[key].device, o[key].shape, o[key].stride()) == (
                r[key].dtype, r[key].device, r[key].shape, r[key].stride()
            ), key


def test_step_dtype_follows_default_dtype_like_torch():
    torch.set_default_dtype(torch.float64)
    ref, ours = _stepped(torch.optim.Adadelta, steps=1), _stepped(Adadelta, steps=1)
    assert_state_dicts_match(ours.state_dict(), ref.state_dict(), torch.float64)


def test_setstate_converts_float_steps_like_torch():
    ref = _stepped(torch.optim.Adadelta)
    sd = copy.deepcopy(ref.state_dict())
    for entry in sd["state"].values():
        entry["step"] = float(entry["step"])  # an old checkpoint
    for group in sd["param_groups"]:
        for key in ("foreach", "maximize", "differentiable", "capturable"):
            del group[key]
    loaded = []
    for cls in (torch.optim.Adadelta, Adadelta):
        opt = cls(make_params(torch.float64))
        opt.load_state_dict(copy.deepcopy(sd))
        loaded.append(opt.state_dict())
    assert_state_dicts_match(loaded[1], loaded[0], torch.float64)
    ours = pickle.loads(pickle.dumps(_stepped(Adadelta)))
    assert_state_dicts_match(ours.state_dict(), ref.state_dict(), torch.float64)


def test_differentiable_step_matches_torch_gradients():
    """differentiable=True: autograd through two steps gives torch's gradients w.r.t. params and grads."""
    results = []
    for cls in (torch.optim.Adadelta, Adadelta):
        start = [p.requires_grad_() for p in make_params(torch.float64)]
        grads = [[g.requires_grad_() if g is not None else None for g in grads_for_step(start, s)] for s in range(2)]
        params = [p.clone() for p in start]
        opt = cls(params, differentiable=True, weight_decay=0.1, maximize=True, **HP)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
        loss = sum((p * p).sum() for p in params)
        inputs = start + [g for gs in grads for g in gs if g is not None]
        results.append((params, torch.autograd.grad(loss, inputs)))
    for ours, ref in zip(results[1][0] + list(results[1][1]), results[0][0] + list(results[0][1])):
        assert_close(ours.detach(), ref.detach(), torch.float64, "differentiable")


def test_functional_update_is_pure_and_skips_none_grads():
    tx = adadelta(**HP)
    params = {"a": torch.randn(3), "b": torch.randn(2)}
    state = tx.init(params)
    assert isinstance(state, AdadeltaState)
    snapshot = copy.deepcopy((params, state))
    updates, new_state = tx.update({"a": torch.randn(3), "b": None}, state, params)
    torch.testing.assert_close((params, state), snapshot, rtol=0, atol=0)
    assert updates["b"] is None and new_state.square_avg["b"] is state.square_avg["b"]
    assert float(new_state.step["a"]) == 1.0 and float(new_state.step["b"]) == 0.0


def test_functional_compiles_without_recompiling_on_tensor_hparams():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = adadelta(maximize=True)
    params = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    grads = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    counter = CompileCounter()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = state_eager = tx.init(params)
    for lr, rho, wd in ((0.5, 0.9, 0.0), (0.1, 0.7, 0.1), (2.0, 0.5, 0.2)):
        hp = AdadeltaHParams(lr=torch.tensor(lr), rho=torch.tensor(rho), eps=1e-6, weight_decay=torch.tensor(wd))
        updates, state = compiled(grads, state, params, hp)
        expected, state_eager = tx.update(grads, state_eager, params, hp)
        torch.testing.assert_close(apply_updates(params, updates), apply_updates(params, expected))
        torch.testing.assert_close(state, state_eager)
    assert counter.frame_count == 1



@requires_cuda
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("lr", [0.5, torch.tensor(0.5)], ids=["float", "tensor"])
def test_cuda_matches_torch(impl, capturable, lr):
    kwargs = dict(HP, lr=lr.cuda() if capturable and isinstance(lr, torch.Tensor) else lr,
                  weight_decay=0.1, capturable=capturable, **IMPLS[impl])
    compare_on_cuda(torch.optim.Adadelta, Adadelta, kwargs, second_group_lr=0.25)

"""NAdam: functional and compat against torch.optim.NAdam, every flag and implementation.

Every expectation comes from running torch.optim.NAdam on the same input (torch has a for-loop and
a foreach implementation of NAdam, no fused one).
"""

import copy
import itertools
import pickle

import pytest
import torch

from _parity import (
    compare_on_cuda,
    IMPLS,
    assert_close,
    assert_state_dicts_match,
    grads_for_step,
    make_params,
    run_compat_parity,
    run_functional_parity,
    signature_shape,
)
from compat.nadam import NAdam
from conftest import requires_cuda
from functional_optim import apply_updates
from functional_optim.nadam import NAdamHParams, NAdamState, nadam

IMPLS = {k: v for k, v in IMPLS.items() if k != "fused"}
HP = dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, momentum_decay=0.1)
FLAGS = [
    dict(maximize=m, weight_decay=w, decoupled_weight_decay=d)
    for m, w, d in itertools.product([False, True], [0.0, 0.1], [False, True])
]
DTYPES = [torch.float64, torch.float32, torch.complex128]


def test_signature_and_defaults_match_torch():
    assert signature_shape(NAdam.__init__) == signature_shape(torch.optim.NAdam.__init__)
    params = [torch.zeros(2, requires_grad=True)]
    assert NAdam(params).defaults == torch.optim.NAdam(params).defaults


@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_functional_matches_torch(flags, dtype):
    kwargs = dict(HP, **flags)
    run_functional_parity(torch.optim.NAdam, lambda: nadam(**kwargs), kwargs, dtype)


def test_functional_defaults_and_tensor_hparams_match_torch():
    run_functional_parity(torch.optim.NAdam, nadam, {}, torch.float64)
    tensor_hp = dict(lr=torch.tensor(0.05), betas=(0.8, 0.9), eps=torch.tensor(1e-6), weight_decay=torch.tensor(0.1),
                     momentum_decay=torch.tensor(0.1))
    float_hp = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in tensor_hp.items()}
    run_functional_parity(torch.optim.NAdam, lambda: nadam(**tensor_hp), float_hp, torch.float32)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compat_matches_torch(impl, flags, dtype):
    kwargs = dict(HP, **flags, **IMPLS[impl])
    run_compat_parity(torch.optim.NAdam, NAdam, kwargs, dtype, swap_at=2)


def test_compat_defaults_match_torch():
    run_compat_parity(torch.optim.NAdam, NAdam, {}, torch.float64, swap_at=3)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("lr", [torch.tensor(0.05), torch.tensor([0.05])], ids=["0d", "1elem"])
def test_compat_tensor_lr_matches_torch(impl, decoupled, lr):
    # torch's foreach path reads a tensor lr with .item() for the step sizes while its for-loop keeps
    # it a (float32) tensor; the kernel follows the for-loop, so compare at float32 precision.
    kwargs = dict(HP, lr=lr, weight_decay=0.1, decoupled_weight_decay=decoupled, **IMPLS[impl])
    run_compat_parity(torch.optim.NAdam, NAdam, kwargs, torch.float32, swap_at=2, two_groups=False)
    if impl == "forloop":
        run_compat_parity(torch.optim.NAdam, NAdam, kwargs, torch.float64, two_groups=False)


BAD = [
    dict(lr=-1e-3),
    dict(lr=torch.tensor([1e-3, 1e-3])),
    dict(eps=-1e-8),
    dict(betas=(1.0, 0.999)),
    dict(betas=(-0.1, 0.999)),
    dict(betas=(0.9, 1.0)),
    dict(weight_decay=-0.1),
    dict(momentum_decay=-4e-3),
    dict(lr=-1.0, eps=-1.0, momentum_decay=-1.0),  # the first failing check wins, as in torch
]


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", BAD, ids=str)
def test_validation_errors_match_torch(bad):
    expected = _raised(lambda: torch.optim.NAdam([torch.zeros(2, requires_grad=True)], **bad))
    assert _raised(lambda: NAdam([torch.zeros(2, requires_grad=True)], **bad)) == expected
    assert _raised(lambda: nadam(**bad)) == expected


def test_boundary_hparams_are_accepted_like_torch():
    edge = dict(lr=0.0, eps=0.0, betas=(0.0, 0.0), weight_decay=0.0, momentum_decay=0.0)
    torch.optim.NAdam([torch.zeros(2, requires_grad=True)], **edge)
    NAdam([torch.zeros(2, requires_grad=True)], **edge)
    nadam(**edge)


def test_fused_is_rejected_like_torch():
    for cls in (torch.optim.NAdam, NAdam):
        with pytest.raises(TypeError, match="fused"):
            cls([torch.zeros(2, requires_grad=True)], fused=True)


def _step_error(cls, **kwargs):
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = cls([p], **kwargs)
    return _raised(opt.step)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_capturable_on_cpu_raises_like_torch(impl):
    kwargs = dict(capturable=True, **IMPLS[impl])
    assert _step_error(NAdam, **kwargs) == _step_error(torch.optim.NAdam, **kwargs)


def test_foreach_differentiable_raises_like_torch():
    kwargs = dict(foreach=True, differentiable=True)
    assert _step_error(NAdam, **kwargs) == _step_error(torch.optim.NAdam, **kwargs)


def test_sparse_grad_raises_like_torch():
    def run(step):
        p = torch.zeros(3, requires_grad=True)
        p.grad = torch.eye(3)[0].to_sparse()
        return _raised(lambda: step(p))

    expected = run(lambda p: torch.optim.NAdam([p]).step())
    assert run(lambda p: NAdam([p]).step()) == expected
    tx = nadam()
    assert run(lambda p: tx.update([p.grad], tx.init([p.detach()]), [p.detach()])) == expected


def _stepped(cls, steps=3, **kwargs):
    params = [p.requires_grad_() for p in make_params(torch.float64)]
    opt = cls(params, **kwargs)
    for step in range(steps):
        for p, g in zip(params, grads_for_step(params, step)):
            p.grad = g
        opt.step()
    return opt


@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])
def test_state_layout_matches_torch(default_dtype):
    """Keys in torch's order; step and mu_product are CPU scalars of torch's scalar dtype."""
    torch.set_default_dtype(default_dtype)
    ref, ours = _stepped(torch.optim.NAdam), _stepped(NAdam)
    assert_state_dicts_match(ours.state_dict(), ref.state_dict(), torch.float64)
    for state in ours.state.values():
        assert list(state) == ["step", "mu_product", "exp_avg", "exp_avg_sq"]
        assert state["mu_product"].dtype == default_dtype and state["mu_product"].device.type == "cpu"
    functional = nadam().init({"w": torch.zeros(2, dtype=torch.float64)})
    assert NAdamState._fields == ("step", "mu_product", "exp_avg", "exp_avg_sq")
    assert functional.mu_product["w"].shape == () and functional.mu_product["w"].dtype == default_dtype


def test_setstate_converts_float_scalars_like_torch():
    """Old checkpoints held ``step``/``mu_product`` as Python numbers; __setstate__ makes them tensors."""
    restored = []
    for cls in (torch.optim.NAdam, NAdam):
        opt = _stepped(cls)
        for state in opt.state.values():
            state["step"] = float(state["step"])
            state["mu_product"] = float(state["mu_product"])
        opt.__setstate__(opt.__getstate__())
        restored.append(opt.state_dict())
    assert_state_dicts_match(restored[1], restored[0], torch.float64)
    for legacy in ({"foreach": None}, {}):  # groups saved before the newer flags existed get defaults
        opt = _stepped(NAdam)
        state = opt.__getstate__()
        for group in state["param_groups"]:
            for key in ("maximize", "capturable", "differentiable", "decoupled_weight_decay"):
                group.pop(key)
            group.update(legacy)
        opt.__setstate__(state)
        assert opt.param_groups[0]["capturable"] is False and opt.param_groups[0]["foreach"] is None
    ours = pickle.loads(pickle.dumps(_stepped(NAdam)))
    assert_state_dicts_match(ours.state_dict(), _stepped(torch.optim.NAdam).state_dict(), torch.float64)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("flags", [dict(weight_decay=0.1, maximize=True),
                                   dict(weight_decay=0.1, decoupled_weight_decay=True)], ids=str)
def test_differentiable_step_matches_torch_gradients(flags):
    """differentiable=True: torch's step sizes (float32 mu_product tensors) and autograd through two steps."""
    results = []
    for cls in (torch.optim.NAdam, NAdam):
        start = [p.requires_grad_() for p in make_params(torch.float64)]
        grads = [[g.requires_grad_() if g is not None else None for g in grads_for_step(start, s)] for s in range(3)]
        params = [p.clone() for p in start]
        opt = cls(params, differentiable=True, **HP, **flags)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
        loss = sum((p * p).sum() for p in params)
        inputs = start + [g for gs in grads for g in gs if g is not None]
        results.append((params, torch.autograd.grad(loss, inputs), opt.state_dict()))
    (ref_params, ref_grads, ref_sd), (params, grads, sd) = results
    for ours, ref in zip(params + list(grads), ref_params + list(ref_grads)):
        assert_close(ours.detach(), ref.detach(), torch.float64, "differentiable")
    assert_state_dicts_match(sd, ref_sd, torch.float64)


def test_functional_update_is_pure_and_skips_none_grads():
    tx = nadam(**HP)
    params = {"a": torch.randn(3), "b": torch.randn(2)}
    state = tx.init(params)
    snapshot = copy.deepcopy((params, state))
    updates, new_state = tx.update({"a": torch.randn(3), "b": None}, state, params)
    torch.testing.assert_close((params, state), snapshot, rtol=0, atol=0)
    assert updates["b"] is None and new_state.mu_product["b"] is state.mu_product["b"]
    assert float(new_state.step["a"]) == 1.0 and float(new_state.step["b"]) == 0.0
    assert float(new_state.mu_product["a"]) != 1.0 and float(new_state.mu_product["b"]) == 1.0


def test_functional_compiles_without_recompiling_on_tensor_hparams():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = nadam(decoupled_weight_decay=True)
    params = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    grads = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    counter = CompileCounter()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = state_eager = tx.init(params)
    for lr, beta1, wd, psi in ((0.05, 0.9, 0.0, 4e-3), (0.01, 0.8, 0.1, 0.1), (0.2, 0.5, 0.2, 0.0)):
        hp = NAdamHParams(lr=torch.tensor(lr), betas=(torch.tensor(beta1), torch.tensor(0.99)), eps=1e-8,
                          weight_decay=torch.tensor(wd), momentum_decay=torch.tensor(psi))
        updates, state = compiled(grads, state, params, hp)
        expected, state_eager = tx.update(grads, state_eager, params, hp)
        torch.testing.assert_close(apply_updates(params, updates), apply_updates(params, expected))
        torch.testing.assert_close(state, state_eager)
    assert counter.frame_count == 1



@requires_cuda
@pytest.mark.parametrize("impl", ["default", *IMPLS])
@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("lr", [0.05, torch.tensor(0.05)], ids=["float", "tensor"])
def test_cuda_matches_torch(impl, capturable, lr):
    # with capturable, torch does the scalar math in float32 tensors on the device: float32 precision
    kwargs = dict(HP, lr=lr.cuda() if capturable and isinstance(lr, torch.Tensor) else lr,
                  weight_decay=0.1, capturable=capturable, **IMPLS.get(impl, {}))
    compare_on_cuda(torch.optim.NAdam, NAdam, kwargs, second_group_lr=0.025)

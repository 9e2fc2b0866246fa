"""RMSprop: functional and compat against torch.optim.RMSprop, every flag and implementation.

Every expectation comes from torch.optim.RMSprop run side by side: compat bitwise (params and every
state tensor) per implementation (for-loop, foreach, default, differentiable, capturable for-loop
and foreach), flag combination and dtype; the functional update to rounding; errors by type and
message.
"""

import copy
import importlib
import inspect
import itertools
import pickle

import pytest
import torch

import functional_optim as fo
from _parity import (
    assert_close,
    assert_state_dicts_match,
    check_functional_round_trip,
    grads_for_step,
    make_params,
    run_compat_parity,
    run_functional_parity,
)
from compat.rmsprop import RMSprop
from test_sgd import _generic_error_cases, optim_db_error_outcomes, optim_db_info, requires_optim_db
from functional_optim.rmsprop import RMSpropHParams, RMSpropState, rmsprop

pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")

GRID = dict(momentum=[0.0, 0.9], centered=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True])
HP = dict(lr=0.01, alpha=0.9, eps=1e-4)
IMPLS = {"default": {}, "forloop": {"foreach": False}, "foreach": {"foreach": True},
         "differentiable": {"foreach": False, "differentiable": True},
         "capturable": {"foreach": False, "capturable": True},
         "capturable_foreach": {"foreach": True, "capturable": True}}
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64]


def flag_grid() -> list[dict]:
    return [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """torch's capturable code is plain tensor math: let torch's and compat's device checks accept
    the CPU so that it runs here (it is a CUDA feature)."""
    from torch.optim.optimizer import _get_capturable_supported_devices as supported

    def with_cpu(supports_xla: bool = True) -> list:
        return supported(supports_xla) + ["cpu"]

    for module in ("torch.optim.rmsprop", "compat.optimizer"):
        monkeypatch.setattr(importlib.import_module(module), "_get_capturable_supported_devices", with_cpu)


# ---------------------------------------------------------------------------------------- bitwise
def _params(dtype: torch.dtype, differentiable: bool = False) -> list:
    base = make_params(dtype) if dtype.is_complex else [p.to(dtype) for p in make_params(torch.float32)]
    if differentiable:
        return [p.requires_grad_().clone() for p in base]
    return [p.requires_grad_() for p in base]


def _grads(params: list, step: int) -> list:
    """Random grads; param 1 gets none at step 1, param 0 zeros at step 3."""
    g = torch.Generator().manual_seed(200 + step)
    out = []
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g, dtype=torch.complex64 if p.dtype.is_complex else torch.float32)
        grad = grad.to(p.dtype)
        out.append(None if (i == 1 and step == 1) else torch.zeros_like(grad) if (i == 0 and step == 3) else grad)
    return out


def _run(cls, kwargs: dict, dtype: torch.dtype, steps: int = 6):
    """Two param groups (the second with half the lr)."""
    ps = _params(dtype, kwargs.get("differentiable", False))
    lr = kwargs["lr"]
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5 * lr}], **kwargs)
    for step in range(steps):
        for p, g in zip(ps, _grads(ps, step)):
            p.grad = g
        opt.step()
    return ps, opt


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.device == b.device and torch.equal(a.detach(), b.detach()))
    return a == b


def assert_bitwise(ours, ref) -> None:
    (our_ps, our_opt), (ref_ps, ref_opt) = ours, ref
    for o, r in zip(our_ps, ref_ps):
        assert _same(o, r)
        assert list(our_opt.state[o]) == list(ref_opt.state[r])
        for key, value in ref_opt.state[r].items():
            assert _same(our_opt.state[o][key], value), key
    assert_state_dicts_match(our_opt.state_dict(), ref_opt.state_dict(), torch.float64)


CASES = [(impl, dtype) for impl in IMPLS for dtype in DTYPES]


@pytest.mark.usefixtures("capturable_on_cpu")
@pytest.mark.parametrize("impl, dtype", CASES, ids=[f"{i}-{str(d)[6:]}" for i, d in CASES])
def test_each_implementation_is_bitwise_torch_same_implementation(impl, dtype):
    """Every flag combination, 6 steps, None and zero grads, two groups: params and state bitwise."""
    for flags in flag_grid():
        kwargs = dict(HP, **flags, **IMPLS[impl])
        assert_bitwise(_run(RMSprop, kwargs, dtype), _run(torch.optim.RMSprop, kwargs, dtype))


@pytest.mark.usefixtures("capturable_on_cpu")
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("lr", [torch.tensor(0.01), torch.tensor([0.01])], ids=["0d", "1elem"])
def test_tensor_lr_is_bitwise_torch(impl, lr):
    for flags in (dict(momentum=0.9, centered=True), dict(weight_decay=0.1), {}):
        for dtype in (torch.float32, torch.float16):
            kwargs = dict(HP, **flags, lr=lr, **IMPLS[impl])
            assert_bitwise(_run(RMSprop, kwargs, dtype), _run(torch.optim.RMSprop, kwargs, dtype))


def _unrolled(step_fn, flags: dict):
    """Two steps from make_params on grads that require grad: the gradients of sum(p^2) after them
    w.r.t. the initial params and every grad. ``step_fn(params, grads, flags)`` returns new params."""
    start = [p.requires_grad_() for p in make_params(torch.float64)]
    grads = [[g.requires_grad_() if g is not None else None for g in grads_for_step(start, s)] for s in range(2)]
    params = step_fn(start, grads, flags)
    loss = sum((p * p).sum() for p in params)
    return params, torch.autograd.grad(loss, start + [g for gs in grads for g in gs if g is not None])


def _stepped_by(cls):
    def run(start, grads, flags):
        params = [p.clone() for p in start]
        opt = cls(params, differentiable=True, **HP, **flags)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
        return params
    return run


def _stepped_functionally(start, grads, flags):
    tx = rmsprop(**HP, **flags)
    params = {i: p for i, p in enumerate(start)}
    state = tx.init(params)
    for step_grads in grads:
        updates, state = tx.update(dict(enumerate(step_grads)), state, params)
        params = fo.apply_updates(params, updates)
    return list(params.values())


@pytest.mark.parametrize("flags", [dict(momentum=0.9, weight_decay=0.1, maximize=True), {},
                                   dict(centered=True, momentum=0.9, weight_decay=0.1)], ids=str)
def test_differentiable_step_gradients_match_torch(flags):
    """differentiable=True: autograd through two steps gives torch's gradients w.r.t. params and
    grads. With ``centered`` torch's own backward fails (its ``addcmul`` saves ``grad_avg``, which
    the next step's ``lerp_`` modifies in place; compat saves a copy): there the reference is the
    gradient through the pure functional update."""
    if flags.get("centered"):
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            _unrolled(_stepped_by(torch.optim.RMSprop), flags)
        expected = _unrolled(_stepped_functionally, flags)
    else:
        expected = _unrolled(_stepped_by(torch.optim.RMSprop), flags)
    ours = _unrolled(_stepped_by(RMSprop), flags)
    for a, b in zip(ours[0] + list(ours[1]), expected[0] + list(expected[1])):
        assert_close(a.detach(), b.detach(), torch.float64, "differentiable")


# ---------------------------------------------------------------------------------------- parity, checkpoints
@pytest.mark.parametrize("impl", ["forloop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128], ids=str)
def test_compat_matches_torch_with_state_dicts_cross_loaded(impl, dtype):
    """Two groups, None/zero grads, 0-d and transposed params; state dicts swapped both ways at step 2."""
    for flags in flag_grid():
        run_compat_parity(torch.optim.RMSprop, RMSprop, dict(HP, **flags, **IMPLS[impl]), dtype, swap_at=2)


def test_compat_defaults_and_signature_match_torch():
    run_compat_parity(torch.optim.RMSprop, RMSprop, {}, torch.float64, two_groups=False)
    params = [torch.zeros(2, requires_grad=True)]
    assert RMSprop(params).defaults == torch.optim.RMSprop(params).defaults
    assert inspect.signature(RMSprop) == inspect.signature(torch.optim.RMSprop)


def test_state_layout_matches_torch():
    for flags in flag_grid():
        kwargs = dict(HP, **flags)
        ref, ours = _run(torch.optim.RMSprop, kwargs, torch.float32, 1), _run(RMSprop, kwargs, torch.float32, 1)
        for r, o in zip(ref[1].state.values(), ours[1].state.values()):
            assert list(o) == list(r)
            for key in r:
                assert (o[key].dtype, o[key].device, o[key].shape, o[key].stride()) == (
                    r[key].dtype, r[key].device, r[key].shape, r[key].stride()), key


def test_step_dtype_follows_default_dtype_like_torch():
    torch.set_default_dtype(torch.float64)
    assert_bitwise(_run(RMSprop, dict(HP), torch.float64, 1), _run(torch.optim.RMSprop, dict(HP), torch.float64, 1))


def test_setstate_converts_float_steps_and_pickles_like_torch():
    ref = _run(torch.optim.RMSprop, dict(HP, momentum=0.9, centered=True), torch.float64)[1]
    sd = copy.deepcopy(ref.state_dict())
    for entry in sd["state"].values():
        entry["step"] = float(entry["step"])  # an old checkpoint
    for group in sd["param_groups"]:
        for key in ("foreach", "maximize", "differentiable", "capturable"):
            del group[key]
    loaded = []
    for cls in (torch.optim.RMSprop, RMSprop):
        ps = _params(torch.float64)
        opt = cls([{"params": ps[:2]}, {"params": ps[2:]}], **HP, momentum=0.9, centered=True)
        opt.load_state_dict(copy.deepcopy(sd))
        loaded.append(opt.state_dict())
    assert_state_dicts_match(loaded[1], loaded[0], torch.float64)
    ours = _run(RMSprop, dict(HP, momentum=0.9, centered=True), torch.float64)[1]
    assert_state_dicts_match(pickle.loads(pickle.dumps(ours)).state_dict(), ref.state_dict(), torch.float64)


def test_switching_momentum_or_centered_on_later_fails_like_torch():
    """A state made without the slot: torch's ``_init_group`` raises ``KeyError`` for it."""
    for key in ("momentum", "centered"):
        outcomes = []
        for cls in (torch.optim.RMSprop, RMSprop):
            p = torch.ones(3, requires_grad=True)
            opt = cls([p])
            p.grad = torch.ones(3)
            opt.step()
            opt.param_groups[0][key] = 0.9 if key == "momentum" else True
            outcomes.append(_raised(opt.step))
        assert outcomes[0] == outcomes[1] and outcomes[0][0] is KeyError


# ---------------------------------------------------------------------------------------- errors
BAD_HPARAMS = [
    dict(lr=-1.0),
    dict(lr=float("nan")),
    dict(lr=torch.tensor(-0.5)),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(eps=-1e-6),
    dict(momentum=-1.0),  # optim_db's error input
    dict(weight_decay=-0.1),
    dict(alpha=-0.1),
    dict(alpha=float("nan")),
    dict(lr=-1.0, alpha=-1.0),  # the first failing check wins, as in torch
    dict(momentum=-1.0, weight_decay=-1.0, alpha=-1.0),
]


@pytest.mark.parametrize("bad", BAD_HPARAMS, ids=str)
def test_validation_errors_match_torch(bad):
    params = [torch.zeros(2, requires_grad=True)]
    expected = _raised(lambda: torch.optim.RMSprop(params, **bad))
    assert _raised(lambda: RMSprop(params, **bad)) == expected
    assert _raised(lambda: rmsprop(**bad)) == expected


@pytest.mark.parametrize("case", [c for c in _generic_error_cases() if "momentum" not in c[2]], ids=lambda c: c[0])
def test_optim_db_error_inputs_match_torch(case):
    """optim_db's error inputs for every optimizer (RMSprop's own, momentum=-1.0, is in BAD_HPARAMS)."""
    _, params, kwargs = case
    params = params if params is not None else [torch.zeros(1, 1, requires_grad=True)]
    assert _raised(lambda: RMSprop(params, **kwargs)) == _raised(lambda: torch.optim.RMSprop(params, **kwargs))


@requires_optim_db
def test_optim_db_configurations_are_bitwise_torchs(capturable_on_cpu):
    """PyTorch's own RMSprop configurations (``optim_db``, its CUDA ones with ``capturable``
    included), every implementation."""
    for config in optim_db_info(torch.optim.RMSprop).optim_inputs_func(device="cuda", dtype=torch.float32):
        for impl in IMPLS:
            kwargs = {**HP, **config.kwargs, **IMPLS[impl]}
            assert_bitwise(_run(RMSprop, kwargs, torch.float32), _run(torch.optim.RMSprop, kwargs, torch.float32))


@requires_optim_db
def test_optim_db_error_inputs_have_torchs_outcome():
    optim_db_error_outcomes(torch.optim.RMSprop, RMSprop)


def test_boundary_hparams_and_unknown_flags_like_torch():
    params = [torch.zeros(2, requires_grad=True)]
    for ok in (dict(lr=0.0), dict(alpha=0.0), dict(alpha=1.5), dict(eps=0.0), dict(momentum=0.0),
               dict(weight_decay=0.0)):
        torch.optim.RMSprop(params, **ok)
        RMSprop(params, **ok)
        rmsprop(**ok)
    assert _raised(lambda: RMSprop(params, fused=True)) == _raised(lambda: torch.optim.RMSprop(params, fused=True))


@pytest.mark.parametrize("impl", ["forloop", "foreach"])
def test_capturable_on_cpu_raises_like_torch(impl):
    ours, ref = [], []
    for cls, out in ((torch.optim.RMSprop, ref), (RMSprop, ours)):
        p = torch.ones(3, requires_grad=True)
        opt = cls([p], capturable=True, **IMPLS[impl])
        p.grad = torch.ones(3)
        out.append(_raised(opt.step))
        out.append(opt.state_dict())
    assert ours[0] == ref[0] and ours[0][0] is AssertionError
    assert_state_dicts_match(ours[1], ref[1], torch.float32)  # state was created before the check


def test_foreach_differentiable_and_sparse_grads_raise_like_torch():
    for kwargs, grad in ((dict(foreach=True, differentiable=True), torch.ones(3)), ({}, torch.ones(3).to_sparse())):
        errors = []
        for cls in (torch.optim.RMSprop, RMSprop):
            p = torch.ones(3, requires_grad=True)
            opt = cls([p], **kwargs)
            p.grad = grad
            errors.append(_raised(opt.step))
        assert errors[0] == errors[1]
    with pytest.raises(RuntimeError, match="RMSprop does not support sparse gradients"):
        tx = rmsprop()
        params = {"w": torch.ones(3)}
        tx.update({"w": torch.ones(3).to_sparse()}, tx.init(params), params)


# ---------------------------------------------------------------------------------------- API
def test_scheduler_cycling_momentum_drives_compat_like_torch():
    """OneCycleLR cycles ``momentum`` along with ``lr`` (hooks and closures: tests/test_compat_api.py)."""
    out = []
    for cls in (torch.optim.RMSprop, RMSprop):
        ps = _params(torch.float32)
        opt = cls(ps, lr=0.01, momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10)  # momentum cycled too
        for step in range(5):
            for p, g in zip(ps, _grads(ps, step)):
                p.grad = g
            opt.step()
            sched.step()
        out.append((ps, opt))
    assert_bitwise(out[1], out[0])


# ---------------------------------------------------------------------------------------- functional
FUNCTIONAL_FLAGS = [f for f in flag_grid() if f["weight_decay"] == 0.1 or not f["maximize"]]


@pytest.mark.parametrize("flags", FUNCTIONAL_FLAGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128], ids=str)
def test_functional_matches_torch(flags, dtype):
    kwargs = dict(HP, **flags)
    run_functional_parity(torch.optim.RMSprop, lambda: rmsprop(**kwargs), kwargs, dtype)


def test_functional_defaults_and_tensor_hparams_match_torch():
    run_functional_parity(torch.optim.RMSprop, rmsprop, {}, torch.float64)
    kwargs = dict(HP, momentum=0.9, centered=True, weight_decay=0.1)
    tensors = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, float) else v for k, v in kwargs.items()}
    run_functional_parity(torch.optim.RMSprop, lambda: rmsprop(**tensors), kwargs, torch.float64)


def test_functional_update_is_pure_and_skips_none_grads():
    tx = rmsprop(**HP, momentum=0.9, centered=True)
    params = {"a": torch.randn(3), "b": torch.randn(2)}
    state = tx.init(params)
    assert isinstance(state, RMSpropState)
    snapshot = copy.deepcopy((params, state))
    updates, new_state = tx.update({"a": torch.randn(3), "b": None}, state, params)
    torch.testing.assert_close((params, state), snapshot, rtol=0, atol=0)
    assert updates["b"] is None and new_state.square_avg["b"] is state.square_avg["b"]
    assert float(new_state.step["a"]) == 1.0 and float(new_state.step["b"]) == 0.0
    plain = rmsprop().init(params)
    assert plain.momentum_buffer is fo.EMPTY and plain.grad_avg is fo.EMPTY


def test_functional_momentum_needs_a_buffer():
    tx = rmsprop()
    params = {"a": torch.randn(3)}
    with pytest.raises(ValueError, match="momentum=0.5 needs a momentum buffer"):
        tx.update({"a": torch.randn(3)}, tx.init(params), params, RMSpropHParams(momentum=0.5))


def test_functional_compiles_without_recompiling_on_tensor_hparams():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = rmsprop(momentum=0.9, centered=True, maximize=True)
    params = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    grads = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    counter = CompileCounter()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = state_eager = tx.init(params)
    for lr, alpha, wd in ((0.01, 0.9, 0.0), (0.1, 0.7, 0.1), (0.02, 0.99, 0.2)):
        hp = RMSpropHParams(lr=torch.tensor(lr), alpha=torch.tensor(alpha), eps=1e-8, weight_decay=torch.tensor(wd),
                            momentum=torch.tensor(0.5))
        updates, state = compiled(grads, state, params, hp)
        expected, state_eager = tx.update(grads, state_eager, params, hp)
        torch.testing.assert_close(fo.apply_updates(params, updates), fo.apply_updates(params, expected))
        torch.testing.assert_close(state, state_eager)
    assert counter.frame_count == 1


def test_to_functional_and_back_continue_like_torch():
    kwargs = dict(HP, momentum=0.9, centered=True, weight_decay=0.1)
    ref_ps, ours_ps = _params(torch.float64), _params(torch.float64)
    ref, ours = torch.optim.RMSprop(ref_ps, **kwargs), RMSprop(ours_ps, **kwargs)
    check_functional_round_trip(ref, ours, ref_ps, ours_ps, _grads)

"""SGD: functional and compat against torch.optim.SGD, every flag and implementation.

Every expectation comes from torch.optim.SGD run side by side: compat bitwise (params, every state
tensor and the grads after the step) per implementation, flag combination and dtype; the
functional update to rounding; errors by type and message.
"""

import copy
import inspect
import itertools
import pickle

import pytest
import torch

import functional_optim as fo
import test_compile
import test_func_transforms
from _parity import (
    assert_close,
    assert_state_dicts_match,
    check_functional_round_trip,
    grads_for_step,
    make_params,
    run_compat_parity,
    run_functional_parity,
)
from _registry import Entry
from compat.sgd import SGD
from functional_optim.sgd import SGDHParams, SGDState, sgd

try:  # PyTorch's own optimizer test database; torch.testing._internal needs the ``expecttest`` package
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db
except ImportError:  # pragma: no cover - depends on the environment
    optim_db = OptimizerErrorEnum = None
requires_optim_db = pytest.mark.skipif(optim_db is None, reason="torch.testing._internal.common_optimizers "
                                       "cannot be imported (pip install expecttest)")

# torch's differentiable mode steps non-leaf params, whose .grad access warns
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")

GRID = dict(momentum=[0.0, 0.9], dampening=[0.0, 0.3], weight_decay=[0.0, 0.1], nesterov=[False, True],
            maximize=[False, True])
HP = dict(lr=0.05)
IMPLS = {"default": {}, "forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True},
         "differentiable": {"foreach": False, "differentiable": True},
         "foreach_differentiable": {"foreach": True, "differentiable": True}}  # torch's SGD allows both
HALF = (torch.float16, torch.bfloat16)
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64]


def flag_grid(valid_only: bool = True) -> list[dict]:
    """Every combination of GRID; torch refuses Nesterov without momentum or with dampening."""
    combos = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    if valid_only:
        combos = [c for c in combos if not c["nesterov"] or (c["momentum"] > 0 and c["dampening"] == 0)]
    return combos


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


def _outcome(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- torch's own refusal is the reference
        return type(e), str(e)


# ---------------------------------------------------------------------------------------- bitwise
def _params(dtype: torch.dtype, differentiable: bool = False) -> list:
    """make_params (2-D, 1-D, 0-d, transposed) in ``dtype``; non-leaf copies for differentiable."""
    base = make_params(dtype) if dtype.is_complex else [p.to(dtype) for p in make_params(torch.float32)]
    if differentiable:
        return [p.requires_grad_().clone() for p in base]
    return [p.requires_grad_() for p in base]


def _grads(params: list, step: int, like_params: bool = False) -> list:
    """Random grads; param 1 gets none at steps 0-1 (its buffer is created at step 2, in a list
    whose other buffers exist) and param 0 zeros at step 3. ``like_params`` (the fused runs): the
    param's strides, and param 1 misses step 1 only (torch's fused SGD refuses a list in which
    some buffers exist and others not: ``test_fused_late_buffer_error_matches_torch``)."""
    g = torch.Generator().manual_seed(100 + step)
    out = []
    for i, p in enumerate(params):
        real = torch.randn(p.shape, generator=g, dtype=torch.complex64 if p.dtype.is_complex else torch.float32)
        grad = real.to(p.dtype)
        if like_params:
            grad = torch.empty_like(p.detach()).copy_(grad)
        late = step == 1 if like_params else step < 2
        out.append(None if (i == 1 and late) else torch.zeros_like(grad) if (i == 0 and step == 3) else grad)
    return out


def _run(cls, kwargs: dict, dtype: torch.dtype, steps: int = 6, like_params: bool = False):
    """Two param groups (the second with half the lr): params, state and the grads after each step."""
    ps = _params(dtype, kwargs.get("differentiable", False))
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5 * kwargs["lr"]}], **kwargs)
    grads_after = []
    for step in range(steps):
        for p, g in zip(ps, _grads(ps, step, like_params)):
            p.grad = g
        opt.step()
        grads_after.append([None if p.grad is None else p.grad.detach().clone() for p in ps])
    return ps, opt, grads_after


def _same(a, b) -> bool:
    """Equal bit for bit with the same dtype, shape and layout (a sparse tensor: the same
    uncoalesced indices and values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.layout == b.layout):
            return False
        if a.is_sparse:
            return torch.equal(a._indices(), b._indices()) and torch.equal(a._values().detach(), b._values().detach())
        return torch.equal(a.detach(), b.detach())
    return a == b


def assert_bitwise(ours, ref) -> None:
    (our_ps, our_opt, our_grads), (ref_ps, ref_opt, ref_grads) = ours, ref
    for o, r in zip(our_ps, ref_ps):
        assert _same(o, r)
        assert list(our_opt.state.get(o, {})) == list(ref_opt.state.get(r, {}))
        for key, value in ref_opt.state.get(r, {}).items():
            assert _same(our_opt.state[o][key], value), key
    # torch's foreach code writes the Nesterov term into p.grad: compat's does too
    for ours_step, ref_step in zip(our_grads, ref_grads):
        assert all((o is None and r is None) or _same(o, r) for o, r in zip(ours_step, ref_step))
    assert_state_dicts_match(our_opt.state_dict(), ref_opt.state_dict(), torch.float64)


_REAL_FUSED_SGD = torch._fused_sgd_


def _fused_sgd_in_float32(params, grads, bufs, **kwargs) -> None:
    """``torch._fused_sgd_`` computed on float32 copies. torch 2.12/2.13's CPU kernel with momentum
    in float16/bfloat16 reads the momentum buffers through the wrong pointer type
    (pytorch/pytorch#191763, fixed by #192545): its results depend on memory past the buffers and
    vary from run to run, so there is nothing reproducible to be bitwise equal to. Run by torch
    and by compat in its place, it shows that both hand the kernel the same tensors and arguments."""
    up = lambda ts: [t.float() for t in ts]  # noqa: E731
    p32, g32, b32 = up(params), up(grads), up(bufs)
    _REAL_FUSED_SGD(p32, g32, b32, **kwargs)
    for dst, src in zip(params + bufs, p32 + b32):
        dst.copy_(src)


def assert_same_outcome(kwargs: dict, dtype: torch.dtype, like_params: bool = False) -> None:
    """torch's error (type and message) where torch raises, else bitwise torch's result."""
    ref = _outcome(lambda: _run(torch.optim.SGD, kwargs, dtype, like_params=like_params))
    ours = _outcome(lambda: _run(SGD, kwargs, dtype, like_params=like_params))
    if isinstance(ref[0], type):
        assert ours == ref, (kwargs, ours, ref)
    else:
        assert_bitwise(ours, ref)


CASES = [(impl, dtype) for impl in IMPLS for dtype in DTYPES]


@pytest.mark.parametrize("impl, dtype", CASES, ids=[f"{i}-{str(d)[6:]}" for i, d in CASES])
def test_each_implementation_is_bitwise_torch_same_implementation(impl, dtype, monkeypatch):
    """Every flag combination, 6 steps, a buffer created late: params, state, grads bitwise; the
    combinations torch refuses (Nesterov without momentum, fused complex) raise torch's error.
    Fused float16/bfloat16 with momentum: both run :func:`_fused_sgd_in_float32` (torch's bug)."""
    for flags in flag_grid(valid_only=False):
        with monkeypatch.context() as patch:
            if impl == "fused" and dtype in HALF and flags["momentum"]:
                patch.setattr(torch, "_fused_sgd_", _fused_sgd_in_float32)
            assert_same_outcome(dict(HP, **flags, **IMPLS[impl]), dtype, like_params=impl == "fused")


@pytest.mark.parametrize("impl", ["forloop", "foreach", "fused", "differentiable", "default"])
@pytest.mark.parametrize("lr", [torch.tensor(0.05), torch.tensor([0.05])], ids=["0d", "1elem"])
def test_tensor_lr_and_weight_decay_are_bitwise_torch(impl, lr):
    for flags in (dict(momentum=0.9, nesterov=True), dict(momentum=0.9, dampening=0.2), {}):
        assert_same_outcome(dict(flags, lr=lr, weight_decay=torch.tensor(0.1), **IMPLS[impl]), torch.float32,
                            like_params=impl == "fused")


def test_lr_and_weight_decay_that_require_grad_are_bitwise_torch():
    """torch's for-loop multiplies by such tensors (``addcmul_``; grad mode on or off)."""
    for impl in ("forloop", "differentiable", "foreach"):
        for dtype in (torch.float32, torch.float64):
            kwargs = dict(lr=torch.tensor(0.05, requires_grad=True), weight_decay=torch.tensor(0.1, requires_grad=True),
                          momentum=0.9, **IMPLS[impl])
            assert_same_outcome(kwargs, dtype)


def test_differentiable_step_gradients_match_torch():
    """differentiable=True: autograd through two steps gives torch's gradients (params, grads, lr, wd)."""
    results = []
    for cls in (torch.optim.SGD, SGD):
        start = [p.requires_grad_() for p in make_params(torch.float64)]
        grads = [[g.requires_grad_() if g is not None else None for g in grads_for_step(start, s)] for s in range(3)]
        lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        wd = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        params = [p.clone() for p in start]
        opt = cls(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd, maximize=True, differentiable=True)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
        loss = sum((p * p).sum() for p in params)
        inputs = start + [g for gs in grads for g in gs if g is not None] + [lr, wd]
        results.append((params, torch.autograd.grad(loss, inputs, allow_unused=True)))
    for ours, ref in zip(results[1][0] + list(results[1][1]), results[0][0] + list(results[0][1])):
        if ref is None:
            assert ours is None
        else:
            assert_close(ours.detach(), ref.detach(), torch.float64, "differentiable")


# ---------------------------------------------------------------------------------------- parity, checkpoints
# (torch's fused SGD rejects complex params: that error is compared in the bitwise grid)
CROSS_LOAD = [(i, d) for i in ("forloop", "foreach", "fused") for d in (torch.float64, torch.float32, torch.complex128)
              if not (i == "fused" and d.is_complex)]


@pytest.mark.parametrize("impl, dtype", CROSS_LOAD, ids=[f"{i}-{str(d)[6:]}" for i, d in CROSS_LOAD])
def test_compat_matches_torch_with_state_dicts_cross_loaded(impl, dtype):
    """Two groups, None/zero grads, 0-d and transposed params; state dicts swapped both ways at step 2."""
    for flags in flag_grid():
        run_compat_parity(torch.optim.SGD, SGD, dict(HP, **flags, **IMPLS[impl]), dtype, swap_at=2)


def test_compat_defaults_match_torch():
    run_compat_parity(torch.optim.SGD, SGD, {}, torch.float64, two_groups=False)
    params = [torch.zeros(2, requires_grad=True)]
    assert SGD(params).defaults == torch.optim.SGD(params).defaults
    assert inspect.signature(SGD) == inspect.signature(torch.optim.SGD)


def test_state_is_torchs_no_step_and_lazy_buffers():
    """No state without momentum; a buffer per stepped param only, created at its first step."""
    for flags in (dict(momentum=0.0), dict(momentum=0.9, dampening=0.5)):
        kwargs = dict(HP, **flags)
        ref, ours = _run(torch.optim.SGD, kwargs, torch.float32, steps=1), _run(SGD, kwargs, torch.float32, steps=1)
        assert_bitwise(ours, ref)
        sd = ours[1].state_dict()
        assert sd["state"] == {} if not flags["momentum"] else list(sd["state"]) == [0, 2, 3]
        for entry in sd["state"].values():
            assert list(entry) == ["momentum_buffer"]


def test_loaded_none_buffer_starts_over_like_torch():
    """A state dict whose buffer is None (or an empty entry) makes the next step a first step."""
    ref = _run(torch.optim.SGD, dict(HP, momentum=0.9, dampening=0.5), torch.float64)[1]
    sd = copy.deepcopy(ref.state_dict())
    sd["state"][0]["momentum_buffer"] = None
    sd["state"][2] = {}
    results = []
    for cls in (torch.optim.SGD, SGD):
        ps = _params(torch.float64)
        opt = cls([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.05, momentum=0.9, dampening=0.5)
        opt.load_state_dict(copy.deepcopy(sd))
        for step in range(2):
            for p, g in zip(ps, _grads(ps, step + 3)):
                p.grad = g
            opt.step()
        results.append((ps, opt, []))
    assert_bitwise(results[1], results[0])


@pytest.mark.parametrize("bad", [
    lambda sd: sd["state"][0].update(momentum_buffer=torch.zeros(7)),
    lambda sd: sd["state"][0].update(momentum_buffer="zeros"),
    lambda sd: sd["state"].update({0: [1, 2]}),
], ids=["shape", "type", "entry"])
def test_malformed_state_dict_raises_and_leaves_optimizer_unchanged(bad):
    opt = _run(SGD, dict(HP, momentum=0.9), torch.float64)[1]
    before = copy.deepcopy(opt.state_dict())
    sd = copy.deepcopy(before)
    bad(sd)
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    assert_state_dicts_match(opt.state_dict(), before, torch.float64)


def test_setstate_and_pickle_like_torch():
    ref = _run(torch.optim.SGD, dict(HP, momentum=0.9), torch.float64)[1]
    sd = copy.deepcopy(ref.state_dict())
    for group in sd["param_groups"]:  # an old checkpoint
        for key in ("nesterov", "maximize", "foreach", "differentiable", "fused"):
            del group[key]
    loaded = []
    for cls in (torch.optim.SGD, SGD):
        ps = _params(torch.float64)
        opt = cls([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.05, momentum=0.9)
        opt.load_state_dict(copy.deepcopy(sd))
        loaded.append(opt.state_dict())
    assert_state_dicts_match(loaded[1], loaded[0], torch.float64)
    ours = _run(SGD, dict(HP, momentum=0.9), torch.float64)[1]
    assert_state_dicts_match(pickle.loads(pickle.dumps(ours)).state_dict(), ref.state_dict(), torch.float64)


# ---------------------------------------------------------------------------------------- sparse
def _sparse_grads(params, step):
    g = torch.Generator().manual_seed(7 + step)
    out = []
    for p in params:
        if p.dim() != 2:
            out.append(torch.randn(p.shape, generator=g, dtype=p.dtype))
            continue
        idx = torch.tensor([[0, 2, 2], [1, 0, 0]])  # a repeated index: uncoalesced
        out.append(torch.sparse_coo_tensor(idx, torch.randn(3, generator=g, dtype=p.dtype), p.shape))
    return out


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("impl", ["forloop", "foreach", "default", "fused"])
def test_sparse_grads_match_torch(impl):
    """Sparse (COO) gradients: torch's result where it takes them, its error where it refuses."""
    for flags in flag_grid():
        kwargs = dict(HP, **flags, **IMPLS[impl])
        outcomes = []
        for cls in (torch.optim.SGD, SGD):
            def run(cls=cls):
                ps = [p.requires_grad_() for p in make_params(torch.float64)]
                opt = cls(ps, **kwargs)
                for step in range(3):
                    for p, g in zip(ps, _sparse_grads(ps, step)):
                        p.grad = g
                    opt.step()
                return ps, opt, []
            outcomes.append(_outcome(run))
        ref, ours = outcomes
        if isinstance(ref[0], type):
            assert ours == ref, (flags, ours, ref)
        else:
            assert_bitwise(ours, ref)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_functional_sparse_grads_match_torch():
    """The functional buffer is dense (it exists from ``init``); torch's is sparse where the grads are."""
    for flags in (dict(momentum=0.0), dict(momentum=0.9, dampening=0.2),
                  dict(momentum=0.9, nesterov=True, maximize=True)):
        kwargs = dict(HP, **flags)
        ref = [p.requires_grad_() for p in make_params(torch.float64)]
        opt = torch.optim.SGD(ref, **kwargs)
        tx = sgd(**kwargs)
        tree = {f"p{i}": p.detach().clone() for i, p in enumerate(ref)}
        state = tx.init(tree)
        for step in range(3):
            grads = _sparse_grads(ref, step)
            for p, g in zip(ref, grads):
                p.grad = g.clone()
            opt.step()
            updates, state = tx.update({f"p{i}": g for i, g in enumerate(grads)}, state, tree)
            tree = fo.apply_updates(tree, updates)
            for i, p in enumerate(ref):
                assert_close(tree[f"p{i}"], p.detach(), torch.float64, f"p{i}")
                if flags["momentum"]:
                    assert_close(state.momentum_buffer[f"p{i}"], opt.state[p]["momentum_buffer"].to_dense(),
                                 torch.float64, f"buffer p{i}")
    tx = sgd(weight_decay=0.1)
    params = {"w": torch.zeros(5, 3)}
    expected = _raised(lambda: _run_sparse_wd(torch.optim.SGD))
    assert _raised(lambda: tx.update({"w": _sparse_grads([params["w"]], 0)[0]}, tx.init(params), params)) == expected
    assert _raised(lambda: _run_sparse_wd(SGD)) == expected


def _run_sparse_wd(cls):
    p = torch.zeros(5, 3, requires_grad=True)
    p.grad = _sparse_grads([p], 0)[0]
    cls([p], weight_decay=0.1).step()


# ---------------------------------------------------------------------------------------- fused
@pytest.mark.parametrize("found_inf", [0.0, 1.0])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fused_grad_scaler_contract_matches_torch(found_inf, momentum):
    """``grad_scale``/``found_inf`` set by GradScaler reach ``torch._fused_sgd_`` as in torch."""
    results = []
    for cls in (torch.optim.SGD, SGD):
        ps = [p.requires_grad_() for p in make_params(torch.float32)]
        opt = cls(ps, lr=0.1, momentum=momentum, fused=True)
        results.append(opt._step_supports_amp_scaling)
        for step in range(3):
            opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(found_inf if step == 1 else 0.0)
            for p in ps:
                p.grad = torch.full_like(p, 2.0 + step)
            opt.step()
        results.append((ps, opt, []))
    assert results[0] is results[2] is True
    assert_bitwise(results[3], results[1])


def test_grad_scaler_with_fused_matches_torch():
    def run(cls):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = cls(model.parameters(), lr=0.01, momentum=0.9, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
        data = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
        for step in range(4):
            opt.zero_grad()
            loss = model(data).pow(2).mean() * (float("inf") if step == 2 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return list(model.parameters()), opt, scaler.get_scale()

    ref, ours = run(torch.optim.SGD), run(SGD)
    assert ours[2] == ref[2]
    assert_bitwise((ours[0], ours[1], []), (ref[0], ref[1], []))


# ---------------------------------------------------------------------------------------- errors
BAD_HPARAMS = [
    dict(lr=-1.0),
    dict(lr=torch.tensor(-0.5)),
    dict(lr=torch.tensor([0.1, 0.2])),
    dict(momentum=-0.5),
    dict(weight_decay=-0.1),
    dict(weight_decay=torch.tensor(-0.1)),
    dict(nesterov=True),
    dict(nesterov=True, momentum=0.9, dampening=0.1),
    dict(lr=-1.0, momentum=-1.0),  # the first failing check wins, as in torch
    dict(momentum=-1.0, nesterov=True),
]


@pytest.mark.parametrize("bad", BAD_HPARAMS, ids=str)
def test_validation_errors_match_torch(bad):
    params = [torch.zeros(2, requires_grad=True)]
    expected = _raised(lambda: torch.optim.SGD(params, **bad))
    assert _raised(lambda: SGD(params, **bad)) == expected
    assert _raised(lambda: sgd(**bad)) == expected


@pytest.mark.parametrize("kwargs", [dict(fused=True, differentiable=True), dict(fused=True, foreach=True),
                                    dict(momentum=0.9, foo=1)], ids=str)
def test_constructor_flag_errors_match_torch(kwargs):
    params = [torch.zeros(2, requires_grad=True)]
    assert _raised(lambda: SGD(params, **kwargs)) == _raised(lambda: torch.optim.SGD(params, **kwargs))


def test_boundary_and_nan_hparams_are_accepted_like_torch():
    """torch's SGD compares ``x < 0``: zero and NaN pass (unlike Adam's ``not 0 <= x``)."""
    params = [torch.zeros(2, requires_grad=True)]
    for ok in (dict(lr=0.0), dict(lr=float("nan")), dict(momentum=float("nan")), dict(weight_decay=0.0),
               dict(dampening=-1.0), dict(momentum=0.5, dampening=1.5)):
        torch.optim.SGD(params, **ok)
        SGD(params, **ok)
        sgd(**ok)


def optim_db_info(torch_cls):
    return next(i for i in optim_db if i.optim_cls is torch_cls)


@requires_optim_db
def test_optim_db_configurations_are_bitwise_torchs():
    """PyTorch's own SGD configurations (``optim_db``), every implementation."""
    for config in optim_db_info(torch.optim.SGD).optim_inputs_func(device="cpu", dtype=torch.float32):
        for impl in IMPLS:
            kwargs = {**HP, **config.kwargs, **IMPLS[impl]}
            assert_same_outcome(kwargs, torch.float32, like_params=impl == "fused")


def optim_db_error_outcomes(torch_cls, compat_cls) -> None:
    """Each of optim_db's error inputs for ``torch_cls``: the same outcome (error type and message,
    or warning) from ``compat_cls``, at construction or at the step, as optim_db says."""
    for error in optim_db_info(torch_cls).optim_error_inputs_func(device="cpu", dtype=torch.float32):
        case = error.optimizer_error_input

        def run(cls, case=case, error=error):
            params = case.params if case.params is not None else [torch.randn(2, 2, requires_grad=True)]
            opt = cls(params, **case.kwargs)
            if error.error_on == OptimizerErrorEnum.STEP_ERROR:
                for group in opt.param_groups:
                    for p in group["params"]:
                        p.grad = torch.ones_like(p)
                opt.step()
            return "ok"

        if error.error_type is UserWarning:
            for cls in (torch_cls, compat_cls):
                with pytest.warns(UserWarning, match=error.error_regex):
                    run(cls)
            continue
        expected = _outcome(lambda: run(torch_cls))
        assert expected[0] is error.error_type, case.desc
        assert _outcome(lambda: run(compat_cls)) == expected, case.desc


@requires_optim_db
def test_optim_db_error_inputs_have_torchs_outcome():
    optim_db_error_outcomes(torch.optim.SGD, SGD)


def _generic_error_cases() -> list:
    """The error inputs optim_db (torch.testing._internal.common_optimizers) runs for every
    optimizer (its module needs ``expecttest``, so the cases are built here)."""
    p1, p2 = (torch.nn.Parameter(torch.randn(1, 1)) for _ in range(2))
    return [
        ("invalid param type", p1, {}),
        ("duplicate params across groups", [{"params": p1}, {"params": p1}], {}),
        ("Tensor lr must be 1-element", None, dict(lr=torch.tensor([0.001, 0.001]))),
        ("names on some params only", [("weight", p1), p2], {}),
        ("names on some groups only", [{"params": [p1], "lr": 1e-2}, {"params": [("weight", p2)]}], {}),
        ("momentum -0.5", None, dict(lr=1e-2, momentum=-0.5)),
    ]


@pytest.mark.parametrize("case", _generic_error_cases(), ids=lambda c: c[0])
def test_optim_db_error_inputs_match_torch(case):
    _, params, kwargs = case
    params = params if params is not None else [torch.zeros(1, 1, requires_grad=True)]
    expected = _raised(lambda: torch.optim.SGD(params, **kwargs))
    assert _raised(lambda: SGD(params, **kwargs)) == expected


def test_duplicate_params_warn_like_torch():
    p = torch.nn.Parameter(torch.randn(1, 1))
    for cls in (torch.optim.SGD, SGD):
        with pytest.warns(UserWarning, match="a parameter group with duplicate parameters"):
            cls([p, p])


def test_fused_late_buffer_error_matches_torch():
    """A param whose first gradient comes after the others' first step: torch's fused SGD hands
    its missing buffer to ``torch._fused_sgd_`` and fails; compat does what torch does."""
    kwargs = dict(lr=0.1, momentum=0.9, fused=True)
    ref = _outcome(lambda: _run(torch.optim.SGD, kwargs, torch.float32))
    assert ref[0] is TypeError
    assert _outcome(lambda: _run(SGD, kwargs, torch.float32)) == ref


def test_fused_device_dtype_check_matches_torch():
    outcomes = []
    for cls in (torch.optim.SGD, SGD):
        p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
        opt = cls([p], fused=True)
        p.grad = torch.ones_like(p)
        outcomes.append(_raised(opt.step))
    assert outcomes[0] == outcomes[1]


# ---------------------------------------------------------------------------------------- API
def test_lr_scheduler_drives_compat_like_torch():
    for lr in (0.1, torch.tensor(0.1)):
        out = []
        for cls in (torch.optim.SGD, SGD):
            ps = _params(torch.float32)
            opt = cls(ps, lr=lr.clone() if isinstance(lr, torch.Tensor) else lr, momentum=0.9)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10)  # momentum cycled too
            for step in range(5):
                for p, g in zip(ps, _grads(ps, step)):
                    p.grad = g
                opt.step()
                sched.step()
            out.append((ps, opt, []))
        assert_bitwise(out[1], out[0])


# ---------------------------------------------------------------------------------------- functional
FUNCTIONAL_FLAGS = [f for f in flag_grid() if f["weight_decay"] == 0.1 or not f["maximize"]]


@pytest.mark.parametrize("flags", FUNCTIONAL_FLAGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128], ids=str)
def test_functional_matches_torch(flags, dtype):
    kwargs = dict(HP, **flags)
    run_functional_parity(torch.optim.SGD, lambda: sgd(**kwargs), kwargs, dtype)


def _late_first_grads(params, step, seed=1):
    """Param 1 gets its first gradient at step 3: its first step comes after the others'."""
    grads = grads_for_step(params, step, seed)
    if step < 3:
        grads[1] = None
    return grads


def test_functional_first_step_of_a_late_param_and_tensor_hparams_match_torch():
    kwargs = dict(lr=0.05, momentum=0.9, dampening=0.4, weight_decay=0.1)
    run_functional_parity(torch.optim.SGD, lambda: sgd(**kwargs), kwargs, torch.float64, grad_fn=_late_first_grads)
    run_functional_parity(torch.optim.SGD, sgd, {}, torch.float64)
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in kwargs.items()}
    run_functional_parity(torch.optim.SGD, lambda: sgd(**t), kwargs, torch.float64, grad_fn=_late_first_grads)


def test_functional_update_is_pure_counts_steps_and_skips_none_grads():
    tx = sgd(lr=0.1, momentum=0.9, dampening=0.5)
    params = {"a": torch.randn(3), "b": torch.randn(2)}
    state = tx.init(params)
    assert isinstance(state, SGDState) and torch.equal(state.momentum_buffer["a"], torch.zeros(3))
    snapshot = copy.deepcopy((params, state))
    g = torch.randn(3)
    updates, new_state = tx.update({"a": g, "b": None}, state, params)
    torch.testing.assert_close((params, state), snapshot, rtol=0, atol=0)
    assert updates["b"] is None and new_state.momentum_buffer["b"] is state.momentum_buffer["b"]
    assert torch.equal(new_state.momentum_buffer["a"], g)  # the first step copies the gradient
    assert float(new_state.step["a"]) == 1.0 and float(new_state.step["b"]) == 0.0
    assert sgd().init(params).momentum_buffer is fo.EMPTY


def test_functional_momentum_needs_a_buffer():
    tx = sgd(lr=0.1)
    params = {"a": torch.randn(3)}
    with pytest.raises(ValueError, match="momentum=0.9 needs a momentum buffer"):
        tx.update({"a": torch.randn(3)}, tx.init(params), params, SGDHParams(lr=0.1, momentum=0.9))


def test_functional_compiles_without_recompiling_on_tensor_hparams():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = sgd(momentum=0.9, nesterov=True, maximize=True)
    params = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    grads = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    counter = CompileCounter()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = state_eager = tx.init(params)
    for lr, mu, wd in ((0.5, 0.9, 0.0), (0.1, 0.7, 0.1), (2.0, 0.5, 0.2)):
        hp = SGDHParams(lr=torch.tensor(lr), momentum=torch.tensor(mu), dampening=0.0, weight_decay=torch.tensor(wd))
        updates, state = compiled(grads, state, params, hp)
        expected, state_eager = tx.update(grads, state_eager, params, hp)
        torch.testing.assert_close(fo.apply_updates(params, updates), fo.apply_updates(params, expected))
        torch.testing.assert_close(state, state_eager)
    assert counter.frame_count == 1


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_to_functional_and_back_continue_like_torch(momentum):
    """compat -> functional mid-run (param 1 not stepped yet) -> compat: torch's numbers throughout."""
    kwargs = dict(lr=0.05, momentum=momentum, dampening=0.3 if momentum else 0.0, weight_decay=0.1)
    ref_ps = _params(torch.float64)
    ref = torch.optim.SGD(ref_ps, **kwargs)
    ours_ps = _params(torch.float64)
    ours = SGD(ours_ps, **kwargs)
    check_functional_round_trip(ref, ours, ref_ps, ours_ps, _grads)


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


#: The shared compile / vmap / gradcheck tests run the registry's SGD (momentum, weight decay);
#: these run them on Nesterov momentum and on dampening (the first step's ``lerp``) as well.
VARIANTS = [
    Entry("sgd-nesterov", sgd, SGDHParams, torch.optim.SGD, SGD,
          dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
          lambda s: dict(lr=_t(0.05 / (1 + s)), momentum=_t(0.9 - 0.1 * s))),
    Entry("sgd-dampening", sgd, SGDHParams, torch.optim.SGD, SGD,
          dict(lr=0.05, momentum=0.9, dampening=0.3, maximize=True),
          lambda s: dict(lr=_t(0.05 / (1 + s)), dampening=_t(0.3 + 0.1 * s), weight_decay=_t(0.01 * s))),
]


@pytest.mark.parametrize("entry", VARIANTS, ids=[e.name for e in VARIANTS])
def test_variants_vmap_gradcheck_and_compile(entry):
    test_func_transforms.test_vmapped_ensemble_equals_separate_runs(entry)
    test_func_transforms.test_hypergradient_through_unrolled_updates_passes_gradcheck(entry)
    test_compile.test_compiled_functional_train_step_matches_eager_without_recompiles(entry)

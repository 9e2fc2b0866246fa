"""RAdam: functional and compat against torch.optim.RAdam, every flag and implementation.

This module also holds the suite shared with ``test_adamax.py``, ``test_asgd.py`` and
``test_rprop.py`` (:class:`Spec`, :func:`standard_tests`): each of those optimizers is checked the
same way, case by case against torch.optim itself:

* compat, each implementation (for-loop, foreach, differentiable, capturable for-loop and foreach
  with CPU counted as capturable, default) bitwise equal to torch's same implementation, every flag
  combination, float16/bfloat16/float32/float64 and complex, a float and a tensor ``lr``: two param
  groups, a 2-D, 1-D, 0-d and non-contiguous parameter, ``None`` and zero gradients, and the state
  dicts cross-loaded torch <-> compat mid-run;
* PyTorch's own configurations (``optim_db``) bitwise, and its error inputs with the same outcome;
* the functional update against torch every flag combination (float64 ``rtol=1e-12``, float32,
  complex128, tensor ``lr``), pure, ``None`` grads skipped;
* signatures, defaults, validation errors, per-step errors, state layout, old checkpoints, int64
  steps, gradients through ``differentiable=True`` steps.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import itertools
import pickle
import warnings
from typing import Any, Callable

import pytest
import torch

import functional_optim as fo
from _parity import grads_for_step, make_params, run_functional_parity, signature_shape
from compat.radam import RAdam

try:  # PyTorch's own optimizer test database; torch.testing._internal needs the ``expecttest`` package
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db
except ImportError:  # pragma: no cover - depends on the environment
    optim_db = OptimizerErrorEnum = None
requires_optim_db = pytest.mark.skipif(optim_db is None, reason="torch.testing._internal.common_optimizers "
                                       "cannot be imported (pip install expecttest)")

# torch's differentiable mode steps non-leaf params, whose .grad access warns
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")

# ---------------------------------------------------------------------------------------- the suite
IMPLS = {
    "default": {},
    "forloop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "differentiable": dict(foreach=False, differentiable=True),
    "capturable": dict(foreach=False, capturable=True),
    "capturable_foreach": dict(foreach=True, capturable=True),
}
REAL = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
COMPLEX = [torch.complex64, torch.complex128]
STEPS = 8


@dataclasses.dataclass(frozen=True)
class Spec:
    """One optimizer as the shared suite tests it."""

    torch_cls: type
    compat_cls: type
    factory: Callable[..., fo.GradientTransformation]
    hparams: dict  # torch-style keyword arguments every case uses
    grid: dict  # flag -> values; every combination is tested
    bad: list  # constructor kwargs torch refuses
    #: (implementation, dtype) cells where compat is not bitwise torch's same implementation
    not_bitwise: frozenset = frozenset()
    #: state keys that hold per-parameter scalars besides ``step`` (e.g. ASGD's ``eta``, ``mu``)
    scalar_keys: tuple = ()
    #: steps differentiated through in the ``differentiable=True`` test
    differentiable_steps: int = 2

    @property
    def module(self):
        return importlib.import_module(self.torch_cls.__module__)

    def flags(self) -> list[dict]:
        return [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]

    def kwargs(self, impl: str = "default", **extra) -> dict:
        return dict(self.hparams, **IMPLS[impl], **extra)


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """Let torch's and compat's ``capturable`` device checks accept CPU tensors (torch's capturable
    code is plain tensor math, so it runs on CPU once CPU counts as a capturable device)."""
    from torch.optim.optimizer import _get_capturable_supported_devices as supported

    def with_cpu(supports_xla: bool = True) -> list:
        return supported(supports_xla) + ["cpu"]

    for name in ("radam", "adamax", "asgd", "rprop"):
        monkeypatch.setattr(importlib.import_module(f"torch.optim.{name}"), "_get_capturable_supported_devices", with_cpu)
    monkeypatch.setattr(importlib.import_module("compat._rules"), "_get_capturable_supported_devices", with_cpu)


def fresh_params(dtype: torch.dtype, differentiable: bool = False) -> list[torch.Tensor]:
    """:func:`make_params` (2-D, 1-D, 0-d, transposed) in ``dtype``; non-leaf copies carrying
    autograd history under ``differentiable`` (torch's differentiable mode steps those in place)."""
    source = torch.complex128 if dtype.is_complex else torch.float64
    params = [p.to(dtype).requires_grad_() for p in make_params(source)]
    return [p.clone() for p in params] if differentiable else params


def two_groups(params: list, lr: Any) -> list[dict]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": lr * 0.5}]


def same(a: Any, b: Any) -> bool:
    """Equal state-dict values: tensors bitwise with dtype, shape and device; containers recursively."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and (a.dtype, a.shape, a.device)
                == (b.dtype, b.shape, b.device) and torch.equal(a.detach(), b.detach()))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_same_run(ours: list, ref: list, opt_ours, opt_ref, what: str) -> None:
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert o.dtype == r.dtype and torch.equal(o.detach(), r.detach()), f"{what}: param {i}"
    assert same(opt_ours.state_dict(), opt_ref.state_dict()), f"{what}: state dict"


def run_side_by_side(spec: Spec, kwargs: dict, dtype: torch.dtype, steps: int = STEPS,
                     swap_at: int | None = None) -> None:
    """torch and compat on the same grads, two param groups; bitwise after every step. With
    ``swap_at`` the state dicts are cross-loaded (torch -> compat, compat -> torch) after that step."""
    differentiable = kwargs.get("differentiable", False)
    ref, ours = fresh_params(dtype, differentiable), fresh_params(dtype, differentiable)
    lr = kwargs.get("lr", inspect.signature(spec.torch_cls).parameters["lr"].default)
    opt_ref = spec.torch_cls(two_groups(ref, lr), **copy.deepcopy(kwargs))
    opt_ours = spec.compat_cls(two_groups(ours, lr), **copy.deepcopy(kwargs))
    for step in range(steps):
        for r, o, g in zip(ref, ours, grads_for_step(ref, step)):
            r.grad = None if g is None else g.clone()
            o.grad = None if g is None else g.clone()
        opt_ref.step()
        opt_ours.step()
        assert_same_run(ours, ref, opt_ours, opt_ref, f"{kwargs} {dtype} step {step}")
        if step == swap_at:
            sd_ref, sd_ours = copy.deepcopy(opt_ref.state_dict()), copy.deepcopy(opt_ours.state_dict())
            opt_ours = spec.compat_cls(two_groups(ours, lr), **copy.deepcopy(kwargs))
            opt_ours.load_state_dict(sd_ref)
            opt_ref = spec.torch_cls(two_groups(ref, lr), **copy.deepcopy(kwargs))
            opt_ref.load_state_dict(sd_ours)


def step_n(opt, params: list, steps: int, start: int = 0):
    """``opt`` after ``steps`` steps on :func:`grads_for_step` (from step ``start``)."""
    for step in range(start, start + steps):
        for p, g in zip(params, grads_for_step(params, step)):
            p.grad = g
        opt.step()
    return opt


def stepped(cls, params: list, steps: int = 2, **kwargs):
    return step_n(cls(params, **kwargs), params, steps)


def outcome(fn: Callable) -> tuple:
    """``("ok", warnings)`` or ``("raised", type, message)``: what a call did, to compare two calls."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any exception is an outcome to compare
            return ("raised", type(e), str(e))
    return ("ok", sorted(str(w.message) for w in caught))


def implementation_cases(spec: Spec) -> list:
    impls = [i for i in IMPLS if i != "default"]
    dtypes = REAL + (COMPLEX if spec.compat_cls.definition.supports_complex else [])
    cases = []
    for impl, dtype in itertools.product(impls, dtypes):
        marks = (pytest.mark.xfail(strict=True, reason="not bitwise (see the spec's not_bitwise)")
                 if (impl, dtype) in spec.not_bitwise else ())
        cases.append(pytest.param(impl, dtype, marks=marks, id=f"{impl}-{str(dtype)[6:]}"))
    return cases


def standard_tests(spec: Spec) -> dict:
    """The shared tests for ``spec`` and the fixture they use, for a test module's namespace
    (``globals().update(standard_tests(SPEC))``)."""
    name = spec.torch_cls.__name__

    def test_signature_and_defaults_are_torchs():
        assert inspect.signature(spec.compat_cls) == inspect.signature(spec.torch_cls)
        params = [torch.zeros(2, requires_grad=True)]
        assert spec.compat_cls(params).defaults == spec.torch_cls(params).defaults
        impl_flags = ("self", "params", "foreach", "capturable", "differentiable")
        expected = [(n, d) for n, _, d in signature_shape(spec.torch_cls.__init__) if n not in impl_flags]
        assert [(n, d) for n, _, d in signature_shape(spec.factory)] == expected

    @pytest.mark.usefixtures("capturable_on_cpu")
    @pytest.mark.parametrize("impl, dtype", implementation_cases(spec))
    def test_each_implementation_is_bitwise_torchs(impl, dtype):
        """Every flag combination, a float ``lr`` and (with weight decay) a tensor one."""
        for flags in spec.flags():
            run_side_by_side(spec, spec.kwargs(impl, **flags), dtype)
        lr = torch.tensor(spec.kwargs()["lr"])
        run_side_by_side(spec, spec.kwargs(impl, **spec.flags()[-1], lr=lr), dtype)

    @pytest.mark.parametrize("impl", ["default", "forloop", "foreach"])
    def test_state_dicts_cross_load_mid_run(impl):
        run_side_by_side(spec, spec.kwargs(impl, **spec.flags()[-1]), torch.float32, swap_at=3)
        run_side_by_side(spec, spec.kwargs(impl, lr=torch.tensor([spec.kwargs()["lr"]])), torch.float64, swap_at=2)

    @requires_optim_db
    def test_optim_db_configurations_are_bitwise_torchs():
        info = next(i for i in optim_db if i.optim_cls is spec.torch_cls)
        for config in info.optim_inputs_func(device="cpu", dtype=torch.float32):
            for impl in ("forloop", "foreach"):
                run_side_by_side(spec, dict(config.kwargs, **IMPLS[impl]), torch.float32, steps=4)

    @requires_optim_db
    def test_optim_db_error_inputs_have_torchs_outcome():
        info = next(i for i in optim_db if i.optim_cls is spec.torch_cls)
        for error in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
            case = error.optimizer_error_input

            def run(cls):
                params = case.params if case.params is not None else [torch.randn(2, 2, requires_grad=True)]
                opt = cls(params, **case.kwargs)
                if error.error_on == OptimizerErrorEnum.STEP_ERROR:
                    for group in opt.param_groups:
                        for p in group["params"]:
                            p.grad = torch.ones_like(p)
                    opt.step()

            assert outcome(lambda: run(spec.compat_cls)) == outcome(lambda: run(spec.torch_cls)), case.desc

    @pytest.mark.parametrize("bad", spec.bad, ids=str)
    def test_validation_errors_are_torchs(bad):
        params = [torch.zeros(2, requires_grad=True)]
        expected = outcome(lambda: spec.torch_cls(params, **bad))
        assert expected[0] == "raised"
        assert outcome(lambda: spec.compat_cls(params, **bad)) == expected
        functional = {k: v for k, v in bad.items() if k in inspect.signature(spec.factory).parameters}
        if functional == bad:
            assert outcome(lambda: spec.factory(**bad)) == expected

    def test_step_errors_are_torchs():
        """Sparse gradients, ``capturable`` on CPU (the state is made first), foreach with
        ``differentiable``, ``fused``: the same error, the same state left behind."""
        cases = [({}, lambda p: torch.ones(3).to_sparse()),
                 (dict(capturable=True, foreach=False), torch.ones_like),
                 (dict(capturable=True, foreach=True), torch.ones_like),
                 (dict(foreach=True, differentiable=True), torch.ones_like),
                 (dict(fused=True), torch.ones_like)]
        for kwargs, grad in cases:
            outcomes, state_dicts = [], []
            for cls in (spec.torch_cls, spec.compat_cls):
                p, made = torch.ones(3, requires_grad=True), []

                def run():
                    made.append(cls([p], **kwargs))
                    p.grad = grad(p)
                    made[0].step()

                outcomes.append(outcome(run))
                state_dicts.append(made[0].state_dict() if made else None)
            assert outcomes[1] == outcomes[0] and outcomes[0][0] == "raised", (kwargs, outcomes)
            assert same(state_dicts[1], state_dicts[0]), kwargs

    def test_state_layout_is_torchs():
        ref = stepped(spec.torch_cls, fresh_params(torch.float32), **spec.hparams)
        ours = stepped(spec.compat_cls, fresh_params(torch.float32), **spec.hparams)
        for r, o in zip(ref.state.values(), ours.state.values()):
            assert list(o) == list(r)
            for key in r:
                assert (o[key].dtype, o[key].device, o[key].shape, o[key].stride()) == (
                    r[key].dtype, r[key].device, r[key].shape, r[key].stride()), key

    def test_float64_default_dtype_state_is_torchs():
        torch.set_default_dtype(torch.float64)
        ref = stepped(spec.torch_cls, fresh_params(torch.float64), **spec.hparams)
        ours = stepped(spec.compat_cls, fresh_params(torch.float64), **spec.hparams)
        assert same(ours.state_dict(), ref.state_dict())

    def test_old_checkpoints_load_like_torch():
        """Counters stored as numbers and missing flags (an old checkpoint), and pickling."""
        sd = copy.deepcopy(stepped(spec.torch_cls, fresh_params(torch.float32), **spec.hparams).state_dict())
        for entry in sd["state"].values():
            for key in ("step", *spec.scalar_keys):
                entry[key] = entry[key].item()
        for group in sd["param_groups"]:
            for key in ("foreach", "maximize", "differentiable", "capturable", "decoupled_weight_decay"):
                group.pop(key, None)
        loaded = []
        for cls in (spec.torch_cls, spec.compat_cls):
            params = fresh_params(torch.float32)
            opt = cls(params, **spec.hparams)
            opt.load_state_dict(copy.deepcopy(sd))
            loaded.append((step_n(opt, params, 2, start=5), params))
        (ref, ref_params), (ours, params) = loaded
        assert_same_run(params, ref_params, ours, ref, "after loading")
        ours = pickle.loads(pickle.dumps(stepped(spec.compat_cls, fresh_params(torch.float32), **spec.hparams)))
        ref = stepped(spec.torch_cls, fresh_params(torch.float32), **spec.hparams)
        assert same(ours.state_dict(), ref.state_dict())

    @pytest.mark.usefixtures("capturable_on_cpu")
    @pytest.mark.parametrize("impl", ["forloop", "foreach", "capturable"])
    def test_int64_step_checkpoint_continues_like_torch(impl):
        """torch keeps an int64 ``step`` tensor on load; its for-loop counts on with it, its foreach
        code fails on it. compat does what torch's same implementation does."""
        sd = copy.deepcopy(stepped(spec.torch_cls, fresh_params(torch.float32), 3, **spec.kwargs(impl)).state_dict())
        for entry in sd["state"].values():
            entry["step"] = torch.tensor(3)
        runs = []
        for cls in (spec.torch_cls, spec.compat_cls):
            params = fresh_params(torch.float32)
            opt = cls(params, **spec.kwargs(impl))
            opt.load_state_dict(copy.deepcopy(sd))
            runs.append((params, opt, outcome(lambda: step_n(opt, params, 3))))
        (ref_params, ref, ref_outcome), (params, ours, our_outcome) = runs
        assert our_outcome == ref_outcome
        assert_same_run(params, ref_params, ours, ref, f"int64 step, {impl}")

    def test_differentiable_step_gives_torchs_gradients():
        """``differentiable=True``: autograd through the steps, w.r.t. the initial params and the grads."""
        results = []
        for cls in (spec.torch_cls, spec.compat_cls):
            start = [p.requires_grad_() for p in make_params(torch.float64)]
            grads = [[g.requires_grad_() if g is not None else None for g in grads_for_step(start, s)]
                     for s in range(spec.differentiable_steps)]
            params = [p.clone() for p in start]
            opt = cls(params, differentiable=True, **dict(spec.hparams, **spec.flags()[-1]))
            for step_grads in grads:
                for p, g in zip(params, step_grads):
                    p.grad = g
                opt.step()
            loss = sum((p * p).sum() for p in params)
            inputs = start + [g for gs in grads for g in gs if g is not None]
            results.append([t.detach() for t in (*params, *torch.autograd.grad(loss, inputs, allow_unused=True,
                                                                               materialize_grads=True))])
        for ours, ref in zip(results[1], results[0]):
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128], ids=str)
    def test_functional_update_matches_torch(dtype):
        for flags in spec.flags():
            kwargs = dict(spec.hparams, **flags)
            run_functional_parity(spec.torch_cls, lambda: spec.factory(**kwargs), kwargs, dtype, steps=STEPS)

    def test_functional_defaults_and_tensor_hparams_match_torch():
        run_functional_parity(spec.torch_cls, spec.factory, {}, torch.float64, steps=STEPS)
        kwargs = dict(spec.hparams, **spec.flags()[-1], lr=torch.tensor(spec.hparams["lr"], dtype=torch.float64))
        run_functional_parity(spec.torch_cls, lambda: spec.factory(**kwargs), kwargs, torch.float64, steps=STEPS)

    def test_functional_update_is_pure_and_skips_none_grads():
        tx = spec.factory(**spec.hparams)
        params = {"a": torch.randn(3), "b": torch.randn(2)}
        state = tx.init(params)
        snapshot = copy.deepcopy((params, state))
        updates, new_state = tx.update({"a": torch.randn(3), "b": None}, state, params)
        torch.testing.assert_close((params, state), snapshot, rtol=0, atol=0)
        assert updates["b"] is None
        for field in new_state._fields:
            if field != "step":
                assert getattr(new_state, field)["b"] is getattr(state, field)["b"]
        assert float(new_state.step["a"]) == 1.0 and float(new_state.step["b"]) == 0.0

    def test_functional_state_round_trips_through_compat():
        """``to_functional`` mid-run, continued functionally, equals continuing with torch."""
        params = fresh_params(torch.float64)
        ref = stepped(spec.torch_cls, [p.detach().clone().requires_grad_() for p in params], 3, **spec.hparams)
        ours = stepped(spec.compat_cls, params, 3, **spec.hparams)
        tree = {f"p{i}": p for i, p in enumerate(params)}
        tx, state = ours.to_functional(tree)
        tree = {k: v.detach().clone() for k, v in tree.items()}
        ref_params = list(ref.state)
        for step in range(3, 6):
            grads = grads_for_step(params, step)
            for p, g in zip(ref_params, grads):
                p.grad = g
            ref.step()
            updates, state = tx.update({f"p{i}": g for i, g in enumerate(grads)}, state, tree)
            tree = fo.apply_updates(tree, updates)
        for i, p in enumerate(ref_params):
            torch.testing.assert_close(tree[f"p{i}"], p.detach(), rtol=1e-12, atol=1e-14)

    tests = {k: v for k, v in locals().items() if k.startswith("test_")}
    for fn in tests.values():
        fn.__doc__ = f"{name}: {fn.__doc__ or fn.__name__}"
    return {"capturable_on_cpu": capturable_on_cpu, **tests}  # the fixture, where the tests are


# ---------------------------------------------------------------------------------------- RAdam
SPEC = Spec(
    torch_cls=torch.optim.RAdam,
    compat_cls=RAdam,
    factory=fo.radam,
    # beta2 = 0.9: rho_t > 5 from step 7 on, so every run covers both sides of the rectification switch
    hparams=dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6),
    grid=dict(weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True]),
    bad=[dict(lr=-1.0), dict(lr=float("nan")), dict(lr=torch.tensor(-0.5)), dict(lr=torch.tensor([0.1, 0.2])),
         dict(eps=-1e-6), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)), dict(weight_decay=-0.1),
         dict(lr=-1.0, betas=(2.0, 0.9), weight_decay=-1.0), dict(eps=-1.0, betas=(2.0, 0.9))],
)
globals().update(standard_tests(SPEC))


def test_the_runs_cover_both_sides_of_the_rectification_switch():
    beta2 = SPEC.hparams["betas"][1]
    rho_inf = 2 / (1 - beta2) - 1
    rho = [rho_inf - 2 * t * beta2**t / (1 - beta2**t) for t in range(1, STEPS + 1)]
    assert any(r <= 5 for r in rho) and any(r > 5 for r in rho)


def test_compiled_functional_update_switches_rectification_without_recompiling():
    """The switch on ``rho_t`` is data (``torch.where``): one graph for every step, equal to eager."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = fo.radam(**SPEC.hparams)
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    counter = CompileCounter()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = eager_state = tx.init(params)
    eager_params = params
    for step in range(STEPS):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        hp = fo.RAdamHParams(lr=torch.tensor(0.05 / (1 + step)), betas=(0.8, 0.9), eps=1e-6, weight_decay=0.0)
        updates, state = compiled(grads, state, params, hp)
        params = fo.apply_updates(params, updates)
        expected, eager_state = tx.update(grads, eager_state, eager_params, hp)
        eager_params = fo.apply_updates(eager_params, expected)
        torch.testing.assert_close(params, eager_params, rtol=1e-12, atol=1e-14)
    assert counter.frame_count == 1


def test_vmapped_members_on_either_side_of_the_switch():
    """Ensemble members at different step counts (rectified and not) in one vmapped update."""
    tx = fo.radam(**SPEC.hparams)
    members = [{"w": torch.randn(4, dtype=torch.float64)} for _ in range(3)]
    states = [tx.init(m) for m in members]
    for i, (m, s) in enumerate(zip(members, states)):  # member i has taken 3 * i steps
        for _ in range(3 * i):
            updates, s = tx.update({"w": torch.ones(4, dtype=torch.float64)}, s, m)
            m = fo.apply_updates(m, updates)
        members[i], states[i] = m, s
    stack = lambda trees: torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *trees)  # noqa: E731
    grads = {"w": torch.randn(3, 4, dtype=torch.float64)}
    updates, _ = torch.func.vmap(tx.update)(grads, stack(states), stack(members))
    for i, (m, s) in enumerate(zip(members, states)):
        single, _ = tx.update({"w": grads["w"][i]}, s, m)
        torch.testing.assert_close(updates["w"][i], single["w"], rtol=1e-12, atol=1e-14)

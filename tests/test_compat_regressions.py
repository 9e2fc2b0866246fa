"""compat against torch.optim itself, implementation by implementation (issue 9).

* Each compat implementation (for-loop, foreach, differentiable, capturable for-loop and foreach,
  fused) steps next to torch's implementation of the same name, every flag combination, every
  dtype torch takes on CPU, and must match it bit for bit: :data:`NOT_BITWISE` lists, as strict
  expected failures, the cells where it does not (yet).
* A checkpoint whose ``step`` is an int64 tensor continues as in torch.
* A malformed ``step`` in a state dict raises before anything changes; well-formed ones load as
  in torch.
* A parameter listed twice in one group is stepped as torch steps it.
* A gradient whose shape differs from its parameter's is refused before anything changes.

``capturable`` is a CUDA feature; torch's capturable code is plain tensor math, so it runs on CPU
once CPU counts as a capturable device (:func:`capturable_on_cpu`).
"""

from __future__ import annotations

import copy
import importlib
import itertools
import re
import warnings

import pytest
import torch

import compat
from _parity import make_params, same_value

# torch's differentiable mode steps non-leaf params, whose .grad access warns
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")

# ---------------------------------------------------------------------------------------- cases
#: torch-style hyperparameters and the flag grid of each optimizer
OPTIMIZERS = {
    "Adam": (dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6),
             dict(amsgrad=[False, True], maximize=[False, True], weight_decay=[0.0, 0.1])),
    "AdamW": (dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6), dict(amsgrad=[False, True], maximize=[False, True])),
    "Adagrad": (dict(lr=0.1, initial_accumulator_value=0.1),
                dict(lr_decay=[0.0, 0.1], weight_decay=[0.0, 0.1], maximize=[False, True])),
    "Adadelta": (dict(lr=0.5, rho=0.8, eps=1e-4), dict(weight_decay=[0.0, 0.1], maximize=[False, True])),
    "NAdam": (dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, momentum_decay=0.1),
              dict(weight_decay=[0.0, 0.1], maximize=[False, True], decoupled_weight_decay=[False, True])),
    "Adafactor": (dict(lr=0.05), dict(weight_decay=[0.0, 0.1], maximize=[False, True])),
}
IMPLS = {
    "default": {},
    "forloop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "differentiable": dict(foreach=False, differentiable=True),
    "capturable": dict(foreach=False, capturable=True),
    "capturable_foreach": dict(foreach=True, capturable=True),
    "fused": dict(fused=True),
}
#: the implementations torch has for each optimizer (besides its default)
HAS = {
    "Adam": ["forloop", "foreach", "differentiable", "capturable", "capturable_foreach", "fused"],
    "AdamW": ["forloop", "foreach", "differentiable", "capturable", "capturable_foreach", "fused"],
    "Adagrad": ["forloop", "foreach", "differentiable", "fused"],
    "Adadelta": ["forloop", "foreach", "differentiable", "capturable", "capturable_foreach"],
    "NAdam": ["forloop", "foreach", "differentiable", "capturable", "capturable_foreach"],
    "Adafactor": ["forloop", "foreach"],
}
HALF = (torch.float16, torch.bfloat16)
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ALL = tuple(DTYPES)
#: (optimizer, implementation) -> dtypes where compat is not bitwise torch's same implementation.
#: Empty: every cell is bitwise. Where torch's implementations order the same math differently,
#: an ``Ops`` method gives each in-place ``Ops`` its torch twin's rounding (Adam's capturable and
#: differentiable step size folded into the denominator: ``Ops.neg_quotients``/``addcdiv_sqrt_``;
#: foreach scaling before adding or dividing, in place where torch's is: ``Ops.scale_and_add_``
#: (Adafactor, Adadelta), ``Ops.scale_and_addcdiv_`` (Adagrad)).
NOT_BITWISE: dict = {}
STEPS = 10
MODULES_WITH_CAPTURABLE_CHECK = ("torch.optim.adam", "torch.optim.nadam", "torch.optim.adadelta",
                                 "compat.optimizer", "compat.nadam", "compat.adadelta")


def flag_grid(name: str) -> list[dict]:
    grid = OPTIMIZERS[name][1]
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def kwargs_for(name: str, impl: str, **extra) -> dict:
    return dict(OPTIMIZERS[name][0], **IMPLS[impl], **extra)


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """Let torch's and compat's ``capturable`` device checks accept CPU tensors."""
    from torch.optim.optimizer import _get_capturable_supported_devices as supported

    def with_cpu(supports_xla: bool = True) -> list:
        return supported(supports_xla) + ["cpu"]

    for module in MODULES_WITH_CAPTURABLE_CHECK:
        monkeypatch.setattr(importlib.import_module(module), "_get_capturable_supported_devices", with_cpu)


# ---------------------------------------------------------------------------------------- helpers
def new_params(dtype: torch.dtype, differentiable: bool = False) -> list[torch.Tensor]:
    """:func:`make_params` in ``dtype``; under ``differentiable`` non-leaf tensors that carry
    autograd history (torch's differentiable mode steps those in place)."""
    params = [p.to(dtype) for p in make_params(torch.float32)]
    if differentiable:
        return [p.requires_grad_().clone() for p in params]
    return [p.requires_grad_() for p in params]


def grads(params: list, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]


def run(cls, params: list, kwargs: dict, steps: int):
    """``cls(params, **kwargs)`` after ``steps`` steps (see :func:`step_n`)."""
    return step_n(cls(params, **kwargs), params, steps)


def step_n(opt, params: list, steps: int):
    """``opt`` after ``steps`` steps on generated gradients (one per distinct param)."""
    unique = list({id(p): p for p in params}.values())
    for step in range(steps):
        for p, g in zip(unique, grads(unique, step)):
            p.grad = g
        opt.step()
    return opt


def outcome(fn):
    """``("ok", value)`` or ``("raised", type, message)``: for comparing what two calls did."""
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - any exception is an outcome to compare
        return ("raised", type(e), str(e))


def assert_bitwise(ours: list, ref: list, opt_ours, opt_ref) -> None:
    """Params and every state value equal bit for bit, with the same dtypes."""
    for o, r in zip(ours, ref):
        assert o.dtype == r.dtype and torch.equal(o.detach(), r.detach())
        assert list(opt_ours.state[o]) == list(opt_ref.state[r])
        for key, value in opt_ref.state[r].items():
            mine = opt_ours.state[o][key]
            assert same_value(mine, value), (key, mine, value)


def assert_matches(ours, ref, opt_ours, opt_ref, bitwise: bool) -> None:
    """Bitwise where that is proven, else to float rounding (the cells of :data:`NOT_BITWISE`)."""
    if bitwise:
        assert_bitwise(ours, ref, opt_ours, opt_ref)
        return
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o.detach(), r.detach(), rtol=1e-4, atol=1e-5)
        for key, value in opt_ref.state[r].items():
            torch.testing.assert_close(opt_ours.state[o][key], value, rtol=1e-4, atol=1e-5)


def is_bitwise(name: str, impl: str, dtype: torch.dtype) -> bool:
    return dtype not in NOT_BITWISE.get((name, impl), ())


# ---------------------------------------------------------------------------------------- 6: parity
def implementation_cases() -> list:
    cases = []
    for name, impls in HAS.items():
        for impl, dtype in itertools.product(impls, DTYPES):
            marks = () if is_bitwise(name, impl, dtype) else pytest.mark.xfail(
                strict=True, reason="not bitwise torch's same implementation (see NOT_BITWISE)")
            cases.append(pytest.param(name, impl, dtype, marks=marks, id=f"{name}-{impl}-{dtype}"))
    return cases


@pytest.mark.usefixtures("capturable_on_cpu")
@pytest.mark.parametrize("name, impl, dtype", implementation_cases())
def test_each_implementation_is_bitwise_torch_same_implementation(name, impl, dtype):
    """Every flag combination, ``STEPS`` steps: params and every state tensor equal bit for bit."""
    differentiable = impl == "differentiable"
    for flags in flag_grid(name):
        kwargs = kwargs_for(name, impl, **flags)
        ref, ours = new_params(dtype, differentiable), new_params(dtype, differentiable)
        opt_ref = run(getattr(torch.optim, name), ref, kwargs, STEPS)
        opt_ours = run(getattr(compat, name), ours, kwargs, STEPS)
        assert_bitwise(ours, ref, opt_ours, opt_ref)


#: implementations that are not bitwise torch's with a tensor ``lr``, beyond NOT_BITWISE. Empty:
#: torch's loops read the tensor as a number where it is ``add_``'s alpha (Adadelta, capturable and
#: differentiable too: ``Ops.scale_and_add_``); its foreach NAdam reads it with ``.item()`` for the
#: step sizes (``Ops.step_size_lr``); its foreach Adagrad scales the grads by it first.
TENSOR_LR_NOT_BITWISE: set = set()
TENSOR_LR_STEPS = 30  # one flag combination only, so more steps (Adadelta's difference is rare)
TENSOR_LR_CASES = [
    pytest.param(name, impl, dtype, id=f"{name}-{impl}-{dtype}", marks=pytest.mark.xfail(
        strict=True, reason="not bitwise with a tensor lr (see TENSOR_LR_NOT_BITWISE, NOT_BITWISE)") if (
        (name, impl) in TENSOR_LR_NOT_BITWISE or not is_bitwise(name, impl, dtype)) else ())
    for name, impls in HAS.items() for impl in impls for dtype in DTYPES
    if not (name in ("Adam", "AdamW") and impl == "foreach")  # torch refuses a tensor lr there
]


@pytest.mark.usefixtures("capturable_on_cpu")
@pytest.mark.parametrize("name, impl, dtype", TENSOR_LR_CASES)
def test_tensor_lr_is_bitwise_torch_same_implementation(name, impl, dtype):
    """A 0-d tensor ``lr`` (with weight decay, decoupled where the optimizer has it)."""
    extra = dict(lr=torch.tensor(0.05), weight_decay=0.1)
    if name == "NAdam":
        extra["decoupled_weight_decay"] = True
    kwargs = kwargs_for(name, impl, **extra)
    differentiable = impl == "differentiable"
    ref, ours = new_params(dtype, differentiable), new_params(dtype, differentiable)
    opt_ref = run(getattr(torch.optim, name), ref, kwargs, TENSOR_LR_STEPS)
    opt_ours = run(getattr(compat, name), ours, kwargs, TENSOR_LR_STEPS)
    assert_bitwise(ours, ref, opt_ours, opt_ref)


# ---------------------------------------------------------------------------------------- 7, 10a: steps
def checkpoint_with_step(name: str, step, impl: str = "default") -> dict:
    """torch's state dict after 3 steps of ``impl`` with every ``step`` replaced by ``step``
    (called if callable). Loading it sets the implementation flags of its param groups."""
    params = new_params(torch.float32, impl == "differentiable")
    opt = run(getattr(torch.optim, name), params, kwargs_for(name, impl), 3)
    sd = copy.deepcopy(opt.state_dict())
    for entry in sd["state"].values():
        entry["step"] = step() if callable(step) else step
    return sd


def load_and_continue(cls, name: str, impl: str, sd: dict, steps: int = 5):
    """A fresh ``cls`` with ``impl``, ``sd`` loaded, then ``steps`` steps: (params, optimizer)."""
    params = new_params(torch.float32, impl == "differentiable")
    opt = cls(params, **kwargs_for(name, impl))
    opt.load_state_dict(copy.deepcopy(sd))
    return params, step_n(opt, params, steps)


IMPL_CASES = [(name, impl) for name in OPTIMIZERS for impl in ["default"] + HAS[name]]
IMPL_IDS = [f"{n}-{i}" for n, i in IMPL_CASES]


@pytest.mark.usefixtures("capturable_on_cpu")
@pytest.mark.parametrize("name, impl", IMPL_CASES, ids=IMPL_IDS)
def test_int64_step_checkpoint_continues_like_torch(name, impl):
    """torch keeps an int64 ``step`` tensor on load (unless capturable/fused) and its for-loop
    counts on with it; compat does the same, with each implementation (foreach raises in both)."""
    sd = checkpoint_with_step(name, lambda: torch.tensor(3), impl)
    ref = outcome(lambda: load_and_continue(getattr(torch.optim, name), name, impl, sd))
    ours = outcome(lambda: load_and_continue(getattr(compat, name), name, impl, sd))
    assert ours[0] == ref[0], (ours, ref)
    if ref[0] == "raised":
        assert ours[1:] == ref[1:]
        return
    (ref_params, opt_ref), (params, opt_ours) = ref[1], ours[1]
    assert_matches(params, ref_params, opt_ours, opt_ref, is_bitwise(name, impl, torch.float32))
    assert [s["step"].dtype for s in opt_ours.state.values()] == [s["step"].dtype for s in opt_ref.state.values()]


WELL_FORMED_STEPS = {
    "int": 3, "float": 3.0, "int64-0d": lambda: torch.tensor(3), "float32-0d": lambda: torch.tensor(3.0),
    "float64-0d": lambda: torch.tensor(3.0, dtype=torch.float64), "one-element": lambda: torch.tensor([3.0]),
}
MALFORMED_STEPS = {
    "string": "2", "list": [2], "none": None, "two-elements": lambda: torch.tensor([2.0, 3.0]),
    "empty": lambda: torch.tensor([]), "complex": lambda: torch.tensor(2 + 0j),
}


@pytest.mark.parametrize("step", list(WELL_FORMED_STEPS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_well_formed_step_loads_like_torch(name, step):
    """Numbers and one-element tensors load as in torch (same state, same next steps)."""
    sd = checkpoint_with_step(name, WELL_FORMED_STEPS[step])
    ref_params, opt_ref = load_and_continue(getattr(torch.optim, name), name, "default", sd, steps=0)
    params, opt_ours = load_and_continue(getattr(compat, name), name, "default", sd, steps=0)
    assert same_value(opt_ours.state_dict(), opt_ref.state_dict())
    step_n(opt_ref, ref_params, 3)
    step_n(opt_ours, params, 3)
    assert_bitwise(params, ref_params, opt_ours, opt_ref)


@pytest.mark.parametrize("step", list(MALFORMED_STEPS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_malformed_step_raises_and_leaves_the_optimizer_as_it_was(name, step):
    params = new_params(torch.float32)
    opt = run(getattr(compat, name), params, OPTIMIZERS[name][0], 2)
    before = copy.deepcopy(opt.state_dict())
    sd = copy.deepcopy(before)
    sd["param_groups"][0]["lr"] = 0.5  # a change that must not be applied
    make = MALFORMED_STEPS[step]
    sd["state"][1]["step"] = make() if callable(make) else make
    with pytest.raises(ValueError, match="'step' of parameter 1"):
        opt.load_state_dict(sd)
    assert same_value(opt.state_dict(), before)


# ---------------------------------------------------------------------------------------- 10b: duplicates
def construct(cls, params: list, kwargs: dict):
    """``cls(params, **kwargs)`` and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = cls(params, **kwargs)
    return opt, [str(w.message) for w in caught]


@pytest.mark.usefixtures("capturable_on_cpu")
@pytest.mark.parametrize("name, impl", IMPL_CASES, ids=IMPL_IDS)
def test_duplicate_params_are_stepped_like_torch(name, impl):
    """A parameter listed twice: torch's for-loop steps it twice, one whole step after the other;
    its foreach and fused code count both steps first. compat does what torch's same
    implementation does (and warns as torch does)."""
    dtype = torch.float64
    differentiable = impl == "differentiable"
    ref, ours = new_params(dtype, differentiable), new_params(dtype, differentiable)
    listed = lambda ps: [ps[0], ps[1], ps[0], ps[3], ps[1]]  # noqa: E731
    opt_ref, ref_warnings = construct(getattr(torch.optim, name), listed(ref), kwargs_for(name, impl))
    opt_ours, our_warnings = construct(getattr(compat, name), listed(ours), kwargs_for(name, impl))
    assert our_warnings == ref_warnings
    step_n(opt_ref, ref, 6)
    step_n(opt_ours, ours, 6)
    used = [0, 1, 3]
    assert_matches([ours[i] for i in used], [ref[i] for i in used], opt_ours, opt_ref,
                   is_bitwise(name, impl, dtype))


# ---------------------------------------------------------------------------------------- grad shapes
def transformation_optimizer(params: list, **_):
    import functional_optim as fo

    return compat.TransformationOptimizer(params, fo.adam(lr=0.05))


SHAPE_CASES = {name: getattr(compat, name) for name in OPTIMIZERS}
SHAPE_CASES["TransformationOptimizer"] = transformation_optimizer


@pytest.mark.parametrize("grad_shape", [(4,), (5,), (4, 3)], ids=["broadcastable", "mismatched", "transposed"])
@pytest.mark.parametrize("name", list(SHAPE_CASES))
def test_grad_of_another_shape_is_refused_before_anything_changes(name, grad_shape):
    """``p.grad.data = ...`` can give a parameter a gradient of another shape: torch broadcasts a
    ``(4,)`` grad into a ``(3, 4)`` parameter or fails midway (compat.Adafactor failed with an
    AttributeError); every compat class raises a RuntimeError naming the parameter and both
    shapes, with params, grads and state as they were."""
    first, second = torch.zeros(2, requires_grad=True), torch.zeros(3, 4, requires_grad=True)
    third = torch.zeros(3, 4, requires_grad=True)
    opt = SHAPE_CASES[name]([first], **OPTIMIZERS.get(name, ({},))[0])
    opt.add_param_group({"params": [second, third]})
    params = [first, second, third]
    step_n(opt, params, 1)
    for p in params:
        p.grad = torch.ones_like(p)
    third.grad.data = torch.ones(grad_shape)
    before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=(
            rf"^{type(opt).__name__}: the gradient of parameter 1 of param group 1 has shape "
            rf"\({', '.join(map(str, grad_shape))},?\), but the parameter has shape \(3, 4\)")):
        opt.step()
    assert same_value(opt.state_dict(), before[0])
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before[1]))



SPARSE_REFUSED = {  # classes (and flags) whose torch step refuses a sparse gradient
    "Adam": {}, "AdamW": {}, "Adadelta": {}, "NAdam": {}, "RAdam": {}, "Adamax": {}, "ASGD": {}, "Rprop": {},
    "RMSprop": {}, "Adafactor": {}, "Muon": {}, "Adagrad (weight_decay)": {"weight_decay": 0.1},
    "SGD (weight_decay)": {"weight_decay": 0.1}, "SGD (fused)": {"fused": True}, "Adagrad (fused)": {"fused": True},
}


@pytest.mark.parametrize("case", list(SPARSE_REFUSED))
def test_a_refused_gradient_in_a_later_group_changes_nothing(case):
    """torch checks each param group's gradients when it comes to that group, so a refused
    (sparse) gradient in the second group raises after the first group was stepped; every compat
    class raises torch's error before any group is stepped or any state is made."""
    name, kwargs = case.split(" ")[0], SPARSE_REFUSED[case]
    make = lambda: (torch.zeros(3, 3, requires_grad=True), torch.zeros(3, 3, requires_grad=True))  # noqa: E731
    expected = outcome(lambda: _step_with_sparse_second(getattr(torch.optim, name), make(), kwargs))
    assert expected[0] == "raised", expected  # torch refuses it too
    first, second = make()
    opt = getattr(compat, name)([first], lr=0.1, **kwargs)
    opt.add_param_group({"params": [second]})
    first.grad, second.grad = torch.ones(3, 3), torch.ones(3, 3).to_sparse()
    before = copy.deepcopy(opt.state_dict())  # (Adagrad makes its state at construction, as torch)
    with pytest.raises(expected[1], match=f"^{re.escape(expected[2])}$"):
        opt.step()
    assert torch.equal(first.detach(), torch.zeros(3, 3)) and same_value(opt.state_dict(), before)


@pytest.mark.parametrize("name", ["Adam", "Adagrad"])
def test_a_sparse_gradient_after_dense_steps_is_refused_before_anything_changes(name):
    """After a first step on dense gradients compat checks a group of dense gradients in one fast
    pass (:class:`compat.optimizer.SparseGradCheck`); a sparse gradient that comes later still gets
    torch's error (fused Adagrad's, Adam's) with nothing changed."""
    kwargs = {"fused": True} if name == "Adagrad" else {}
    first, second = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, 3, requires_grad=True)
    opt = getattr(compat, name)([first], lr=0.1, **kwargs)
    opt.add_param_group({"params": [second]})
    first.grad, second.grad = torch.ones(3, 3), torch.ones(3, 3)
    opt.step()
    ref_params = (torch.zeros(3, 3, requires_grad=True), torch.zeros(3, 3, requires_grad=True))
    expected = outcome(lambda: _step_with_sparse_second(getattr(torch.optim, name), ref_params, kwargs))
    assert expected[0] == "raised", expected
    second.grad = torch.ones(3, 3).to_sparse()
    before, params_before = copy.deepcopy(opt.state_dict()), (first.detach().clone(), second.detach().clone())
    with pytest.raises(expected[1], match=f"^{re.escape(expected[2])}$"):
        opt.step()
    assert same_value(opt.state_dict(), before)
    assert torch.equal(first.detach(), params_before[0]) and torch.equal(second.detach(), params_before[1])


def test_definitions_that_refuse_only_sparse_gradients_pass_every_dense_one():
    """``check_grad_refuses_only_sparse`` lets compat skip ``check_grad`` for dense gradients:
    each definition that declares it accepts dense real and complex gradients with any flags."""
    import functional_optim._definition as definition_module
    from _registry import OPTIMIZERS

    declared = [e for e in OPTIMIZERS if getattr(e.compat_cls, "definition", None) is not None
                and e.compat_cls.definition.check_grad_refuses_only_sparse]
    assert {e.name for e in declared} >= {"adam", "adagrad", "rmsprop", "rprop"}
    for entry in declared:
        definition = entry.compat_cls.definition
        assert isinstance(definition, definition_module.OptimizerDefinition)
        hparams = entry.factory(**entry.kwargs).hparams
        static = compat_static(entry)
        for grad in (torch.ones(3, 2), torch.ones(3, 2, dtype=torch.complex64), torch.ones(())):
            definition.check_grad(grad, hparams, static)


def compat_static(entry):
    """The static record ``entry``'s compat class steps its param group with."""
    opt = entry.compat_cls([torch.zeros(2, requires_grad=True)], **entry.kwargs)
    return opt._static(opt.param_groups[0])


@pytest.mark.parametrize("name", ["SparseAdam", "TransformationOptimizer", "AdamWScheduleFree"])
def test_the_classes_with_a_step_of_their_own_refuse_a_later_group_before_changing_anything(name):
    """SparseAdam (a dense gradient, which torch refuses after counting the steps before it),
    TransformationOptimizer (whatever its transformation refuses: here fo.adam a sparse gradient,
    as torch's Adam) and the Schedule-Free classes (a sparse gradient fails in aten, as in
    schedulefree: the same exception type) raise the reference's error with every param group
    as it was."""
    first, second = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, 3, requires_grad=True)
    dense, sparse = torch.ones(3, 3), torch.ones(3, 3).to_sparse()
    if name == "SparseAdam":
        reference, opt, grads = torch.optim.SparseAdam, compat.SparseAdam([first], lr=0.1), (sparse, dense)
    elif name == "TransformationOptimizer":
        reference, opt, grads = torch.optim.Adam, transformation_optimizer([first]), (dense, sparse)
    else:
        reference = pytest.importorskip("schedulefree").AdamWScheduleFree
        opt, grads = compat.AdamWScheduleFree([first], lr=0.1), (dense, sparse)
    opt.add_param_group({"params": [second]})
    ref_first, ref_second = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, 3, requires_grad=True)
    ref = reference([ref_first], lr=0.1)
    ref.add_param_group({"params": [ref_second]})
    for o in (opt, ref):
        if hasattr(o, "train"):
            o.train()
    ref_first.grad, ref_second.grad = grads
    expected = outcome(ref.step)
    assert expected[0] == "raised", expected
    first.grad, second.grad = grads
    before = copy.deepcopy(opt.state_dict())
    # (the aten message names the in-place op schedulefree calls, ours the out-of-place one)
    message = None if name == "AdamWScheduleFree" else f"^{re.escape(expected[2])}$"
    with pytest.raises(expected[1], match=message):
        opt.step()
    assert torch.equal(first.detach(), torch.zeros(3, 3)) and same_value(opt.state_dict(), before)


@pytest.mark.parametrize("name", ["AdaBelief", "AdEMAMix", "Adan", "ADOPT", "SOAP", "SophiaH"])
def test_a_refused_step_counts_no_group_without_gradients(name):
    """The classes with a reference's state layout count a step for a group without gradients
    (the reference's ``group["step"] += 1``): a step refused for another group's gradient (a wrong
    shape here) counts nothing, so the state dict is as it was, and the next good step counts once.
    (SophiaH is given its Hessian estimates: the gradients here have no graph.)"""
    first, second = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, 3, requires_grad=True)
    opt = getattr(compat, name)([first], lr=0.1)
    opt.add_param_group({"params": [second]})
    kwargs = {"hessian": [torch.ones(3, 3), torch.ones(3, 3)]} if name == "SophiaH" else {}
    second.grad = torch.ones(3, 3)
    opt.step(**kwargs)
    before = copy.deepcopy(opt.state_dict())
    second.grad.data = torch.ones(3)  # (torch refuses a gradient of another shape, ``.data`` does not)
    with pytest.raises(RuntimeError, match="has shape \\(3,\\)"):
        opt.step(**kwargs)
    assert same_value(opt.state_dict(), before)
    second.grad = torch.ones(3, 3)
    opt.step(**kwargs)
    counts = [group.get("step") for group in opt.state_dict()["param_groups"]]
    assert counts == [2, 2], counts


def _step_with_sparse_second(cls, params, kwargs):
    """Two param groups given to the constructor (torch 2.11's Adagrad makes no state for a group
    added later: its step then fails with ``KeyError: 'sum'``), the second one's gradient sparse."""
    first, second = params
    opt = cls([{"params": [first]}, {"params": [second]}], lr=0.1, **kwargs)
    first.grad, second.grad = torch.ones(3, 3), torch.ones(3, 3).to_sparse()
    opt.step()


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad", "NAdam", "Adafactor"])
def test_step_is_created_where_torch_creates_it_under_a_default_device(name):
    """torch.optim.Adam creates its CPU ``step`` with ``device="cpu"``; the others on the default device.

    (Adadelta is left out: torch's step then fails on the meta step it made, ours never reads it.)"""
    def run(cls):
        p = torch.zeros(3, requires_grad=True)
        p.grad = torch.ones(3)
        opt = cls([p])
        with torch.device("meta"):
            try:
                opt.step()
            except Exception as exc:  # torch fails with a step on the default device: so must we
                return type(exc), None
        return opt.state[p]["step"].device, p.detach().clone()

    expected, ours = run(getattr(torch.optim, name)), run(getattr(compat, name))
    assert ours[0] == expected[0]
    if isinstance(expected[1], torch.Tensor):
        assert torch.equal(ours[1], expected[1])

"""LBFGS: compat.LBFGS and fo.lbfgs against torch.optim.LBFGS, on deterministic problems.

Every expectation comes from running torch.optim.LBFGS on the same problem: the generalised
Rosenbrock function (ill-conditioned: the line search and the stopping tests take many different
branches) over several parameters (a vector, a matrix, a 0-d one, and one the loss does not use,
whose gradient stays ``None``), and a small least-squares problem. L-BFGS is not elementwise and
needs the objective, so the shared tests of tests/_registry.py do not apply to it.
"""

import copy
import inspect
import io
import itertools

import pytest
import torch

import compat
import functional_optim as fo
from compat.lbfgs import LBFGS, TORCH_HAS_MAXIMIZE
from functional_optim.lbfgs import LBFGSHParams, LBFGSState, lbfgs

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")  # torch's float(loss)

CONFIGS = [dict(line_search_fn=ls, max_iter=it, history_size=h)
           for ls, it, h in itertools.product([None, "strong_wolfe"], [1, 4, 20], [2, 100])]
EXTRA_CONFIGS = [
    dict(lr=0.5), dict(lr=torch.tensor(0.1)), dict(lr=torch.tensor([0.7]), line_search_fn="strong_wolfe"),
    dict(tolerance_grad=1e-3), dict(tolerance_change=1e-3, line_search_fn="strong_wolfe"), dict(max_eval=7),
    dict(max_eval=3, max_iter=10, line_search_fn="strong_wolfe"), dict(max_iter=0), dict(tolerance_grad=1e6),
]


def _start(dtype):
    return {"a": torch.tensor([-1.2, 1.0, 0.3], dtype=dtype), "b": torch.tensor([[0.8, -0.5], [1.4, 0.2]], dtype=dtype),
            "c": torch.tensor(0.9, dtype=dtype), "unused": torch.tensor([3.0, -1.0], dtype=dtype)}


def rosenbrock(p):
    z = torch.cat([p["a"], p["b"].reshape(-1), p["c"].reshape(1)])
    return (100 * (z[1:] - z[:-1] ** 2) ** 2 + (1 - z[:-1]) ** 2).sum()


def value_and_grad(loss_fn):
    """``params -> (loss, grads)`` by autograd, as torch's closure computes them."""

    def fn(params):
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = loss_fn(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return loss.detach(), dict(zip(leaves, grads))

    return fn


def _same(a, b, where="state"):
    """Equal as torch's state holds them: tensors bitwise (dtype and shape too), lists, numbers."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert a == b, (where, a, b)


def _torch_run(cls, kwargs, dtype, steps, loss_fn=rosenbrock, start=None, swap_at=None, other=None):
    """Step ``cls`` on ``loss_fn``; the params, returned losses and state dict after each step."""
    params = {k: v.clone().requires_grad_() for k, v in (start or _start(dtype)).items()}
    opt = cls(list(params.values()), **kwargs)

    def closure():
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        return loss

    history = []
    for step in range(steps):
        loss = opt.step(closure)
        history.append(({k: v.detach().clone() for k, v in params.items()}, loss.detach(), copy.deepcopy(opt.state_dict())))
        if step == swap_at:  # continue from the other class's state dict at the same point
            opt = other(list(params.values()), **kwargs)
            opt.load_state_dict(copy.deepcopy(history[-1][2]))
    return history


# ------------------------------------------------------------------ API
def test_signature_and_defaults_are_torchs():
    """torch's signature; on a torch before 2.14 (no ``maximize``) torch's plus ours keyword-only
    ``maximize=False``, which then stays out of the defaults (torch's state dict keys)."""
    ours, theirs = inspect.signature(LBFGS), inspect.signature(torch.optim.LBFGS)
    if TORCH_HAS_MAXIMIZE:
        assert ours == theirs
    else:
        maximize = inspect.Parameter("maximize", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)
        assert ours == theirs.replace(parameters=[*theirs.parameters.values(), maximize])
    params = [torch.zeros(2, requires_grad=True)]
    assert LBFGS(params).defaults == torch.optim.LBFGS(params).defaults
    assert LBFGS(params, max_iter=8).defaults == torch.optim.LBFGS(params, max_iter=8).defaults
    assert compat.LBFGS is LBFGS and fo.lbfgs is lbfgs
    assert lbfgs().hparams == LBFGSHParams(1, 20, 25, 1e-7, 1e-9)


# ------------------------------------------------------------------ compat, bitwise
@pytest.mark.parametrize("kwargs", CONFIGS + EXTRA_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compat_matches_torch_bitwise(kwargs, dtype):
    """Params, returned losses and the whole state (every tensor, list, int and float) after
    every step; the state dicts cross-loaded torch <-> compat after step 1."""
    ref = _torch_run(torch.optim.LBFGS, kwargs, dtype, 4, swap_at=1, other=LBFGS)
    ours = _torch_run(LBFGS, kwargs, dtype, 4, swap_at=1, other=torch.optim.LBFGS)
    for step, ((rp, rl, rsd), (op, ol, osd)) in enumerate(zip(ref, ours)):
        _same(op, rp, f"params after step {step}")
        _same(ol, rl, f"loss of step {step}")
        _same(osd, rsd, f"state dict after step {step}")


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_compat_matches_torch_on_complex_and_sparse_gradients(line_search_fn):
    target = torch.tensor([1 + 2j, -0.5j, 3.0], dtype=torch.complex128)
    start = {"w": torch.zeros(3, dtype=torch.complex128), "e": torch.randn(4, 2, dtype=torch.float64)}

    def loss_fn(p):  # an embedding with sparse gradients next to a complex parameter
        rows = torch.nn.functional.embedding(torch.tensor([0, 2]), p["e"], sparse=True)
        return (p["w"] - target).abs().pow(2).sum() + (rows - 1).pow(2).sum() * (p["w"].real.sum() ** 2 + 1)

    kwargs = dict(line_search_fn=line_search_fn, max_iter=5)
    ref = _torch_run(torch.optim.LBFGS, kwargs, torch.float64, 3, loss_fn, start)
    ours = _torch_run(LBFGS, kwargs, torch.float64, 3, loss_fn, start)
    for (rp, rl, rsd), (op, ol, osd) in zip(ref, ours):
        _same((op, ol, osd), (rp, rl, rsd))


def negated(loss_fn):
    return lambda p: -loss_fn(p)


@pytest.mark.parametrize("kwargs", [dict(max_iter=4), dict(max_iter=20, line_search_fn="strong_wolfe", history_size=2)],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_maximize_matches_torch(kwargs, dtype):
    """``maximize=True`` on ``-f`` is torch's minimisation of ``f`` (any torch: it negates every loss
    and gradient, an exact operation) and, where torch has the flag (>= 2.14), torch's
    ``maximize=True`` on ``-f``: params, the state bitwise, the closure's own loss returned; both
    APIs, and the state dicts cross-loaded with torch mid-run where torch has the flag."""
    minimised = _torch_run(torch.optim.LBFGS, kwargs, dtype, 4)
    up = dict(kwargs, maximize=True)
    ours = _torch_run(LBFGS, up, dtype, 4, negated(rosenbrock))
    for step, ((rp, rl, rsd), (op, ol, osd)) in enumerate(zip(minimised, ours)):
        _same(op, rp, f"params after step {step}")
        _same(ol, -rl, f"loss of step {step}")
        _same(osd["state"], rsd["state"], f"state after step {step}")
        assert osd["param_groups"][0]["maximize"] is True
    if TORCH_HAS_MAXIMIZE:
        ref = _torch_run(torch.optim.LBFGS, up, dtype, 4, negated(rosenbrock), swap_at=1, other=LBFGS)
        swapped = _torch_run(LBFGS, up, dtype, 4, negated(rosenbrock), swap_at=1, other=torch.optim.LBFGS)
        for step, (r, o, s) in enumerate(zip(ref, ours, swapped)):
            _same(o, r, f"step {step}")
            _same(s, r, f"step {step}, cross-loaded")
    functional = _functional_steps(up, dtype, 4, negated(rosenbrock), resync=minimised)
    rtol = 1e-15 if dtype == torch.float64 else 1e-7
    for step, ((rp, rl, rsd), (fp, fl, fstate)) in enumerate(zip(minimised, functional)):
        assert float(fl) == -float(rl)
        _assert_state_matches(fstate, rsd["state"][0], f"state after step {step}")
        for k in rp:
            torch.testing.assert_close(fp[k], rp[k], rtol=rtol, atol=rtol)


def test_step_without_parameters_returns_the_closures_loss():
    """A group with no parameters: the closure runs once and its loss comes back, nothing else
    (torch >= 2.14; an older torch fails looking for a first parameter to keep the state under)."""
    opt = LBFGS([{"params": []}])
    calls = []
    assert opt.step(lambda: calls.append(1) or torch.tensor(2.5)).item() == 2.5
    assert calls == [1] and not opt.state
    if TORCH_HAS_MAXIMIZE:
        assert torch.optim.LBFGS([{"params": []}]).step(lambda: torch.tensor(2.5)).item() == 2.5


def test_state_dict_of_a_torch_without_maximize_loads():
    """A param group saved without ``maximize`` (torch < 2.14) steps as ``maximize=False``."""
    ref = _torch_run(LBFGS, dict(max_iter=4), torch.float64, 2)
    sd = copy.deepcopy(ref[0][2])
    sd["param_groups"][0].pop("maximize", None)
    params = {k: v.clone().requires_grad_() for k, v in ref[0][0].items()}
    opt = LBFGS(list(params.values()), max_iter=4)
    opt.load_state_dict(sd)

    def closure():
        opt.zero_grad()
        loss = rosenbrock(params)
        loss.backward()
        return loss

    opt.step(closure)
    _same({k: v.detach() for k, v in params.items()}, ref[1][0])


# ------------------------------------------------------------------ errors, side by side with torch
def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(lr=torch.tensor([0.1, 0.2])), dict(lr=torch.tensor(-1.0))], ids=str)
def test_constructor_errors_match_torch(bad):
    params = [torch.zeros(2, requires_grad=True)]
    expected = _raised(lambda: torch.optim.LBFGS(params, **bad))
    assert _raised(lambda: LBFGS(params, **bad)) == expected
    assert _raised(lambda: lbfgs(**bad)) == expected


def test_param_group_errors_match_torch():
    groups = lambda: [{"params": [torch.zeros(2, requires_grad=True)]}, {"params": [torch.zeros(1, requires_grad=True)]}]  # noqa: E731
    assert _raised(lambda: LBFGS(groups())) == _raised(lambda: torch.optim.LBFGS(groups()))
    errors = []
    for cls in (torch.optim.LBFGS, LBFGS):
        opt = cls([torch.zeros(2, requires_grad=True)])
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)]})
        errors.append(_raised(lambda: opt.step(lambda: torch.zeros(()))))
        errors.append(_raised(lambda: opt.step()))  # no closure
    assert errors[0] == errors[2] and errors[0][0] is AssertionError
    assert errors[1][0] is errors[3][0] is TypeError


@pytest.mark.parametrize("case", ["line_search_fn", "non_contiguous_grad", "closure_returns_none", "max_eval_0"])
def test_step_errors_and_the_state_they_leave_match_torch(case):
    results = []
    for cls in (torch.optim.LBFGS, LBFGS):
        start = _start(torch.float64)
        if case == "non_contiguous_grad":
            start["b"] = start["b"].t()  # autograd gives it a transposed gradient: torch's view(-1) fails
        params = {k: v.clone().requires_grad_() for k, v in start.items()}
        kwargs = {"line_search_fn": "backtracking"} if case == "line_search_fn" else {}
        if case == "max_eval_0":  # torch's line search then has no evaluation left and fails
            kwargs = dict(max_eval=0, line_search_fn="strong_wolfe")
        opt = cls(list(params.values()), **kwargs)

        def closure():
            opt.zero_grad()
            loss = rosenbrock(params)
            loss.backward()
            return None if case == "closure_returns_none" else loss

        error = _raised(lambda: opt.step(closure))
        results.append((error, {k: v.detach() for k, v in params.items()}, opt.state_dict()))
    (ref_error, ref_params, ref_sd), (error, ours, sd) = results
    assert error[0] is ref_error[0]
    if case != "max_eval_0":  # (an UnboundLocalError in both: the message names the function's variable)
        assert error == ref_error
    _same(ours, ref_params)
    _same(sd, ref_sd)
    if case == "line_search_fn":
        assert _raised(lambda: lbfgs(line_search_fn="backtracking")) == error  # refused when it is made


# ------------------------------------------------------------------ functional
def _functional_steps(kwargs, dtype, steps, loss_fn=rosenbrock, start=None, resync=None, tx=None, **update_kwargs):
    """``fo.lbfgs`` over ``steps`` updates; with ``resync`` (a torch run), each update starts from
    torch's params of the step before (so each update is compared with one torch step alone)."""
    tx = tx or lbfgs(**kwargs)
    params = {k: v.clone() for k, v in (start or _start(dtype)).items()}
    state = tx.init(params)
    fn = value_and_grad(loss_fn)
    out = []
    for step in range(steps):
        if resync is not None and step > 0:
            params = {k: v.clone() for k, v in resync[step - 1][0].items()}
        value, grads = fn(params)
        before = copy.deepcopy((params, state))
        updates, new_state = tx.update(grads, state, params, value=value,
                                       **(update_kwargs or {"value_and_grad_fn": fn}))
        _same((params, state), before, "inputs after update (pure)")
        params, state = fo.apply_updates(params, updates), new_state
        out.append((params, value, state))
    return out


def _state_dict_entry(state: LBFGSState) -> dict:
    return {k: v for k, v in zip(LBFGSState._fields, state) if v is not None}


def _assert_state_matches(state: LBFGSState, torch_entry: dict, where: str) -> None:
    ours = _state_dict_entry(state)
    assert sorted(ours) == sorted(torch_entry), where
    _same({k: ours[k] for k in torch_entry}, torch_entry, where)


@pytest.mark.parametrize("kwargs", CONFIGS + EXTRA_CONFIGS[:6], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_functional_update_is_torchs_step(kwargs, dtype):
    """Each update, from torch's params and state of the step before, is torch's next step: the
    whole state bitwise, the params to the rounding of ``params + (new - params)``."""
    ref = _torch_run(torch.optim.LBFGS, kwargs, dtype, 4)
    ours = _functional_steps(kwargs, dtype, 4, resync=ref)
    rtol = 1e-15 if dtype == torch.float64 else 1e-7
    for step, ((rp, rl, rsd), (op, ol, ostate)) in enumerate(zip(ref, ours)):
        assert float(ol) == float(rl)
        _assert_state_matches(ostate, rsd["state"][0], f"state after step {step}")
        for k in rp:
            torch.testing.assert_close(op[k], rp[k], rtol=rtol, atol=rtol, msg=lambda m: f"{k} after {step}: {m}")


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_functional_run_equals_torch_on_least_squares(line_search_fn):
    """Without resynchronising: a whole well-conditioned run stays within float64 rounding."""
    g = torch.Generator().manual_seed(0)
    A, b = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    start = {"x": torch.zeros(3, dtype=torch.float64), "y": torch.zeros(2, dtype=torch.float64)}

    def loss_fn(p):
        return ((A @ torch.cat([p["x"], p["y"]]) - b) ** 2).sum()

    kwargs = dict(line_search_fn=line_search_fn, max_iter=10, history_size=4)
    ref = _torch_run(torch.optim.LBFGS, kwargs, torch.float64, 4, loss_fn, start)
    ours = _functional_steps(kwargs, torch.float64, 4, loss_fn, start)
    for (rp, rl, rsd), (op, ol, ostate) in zip(ref, ours):
        torch.testing.assert_close(op, rp, rtol=1e-12, atol=1e-13)
        assert ostate.n_iter == rsd["state"][0]["n_iter"] and ostate.func_evals == rsd["state"][0]["func_evals"]
    solution = torch.linalg.lstsq(A, b).solution
    torch.testing.assert_close(torch.cat([ours[-1][0]["x"], ours[-1][0]["y"]]), solution, rtol=1e-4, atol=1e-4)


def test_functional_value_fn_and_hparams_at_call_time():
    ref = _torch_run(torch.optim.LBFGS, dict(line_search_fn="strong_wolfe", max_iter=5), torch.float64, 2)
    ours = _functional_steps(dict(line_search_fn="strong_wolfe", max_iter=5), torch.float64, 2, resync=ref,
                             value_fn=rosenbrock)  # gradients by torch.func.grad_and_value
    for (rp, _, rsd), (op, _, ostate) in zip(ref, ours):
        torch.testing.assert_close(op, rp, rtol=1e-12, atol=1e-12)
        assert ostate.n_iter == rsd["state"][0]["n_iter"]
    # a record given to update replaces the construction-time one (max_eval defaults to max_iter * 5 // 4)
    ref = _torch_run(torch.optim.LBFGS, dict(max_iter=3, lr=0.5), torch.float64, 1)
    ours = _functional_steps({}, torch.float64, 1, tx=_CallTime(lbfgs(), LBFGSHParams(lr=0.5, max_iter=3)))
    _assert_state_matches(ours[0][2], ref[0][2]["state"][0], "call-time hparams")


class _CallTime:
    """A transformation whose update always passes the given hparams record."""

    def __init__(self, tx, hparams):
        self.tx, self.hparams = tx, hparams

    def init(self, params):
        return self.tx.init(params)

    def update(self, grads, state, params, **kwargs):
        return self.tx.update(grads, state, params, self.hparams, **kwargs)


def test_functional_single_iteration_needs_no_function():
    ref = _torch_run(torch.optim.LBFGS, dict(max_iter=1), torch.float64, 3)
    tx = lbfgs(max_iter=1)
    params = _start(torch.float64)
    state = tx.init(params)
    fn = value_and_grad(rosenbrock)
    for rp, _, rsd in ref:
        value, grads = fn(params)
        assert grads["unused"] is None
        updates, state = tx.update(grads, state, params, value=value)
        assert updates["unused"].shape == (2,)  # a None gradient counts as zeros; the leaf is still moved
        params = fo.apply_updates(params, updates)
        torch.testing.assert_close(params, rp, rtol=1e-15, atol=1e-15)
        _assert_state_matches(state, rsd["state"][0], "max_iter=1")


def test_functional_errors():
    tx = lbfgs(line_search_fn="strong_wolfe")
    params = _start(torch.float64)
    state = tx.init(params)
    value, grads = value_and_grad(rosenbrock)(params)
    with pytest.raises(ValueError, match="pass value_and_grad_fn"):
        tx.update(grads, state, params, value=value)
    with pytest.raises(ValueError, match="not both"):
        tx.update(grads, state, params, value=value, value_fn=rosenbrock, value_and_grad_fn=rosenbrock)
    with pytest.raises(TypeError, match="value"):
        tx.update(grads, state, params, value_fn=rosenbrock)
    with pytest.raises(ValueError, match=r"grads at \['b'\] has shape \(4,\), expected \(2, 2\)"):
        tx.update({**grads, "b": torch.zeros(4, dtype=torch.float64)}, state, params, value=value, value_fn=rosenbrock)
    with pytest.raises(ValueError, match=r"grads does not match the structure of params: grads has no leaf at \['c'\]"):
        tx.update({k: v for k, v in grads.items() if k != "c"}, state, params, value=value, value_fn=rosenbrock)
    with pytest.raises(ValueError, match=r"state.prev_flat_grad must be a tensor of shape \(10,\)"):
        tx.update(grads, state._replace(prev_flat_grad=torch.zeros(3)), params, value=value, value_fn=rosenbrock)
    with pytest.raises(TypeError, match="expects a LBFGSState"):
        tx.update(grads, fo.adam().init(params), params, value=value, value_fn=rosenbrock)
    with pytest.raises(ValueError, match=r"params at \['i'\] has dtype torch.int64"):
        tx.init({"i": torch.zeros(2, dtype=torch.int64)})

    def wrong_grads(p):
        return rosenbrock(p), {"a": torch.zeros(3)}

    with pytest.raises(ValueError, match="the gradients of value_and_grad_fn does not match"):
        tx.update(grads, state, params, value=value, value_and_grad_fn=wrong_grads)


def test_functional_state_saves_and_loads_with_weights_only():
    out = _functional_steps(dict(history_size=3, max_iter=5), torch.float64, 2)
    buffer = io.BytesIO()
    torch.save(out[-1][2], buffer)
    buffer.seek(0)
    _same(torch.load(buffer, weights_only=True), out[-1][2])


def test_to_functional_and_back_continue_the_run():
    kwargs = dict(line_search_fn="strong_wolfe", max_iter=4, history_size=5)
    ref = _torch_run(torch.optim.LBFGS, kwargs, torch.float64, 6)
    params = {k: v.clone().requires_grad_() for k, v in _start(torch.float64).items()}
    opt = LBFGS(list(params.values()), **kwargs)

    def closure():
        opt.zero_grad()
        loss = rosenbrock(params)
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
    tx, state = opt.to_functional(params)
    _assert_state_matches(state, opt.state_dict()["state"][0], "to_functional")
    work = {k: v.detach().clone() for k, v in params.items()}
    fn = value_and_grad(rosenbrock)
    for step in (2, 3):
        value, grads = fn(work)
        updates, state = tx.update(grads, state, work, value=value, value_and_grad_fn=fn)
        work = fo.apply_updates(work, updates)
        _assert_state_matches(state, ref[step][2]["state"][0], f"functional step {step}")
        work = {k: v.clone() for k, v in ref[step][0].items()}  # (resynchronised, as above)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(work[k])
    opt.load_functional(params, state)
    for step in (4, 5):
        opt.step(closure)
        _same({k: v.detach() for k, v in params.items()}, ref[step][0])
        _same(opt.state_dict()["state"], ref[step][2]["state"])
    with pytest.raises(ValueError, match=r"params at \['a'\] is not parameter 0"):
        opt.to_functional({"a": params["b"], "b": params["a"]})

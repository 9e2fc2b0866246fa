"""Muon: functional and compat against torch.optim.Muon (torch >= 2.9), every flag combination.

Every expectation comes from running torch.optim.Muon on the same input. torch's Muon has one
implementation (the for-loop); compat must equal it bit for bit in every dtype, the functional
update to rounding. Muon takes matrices only, so the parameters here are 2-D (wide, tall, square,
one of them a transposed view); the shared tests of tests/_registry.py use vectors and scalars
and do not run Muon (its compile/vmap/in-place checks are here).
"""

import copy
import inspect
import itertools

import pytest
import torch

import compat
import functional_optim as fo
from compat.muon import Muon
from functional_optim.muon import MuonHParams, MuonState, muon, newton_schulz

TorchMuon = getattr(torch.optim, "Muon", None)
requires_torch_muon = pytest.mark.skipif(
    TorchMuon is None, reason=f"torch {torch.__version__} has no torch.optim.Muon (added in torch 2.9)"
)



def _torch_accepts(adjust_lr_fn: str) -> bool:
    """Whether the installed torch's Muon takes ``adjust_lr_fn`` (``"spectral_unclamped"``: torch >= 2.14)."""
    try:
        TorchMuon([torch.zeros(2, 2, requires_grad=True)], adjust_lr_fn=adjust_lr_fn)
    except ValueError:
        return False
    return True


ADJUST_LR_FNS = [None, "original", "match_rms_adamw"]
if TorchMuon is not None and _torch_accepts("spectral_unclamped"):
    ADJUST_LR_FNS.append("spectral_unclamped")
FLAGS = [
    dict(nesterov=n, adjust_lr_fn=a, weight_decay=w)
    for n, a, w in itertools.product([True, False], ADJUST_LR_FNS, [0.0, 0.1])
]
HP = dict(lr=0.05, momentum=0.9)
# functional vs torch: float64/float32 to rounding of the last add; half types to an ulp of the params
TOL = {torch.float64: (1e-12, 1e-14), torch.float32: (1e-6, 1e-7), torch.bfloat16: (1e-2, 1e-2),
       torch.float16: (2e-3, 2e-3)}


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (3, 6), (4, 4)]
    params = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    params.append(torch.randn(6, 2, generator=g).to(dtype).t())  # non-contiguous, wide
    return params


def _grads(params, step, seed=1):
    """Random grads; at step 2 the second param gets None, at step 3 the first gets zeros."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for i, p in enumerate(params):
        grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))
        out.append(None if (step == 2 and i == 1) else torch.zeros_like(p) if (step == 3 and i == 0) else grad)
    return out


def _groups(ps, kwargs, two_groups):
    if not two_groups:
        return ps
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5 * kwargs.get("lr", 1e-3)}]


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def _assert_same_state_dicts(ours, ref):
    assert ours["param_groups"] == ref["param_groups"]
    assert list(ours["state"]) == list(ref["state"])
    for pid, entry in ref["state"].items():
        assert list(ours["state"][pid]) == list(entry) == ["momentum_buffer"]
        a, e = ours["state"][pid]["momentum_buffer"], entry["momentum_buffer"]
        assert (a.dtype, a.shape, a.stride()) == (e.dtype, e.shape, e.stride())
        assert torch.equal(a, e), pid


def run_compat(kwargs, dtype, steps=5, two_groups=True, swap_at=None, device="cpu"):
    """Step torch.optim.Muon and compat.Muon on the same grads: params and state dicts bitwise."""
    params = [p.to(device) for p in _params(dtype)]
    ref = [p.clone().requires_grad_() for p in params]
    ours = [p.clone().requires_grad_() for p in params]
    opt_ref, opt_ours = TorchMuon(_groups(ref, kwargs, two_groups), **kwargs), Muon(_groups(ours, kwargs, two_groups), **kwargs)
    for step in range(steps):
        grads = _grads(params, step)
        _set_grads(ref, grads)
        _set_grads(ours, grads)
        opt_ref.step()
        opt_ours.step()
        for i, (r, o) in enumerate(zip(ref, ours)):
            assert torch.equal(o, r), (i, step)
        _assert_same_state_dicts(opt_ours.state_dict(), opt_ref.state_dict())
        if step == swap_at:  # cross-load the state dicts mid-run, both ways
            sd_ref, sd_ours = copy.deepcopy(opt_ref.state_dict()), copy.deepcopy(opt_ours.state_dict())
            opt_ours = Muon(_groups(ours, kwargs, two_groups), **kwargs)
            opt_ours.load_state_dict(sd_ref)
            opt_ref = TorchMuon(_groups(ref, kwargs, two_groups), **kwargs)
            opt_ref.load_state_dict(sd_ours)


def run_functional(kwargs, dtype, steps=5, make=None):
    """torch.optim.Muon next to ``fo.muon(**kwargs)`` on dict params: params and buffers to TOL."""
    rtol, atol = TOL[dtype]
    params = _params(dtype)
    ref = [p.clone().requires_grad_() for p in params]
    opt_ref = TorchMuon(ref, **kwargs)
    tx = (make or muon)(**kwargs)
    tree = {f"p{i}": p.clone() for i, p in enumerate(params)}
    state = tx.init(tree)
    for step in range(steps):
        grads = _grads(params, step)
        _set_grads(ref, grads)
        opt_ref.step()
        g_tree = {f"p{i}": g for i, g in enumerate(grads)}
        before = copy.deepcopy((tree, g_tree, state))
        updates, new_state = tx.update(g_tree, state, tree)
        torch.testing.assert_close((tree, g_tree, state), before, rtol=0, atol=0)  # pure
        tree, state = fo.apply_updates(tree, updates), new_state
        for i, r in enumerate(ref):
            torch.testing.assert_close(tree[f"p{i}"], r.detach(), rtol=rtol, atol=atol)
            if r in opt_ref.state:
                buf = state.momentum_buffer[f"p{i}"]
                torch.testing.assert_close(buf, opt_ref.state[r]["momentum_buffer"], rtol=rtol, atol=atol)
    return tree, state


# ------------------------------------------------------------------ API
@requires_torch_muon
def test_signature_and_defaults_are_torchs():
    assert inspect.signature(Muon) == inspect.signature(TorchMuon)
    params = [torch.zeros(2, 3, requires_grad=True)]
    assert Muon(params).defaults == TorchMuon(params).defaults
    assert compat.Muon is Muon and fo.muon is muon
    defaults = {k: v.default for k, v in inspect.signature(TorchMuon).parameters.items() if k != "params"}
    ours = {k: v.default for k, v in inspect.signature(muon).parameters.items()}
    assert ours == defaults


# ------------------------------------------------------------------ compat, bitwise
@requires_torch_muon
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compat_matches_torch_bitwise(flags, dtype):
    run_compat(dict(HP, **flags), dtype, swap_at=2)


@requires_torch_muon
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_compat_matches_torch_bitwise_in_half_precision(nesterov, dtype):
    # bfloat16 without Nesterov: torch normalises the momentum buffer in place (see _kernels/muon.py)
    run_compat(dict(HP, nesterov=nesterov, weight_decay=0.1), dtype, swap_at=1)


@requires_torch_muon
@pytest.mark.parametrize("kwargs", [
    {}, dict(ns_steps=6), dict(ns_steps=1), dict(ns_coefficients=(3.4, -4.7, 2.0)), dict(eps=1e-3, momentum=0.0),
    dict(lr=torch.tensor(0.01)), dict(lr=torch.tensor([0.01]), weight_decay=0.2), dict(momentum=1.0, nesterov=False),
], ids=str)
def test_compat_torch_configurations_match_bitwise(kwargs):
    """optim_db's configurations (defaults, tensor lr, ns settings) and edge values."""
    run_compat(kwargs, torch.float32, steps=3, two_groups="lr" not in kwargs, swap_at=1)


@requires_torch_muon
@pytest.mark.parametrize("shape", [(3, 6), (6, 3), (4, 4)])
def test_spectral_unclamped_scales_lr_by_the_root_of_the_aspect_ratio(shape):
    """``adjust_lr_fn="spectral_unclamped"`` (torch >= 2.14, here with any torch) scales ``lr`` by
    ``sqrt(A / B)`` unclamped: torch's step with ``lr * sqrt(A / B)`` given and no scale of its own
    (``"original"`` scales a wide matrix by 1; without weight decay, which would read the scaled
    ``lr``), bitwise on a wide, a tall and a square matrix, compat and functional."""
    ratio = (shape[0] / shape[1]) ** 0.5
    if shape[0] > shape[1]:  # "original" scales a tall matrix by the same sqrt(A / B): nothing to undo
        ratio = 1.0
    g = torch.Generator().manual_seed(3)
    start = torch.randn(shape, generator=g, dtype=torch.float64)
    ref, ours = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt_ref = TorchMuon([ref], lr=0.05 * ratio, weight_decay=0.0, adjust_lr_fn="original")
    opt_ours = Muon([ours], lr=0.05, weight_decay=0.0, adjust_lr_fn="spectral_unclamped")
    tx = muon(lr=0.05, weight_decay=0.0, adjust_lr_fn="spectral_unclamped")
    tree = {"w": start.clone()}
    state = tx.init(tree)
    for _ in range(3):
        grad = torch.randn(shape, generator=g, dtype=torch.float64)
        ref.grad, ours.grad = grad.clone(), grad.clone()
        opt_ref.step()
        opt_ours.step()
        assert torch.equal(ours, ref)
        updates, state = tx.update({"w": grad}, state, tree)
        tree = fo.apply_updates(tree, updates)
        torch.testing.assert_close(tree["w"], ref.detach(), rtol=1e-12, atol=1e-14)


@requires_torch_muon
def test_tiny_gradients_hit_eps_like_torch():
    def grads(params, step):
        return [torch.full_like(p, 1e-12) for p in params]

    params = _params(torch.float32)
    for kwargs in (dict(eps=1e-7), dict(eps=0.5)):
        outs = []
        for cls in (TorchMuon, Muon):
            ps = [p.clone().requires_grad_() for p in params]
            opt = cls(ps, **kwargs)
            _set_grads(ps, grads(ps, 0))
            opt.step()
            outs.append(ps)
        assert all(torch.equal(a, b) for a, b in zip(*outs))


# ------------------------------------------------------------------ functional
@requires_torch_muon
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_functional_matches_torch(flags, dtype):
    run_functional(dict(HP, **flags), dtype)


@requires_torch_muon
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_functional_matches_torch_in_half_precision(nesterov, dtype):
    run_functional(dict(HP, nesterov=nesterov, weight_decay=0.1), dtype, steps=3)


@requires_torch_muon
def test_functional_defaults_ns_settings_and_tensor_hparams_match_torch():
    run_functional({}, torch.float64)
    run_functional(dict(ns_steps=3, ns_coefficients=(3.4, -4.7, 2.0), eps=1e-3), torch.float64, steps=3)
    tensor_hp = dict(lr=torch.tensor(0.05, dtype=torch.float64), weight_decay=torch.tensor(0.1, dtype=torch.float64),
                     momentum=torch.tensor(0.9, dtype=torch.float64), eps=torch.tensor(1e-7, dtype=torch.float64))
    float_hp = {k: v.item() for k, v in tensor_hp.items()}
    run_functional(float_hp, torch.float64, steps=3, make=lambda **_: muon(**tensor_hp))
    tx = muon(**float_hp)  # hparams given at call time override the defaults
    params = {"w": torch.randn(3, 4, dtype=torch.float64)}
    grads = {"w": torch.randn(3, 4, dtype=torch.float64)}
    state = tx.init(params)
    a, _ = tx.update(grads, state, params, MuonHParams(**tensor_hp))
    b, _ = muon(**float_hp).update(grads, state, params)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_functional_state_and_none_grads():
    tx = muon(lr=0.1)
    params = {"a": torch.randn(3, 2), "b": torch.randn(2, 5)}
    state = tx.init(params)
    assert isinstance(state, MuonState) and state._fields == ("momentum_buffer",)
    assert all(torch.equal(b, torch.zeros_like(params[k])) for k, b in state.momentum_buffer.items())
    updates, new_state = tx.update({"a": torch.randn(3, 2), "b": None}, state, params)
    assert updates["b"] is None and new_state.momentum_buffer["b"] is state.momentum_buffer["b"]
    assert updates["a"].shape == (3, 2) and not torch.equal(new_state.momentum_buffer["a"], state.momentum_buffer["a"])


def test_functional_errors_name_the_path():
    tx = muon()
    with pytest.raises(ValueError, match=r"muon: params at \['bias'\] has shape \(3,\); Muon only supports 2D"):
        tx.init({"w": torch.zeros(3, 3), "bias": torch.zeros(3)})
    state = tx.init({"w": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"params at \['w'\] has shape \(3, 3, 1\)"):
        tx.update({"w": torch.zeros(3, 3, 1)}, state, {"w": torch.zeros(3, 3, 1)})
    with pytest.raises(ValueError, match=r"grads at \['w'\] has shape \(3,\), expected \(3, 3\)"):
        tx.update({"w": torch.zeros(3)}, state, {"w": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"state.momentum_buffer at \['w'\] has shape \(3, 3\), expected \(2, 3\)"):
        tx.update({"w": torch.zeros(2, 3)}, state, {"w": torch.zeros(2, 3)})
    with pytest.raises(RuntimeError, match="muon does not support complex parameters"):
        tx.init({"w": torch.zeros(2, 2, dtype=torch.complex64)})
    with pytest.raises(RuntimeError, match="Muon does not support sparse gradients"):
        tx.update({"w": torch.eye(3).to_sparse()}, state, {"w": torch.zeros(3, 3)})


# ------------------------------------------------------------------ errors, side by side with torch
def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


BAD_HPARAMS = [
    dict(lr=-1.0), dict(lr=torch.tensor([0.1, 0.2])), dict(lr=torch.tensor(-0.5)), dict(momentum=-0.1),
    dict(weight_decay=-0.1), dict(adjust_lr_fn="arbitrary"), dict(lr=-1.0, momentum=-1.0),
    dict(momentum=-1.0, weight_decay=-1.0, adjust_lr_fn="x"),
]


@requires_torch_muon
@pytest.mark.parametrize("bad", BAD_HPARAMS, ids=str)
def test_constructor_errors_match_torch(bad):
    params = [torch.zeros(2, 3, requires_grad=True)]
    expected = _raised(lambda: TorchMuon(params, **bad))
    assert _raised(lambda: Muon(params, **bad)) == expected
    assert _raised(lambda: muon(**bad)) == expected


@requires_torch_muon
@pytest.mark.parametrize("shape", [(3,), (), (2, 3, 4)], ids=str)
def test_non_matrix_params_are_refused_at_construction_like_torch(shape):
    params = [torch.zeros(2, 2, requires_grad=True), torch.zeros(shape, requires_grad=True)]
    expected = _raised(lambda: TorchMuon(params))
    assert expected[0] is ValueError and _raised(lambda: Muon(params)) == expected


def _step_error_and_state(cls, params, grads, kwargs=None, add_group=None):
    ps = [p.clone().requires_grad_() for p in params]
    opt = cls(ps, **(kwargs or {}))
    if add_group is not None:
        extra = add_group.clone().requires_grad_()
        opt.add_param_group({"params": [extra]})
        ps.append(extra)
    _set_grads(ps, grads)
    error = _raised(opt.step)
    return error, [p.detach().clone() for p in ps], opt.state_dict()


@requires_torch_muon
@pytest.mark.parametrize("case", ["complex", "sparse", "ns_steps", "ns_coefficients", "added_vector"])
def test_step_errors_and_the_state_they_leave_match_torch(case):
    """torch raises these in ``step``, midway: for a refused gradient (complex, sparse) after
    making the momentum buffers of the parameters before the offending one, otherwise after
    stepping them. The same errors here, before anything is stepped or any state is made (a
    step that raises on bad input changes nothing)."""
    params = [torch.randn(3, 4), torch.randn(4, 2)]
    grads = [torch.randn(3, 4), torch.randn(4, 2)]
    kwargs, add_group = {}, None
    if case == "complex":
        params[1] = torch.randn(4, 2, dtype=torch.complex64)
        grads[1] = torch.randn(4, 2, dtype=torch.complex64)
    elif case == "sparse":
        grads[1] = grads[1].to_sparse()
    elif case == "ns_steps":
        kwargs = dict(ns_steps=100)
    elif case == "ns_coefficients":
        kwargs = dict(ns_coefficients=(3.0, -4.0))
    else:  # a vector added after construction: torch checks only the gradient, in the loop
        add_group = torch.randn(5)
        grads.append(torch.randn(5))
    ref = _step_error_and_state(TorchMuon, params, grads, kwargs, add_group)
    ours = _step_error_and_state(Muon, params, grads, kwargs, add_group)
    assert ours[0] == ref[0]
    assert ref[2]["state"] != {}  # torch made (and but for complex/sparse stepped) the first parameter's
    assert all(torch.equal(a, b) for a, b in zip(ours[1], params + ([add_group] if add_group is not None else [])))
    assert ours[2]["state"] == {}
    if case.startswith("ns_"):  # the functional optimizer refuses them when it is made
        assert _raised(lambda: muon(**kwargs)) == ours[0]


# ------------------------------------------------------------------ state
@requires_torch_muon
def test_state_created_at_first_grad_and_strided_like_the_grad():
    results = []
    for cls in (TorchMuon, Muon):
        torch.manual_seed(0)
        a, b = torch.randn(4, 3, requires_grad=True), torch.randn(3, 5, requires_grad=True)
        opt = cls([a, b])
        a.grad = torch.randn(3, 4).t()  # a transposed gradient: the buffer follows its strides
        opt.step()
        results.append(opt.state_dict())
        assert b not in opt.state or len(opt.state[b]) == 0
    _assert_same_state_dicts(results[1], results[0])


@requires_torch_muon
def test_malformed_state_dict_is_refused_and_leaves_the_optimizer_unchanged():
    params = [p.requires_grad_() for p in _params(torch.float64)]
    opt = Muon(params)
    _set_grads(params, _grads(params, 0))
    opt.step()
    good = copy.deepcopy(opt.state_dict())
    for bad_value in (torch.zeros(2, 2), "buffer"):
        bad = copy.deepcopy(good)
        bad["state"][0]["momentum_buffer"] = bad_value
        with pytest.raises(ValueError, match="momentum_buffer"):
            opt.load_state_dict(bad)
        _assert_same_state_dicts(opt.state_dict(), good)
    with pytest.raises(ValueError, match="must be a dict"):
        opt.load_state_dict({**good, "state": {0: [1, 2]}})


@requires_torch_muon
def test_to_functional_and_back_continue_the_run():
    params = [p.requires_grad_() for p in _params(torch.float64)]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    kwargs = dict(lr=0.05, weight_decay=0.1, nesterov=False, adjust_lr_fn="match_rms_adamw")
    opt, ref = Muon(params, **kwargs), TorchMuon(ref_params, **kwargs)
    for step in range(2):
        _set_grads(params, _grads(params, step))
        _set_grads(ref_params, _grads(params, step))
        opt.step()
        ref.step()
    tree = {f"p{i}": p for i, p in enumerate(params)}
    tx, state = opt.to_functional(tree)
    assert isinstance(state, MuonState)
    work = {k: v.detach().clone() for k, v in tree.items()}
    for step in range(2, 4):
        grads = _grads(params, step)
        updates, state = tx.update({f"p{i}": g for i, g in enumerate(grads)}, state, work)
        work = fo.apply_updates(work, updates)
        _set_grads(ref_params, grads)
        ref.step()
    for i, r in enumerate(ref_params):
        torch.testing.assert_close(work[f"p{i}"], r.detach(), rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(work[f"p{i}"])
    opt.load_functional(tree, state)
    for step in range(4, 6):
        _set_grads(params, _grads(params, step))
        _set_grads(ref_params, _grads(params, step))
        opt.step()
        ref.step()
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-12, atol=1e-14)
    assert tx.init(work).momentum_buffer.keys() == work.keys()


# ------------------------------------------------------------------ Newton–Schulz
@requires_torch_muon
@pytest.mark.parametrize("shape", [(4, 7), (7, 4), (5, 5), (1, 6)], ids=str)
def test_newton_schulz_is_torchs_bit_for_bit(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(shape, dtype=torch.float64)
    for coefficients, steps, eps in (((3.4445, -4.7750, 2.0315), 5, 1e-7), ((3.0, -3.2, 1.2), 8, 1e-3)):
        expected = _zeropower_via_newtonschulz(g.clone(), coefficients, steps, eps)
        ours = newton_schulz(g, coefficients, steps, eps)
        assert ours.dtype == torch.bfloat16 and ours.shape == g.shape and torch.equal(ours, expected)
    for args in ((torch.zeros(3), (1, 2, 3), 5, 1e-7), (g, (1, 2), 5, 1e-7), (g, (1, 2, 3), 100, 1e-7)):
        assert _raised(lambda: newton_schulz(*args)) == _raised(lambda: _zeropower_via_newtonschulz(*args))


def test_newton_schulz_orthogonalises():
    g = torch.randn(8, 32, dtype=torch.float64)
    o = newton_schulz(g, ns_steps=10).double()
    singular = torch.linalg.svdvals(o)
    assert bool(((singular > 0.5) & (singular < 1.5)).all()), singular  # U S' V^T, S' in (0.5, 1.5)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ vh).flatten(), dim=0) > 0.95


# ------------------------------------------------------------------ compile, vmap, in place, recipes
def test_functional_compiles_without_recompiling_on_tensor_hparams():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    tx = muon(lr=0.05, nesterov=False)
    params = {"w": torch.randn(4, 3), "v": torch.randn(3, 5)}
    grads = {"w": torch.randn(4, 3), "v": torch.randn(3, 5)}
    counter = CompileCounter()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = state_eager = tx.init(params)
    for lr, momentum, wd in ((0.05, 0.9, 0.0), (0.01, 0.8, 0.1), (0.2, 0.5, 0.2)):
        hp = MuonHParams(lr=torch.tensor(lr), weight_decay=torch.tensor(wd), momentum=torch.tensor(momentum),
                         eps=torch.tensor(1e-7))
        updates, state = compiled(grads, state, params, hp)
        expected, state_eager = tx.update(grads, state_eager, params, hp)
        torch.testing.assert_close(updates, expected, rtol=0, atol=0)  # the same ops (eager backend)
        torch.testing.assert_close(state, state_eager, rtol=0, atol=0)
    assert counter.frame_count == 1


def test_vmapped_ensemble_matches_separate_runs():
    """vmap batches the bfloat16 matmuls, which round differently from one matmul at a time: the
    momentum buffers (float64 elementwise math) agree to rounding, the params to the bfloat16
    noise of the orthogonalised update (a few percent of ``lr``)."""
    torch.manual_seed(0)
    tx = muon(lr=0.02, weight_decay=0.1)
    stacked = {"w": torch.randn(3, 4, 6, dtype=torch.float64), "v": torch.randn(3, 5, 2, dtype=torch.float64)}
    grads = [{k: torch.randn_like(v) for k, v in stacked.items()} for _ in range(3)]

    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return fo.apply_updates(p, updates), s

    ens, ens_state = stacked, torch.func.vmap(tx.init)(stacked)
    singles = [{k: v[i] for k, v in stacked.items()} for i in range(3)]
    singles = [(p, tx.init(p)) for p in singles]
    for g in grads:
        ens, ens_state = torch.func.vmap(step)(ens, ens_state, g)
        singles = [step(p, s, {k: v[i] for k, v in g.items()}) for i, (p, s) in enumerate(singles)]
    for i, (p, s) in enumerate(singles):
        for k in p:
            torch.testing.assert_close(ens_state.momentum_buffer[k][i], s.momentum_buffer[k], rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(ens[k][i], p[k], rtol=0, atol=0.1 * 0.02 * 3)


def test_step_in_place_equals_update_and_apply():
    tx = muon(lr=0.05, nesterov=False)
    params = {"w": torch.randn(4, 3, dtype=torch.bfloat16), "v": torch.randn(3, 5)}
    pure_params, pure_state, state = {k: v.clone() for k, v in params.items()}, tx.init(params), tx.init(params)
    for _ in range(3):
        grads = {k: torch.randn(v.shape).to(v.dtype) for k, v in params.items()}
        updates, pure_state = tx.update(grads, pure_state, pure_params)
        pure_params = fo.apply_updates(pure_params, updates)
        fo.step_(tx, grads, state, params)
        assert all(torch.equal(params[k], pure_params[k]) for k in params)
        assert all(torch.equal(state.momentum_buffer[k], pure_state.momentum_buffer[k]) for k in params)


@requires_torch_muon
def test_muon_for_matrices_adamw_for_the_rest_matches_torch():
    """The usual split, with fo.partition, equals torch.optim.Muon + torch.optim.AdamW."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    labels = fo.by_name(lambda name, p: "muon" if p.ndim == 2 else "adamw")
    tx = fo.partition({"muon": fo.muon(lr=0.02), "adamw": fo.adamw(lr=1e-3)}, labels)
    state = tx.init(params)
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim != 2]
    torch_opts = [TorchMuon(matrices, lr=0.02), torch.optim.AdamW(others, lr=1e-3)]
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    for _ in range(3):
        model.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        for opt in torch_opts:
            opt.step()
        grads = torch.func.grad(lambda p: ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean())(params)
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    for k, p in model.named_parameters():
        torch.testing.assert_close(params[k], p.detach(), rtol=1e-10, atol=1e-12)

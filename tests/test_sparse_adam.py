"""SparseAdam: functional and compat against torch.optim.SparseAdam, on sparse (COO) gradients.

Every expectation comes from running torch.optim.SparseAdam on the same input. Gradients are
sparse in every form torch produces or accepts: hybrid (``nn.Embedding(sparse=True)``: sparse
rows, dense columns), fully sparse, uncoalesced (repeated indices), without stored values, and
``None``. The shared tests of tests/_registry.py feed dense gradients, which SparseAdam refuses,
so SparseAdam is not registered there.
"""

import copy
import inspect
import itertools

import pytest
import torch

import compat
import functional_optim as fo
from compat.sparse_adam import SparseAdam
from functional_optim.sparse_adam import SparseAdamHParams, SparseAdamState, sparse_adam

FLAGS = [dict(maximize=m, betas=b, eps=e) for m, (b, e) in itertools.product(
    [False, True], [((0.9, 0.999), 1e-8), ((0.5, 0.8), 1e-3), ((0.0, 0.0), 1e-6)])]
HP = dict(lr=0.05)
TOL = {torch.float64: (1e-12, 1e-14), torch.float32: (1e-6, 1e-7)}


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, generator=g, dtype=dtype),  # an embedding table
            torch.randn(5, generator=g, dtype=dtype),
            torch.randn(4, 2, generator=g, dtype=dtype),
            torch.randn(3, 4, generator=g, dtype=dtype).t()]  # non-contiguous


def _sparse_grad(p, gen, kind):
    rows = p.shape[0]
    if kind == "empty":  # no stored values at all
        return torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.long), torch.zeros((0, *p.shape[1:]), dtype=p.dtype),
                                       p.shape, check_invariants=True)
    idx = torch.randint(rows, (4,), generator=gen)
    if kind == "uncoalesced":  # repeated rows: coalescing sums them
        idx[1] = idx[0]
    values = torch.randn((4, *p.shape[1:]), generator=gen, dtype=p.dtype)
    if kind == "full" and p.dim() == 2:  # sparse in both dims
        cols = torch.randint(p.shape[1], (4,), generator=gen)
        return torch.sparse_coo_tensor(torch.stack([idx, cols]), values[:, 0], p.shape, check_invariants=True)
    return torch.sparse_coo_tensor(idx[None], values, p.shape, check_invariants=True)  # hybrid for matrices


def _grads(params, step, seed=1):
    """Per step and param: a hybrid, fully sparse, uncoalesced or empty gradient, or None."""
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    kinds = ["hybrid", "full", "uncoalesced", "hybrid", "empty", "none"]
    out = []
    for i, p in enumerate(params):
        kind = kinds[(step + i) % len(kinds)]
        out.append(None if kind == "none" else _sparse_grad(p, gen, kind))
    return out


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def _groups(ps, two_groups):
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02}] if two_groups else ps


def _assert_same_state_dicts(ours, ref):
    assert ours["param_groups"] == ref["param_groups"]
    assert list(ours["state"]) == list(ref["state"])
    for pid, entry in ref["state"].items():
        assert list(ours["state"][pid]) == list(entry) == ["step", "exp_avg", "exp_avg_sq"]
        assert type(ours["state"][pid]["step"]) is type(entry["step"]) and ours["state"][pid]["step"] == entry["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            a, e = ours["state"][pid][key], entry[key]
            assert (a.dtype, a.shape, a.stride()) == (e.dtype, e.shape, e.stride()) and torch.equal(a, e), (pid, key)


def run_compat(kwargs, dtype, steps=5, two_groups=True, swap_at=None, device="cpu", contiguous=False):
    params = [p.contiguous() for p in _params(dtype)] if contiguous else _params(dtype)
    ref = [p.to(device, copy=True).requires_grad_() for p in params]
    ours = [p.to(device, copy=True).requires_grad_() for p in params]
    opt_ref = torch.optim.SparseAdam(_groups(ref, two_groups), **kwargs)
    opt_ours = SparseAdam(_groups(ours, two_groups), **kwargs)
    for step in range(steps):
        grads = [None if g is None else g.to(device) for g in _grads(params, step)]
        _set_grads(ref, grads)
        _set_grads(ours, grads)
        opt_ref.step()
        opt_ours.step()
        for i, (r, o) in enumerate(zip(ref, ours)):
            assert torch.equal(o, r), (i, step)
        _assert_same_state_dicts(opt_ours.state_dict(), opt_ref.state_dict())
        if step == swap_at:
            sd_ref, sd_ours = copy.deepcopy(opt_ref.state_dict()), copy.deepcopy(opt_ours.state_dict())
            opt_ours = SparseAdam(_groups(ours, two_groups), **kwargs)
            opt_ours.load_state_dict(sd_ref)
            opt_ref = torch.optim.SparseAdam(_groups(ref, two_groups), **kwargs)
            opt_ref.load_state_dict(sd_ours)


def run_functional(kwargs, dtype, steps=4, tx=None):
    rtol, atol = TOL[dtype]
    params = _params(dtype)
    ref = [p.clone().requires_grad_() for p in params]
    opt_ref = torch.optim.SparseAdam(ref, **kwargs)
    tx = tx or sparse_adam(**kwargs)
    tree = {f"p{i}": p.clone() for i, p in enumerate(params)}
    state = tx.init(tree)
    for step in range(steps):
        grads = _grads(params, step)
        _set_grads(ref, grads)
        opt_ref.step()
        g_tree = {f"p{i}": g for i, g in enumerate(grads)}
        before = copy.deepcopy((tree, state))
        g_before = [None if g is None else g.to_dense() for g in grads]
        updates, new_state = tx.update(g_tree, state, tree)
        torch.testing.assert_close((tree, state), before, rtol=0, atol=0)  # pure
        assert all(g is None or torch.equal(g.to_dense(), b) for g, b in zip(grads, g_before))
        tree, state = fo.apply_updates(tree, updates), new_state
        for i, r in enumerate(ref):
            torch.testing.assert_close(tree[f"p{i}"], r.detach(), rtol=rtol, atol=atol)
            assert updates[f"p{i}"] is None or updates[f"p{i}"].layout == torch.strided
            torch_state = opt_ref.state[r]
            if torch_state:
                assert float(state.step[f"p{i}"]) == torch_state["step"]
                for key in ("exp_avg", "exp_avg_sq"):
                    torch.testing.assert_close(getattr(state, key)[f"p{i}"], torch_state[key], rtol=rtol, atol=atol)
            else:
                assert float(state.step[f"p{i}"]) == 0.0


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


# ------------------------------------------------------------------ API
def test_signature_and_defaults_are_torchs():
    assert inspect.signature(SparseAdam) == inspect.signature(torch.optim.SparseAdam)
    params = [torch.zeros(2, 3, requires_grad=True)]
    assert SparseAdam(params).defaults == torch.optim.SparseAdam(params).defaults
    assert compat.SparseAdam is SparseAdam and fo.sparse_adam is sparse_adam
    assert sparse_adam().hparams == SparseAdamHParams(1e-3, (0.9, 0.999), 1e-8)


# ------------------------------------------------------------------ compat, bitwise
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compat_matches_torch_bitwise(flags, dtype):
    run_compat(dict(HP, **flags), dtype, swap_at=2)


@pytest.mark.parametrize("kwargs", [{}, dict(lr=torch.tensor(0.01)), dict(lr=torch.tensor([0.01]), maximize=True)],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_compat_defaults_tensor_lr_and_half_precision_match_bitwise(kwargs, dtype):
    run_compat(kwargs, dtype, steps=4, two_groups=not kwargs, swap_at=1)


def test_embedding_training_matches_torch():
    """nn.Embedding(sparse=True) trained by torch, compat and functional from the same start."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, sparse=True).double()
    ref, ours = copy.deepcopy(emb), copy.deepcopy(emb)
    opt_ref, opt_ours = torch.optim.SparseAdam(ref.parameters(), lr=0.1), SparseAdam(ours.parameters(), lr=0.1)
    tx = sparse_adam(lr=0.1)
    params = {k: v.detach().clone() for k, v in emb.named_parameters()}
    state = tx.init(params)
    for step in range(4):
        idx = torch.randint(10, (5,), generator=torch.Generator().manual_seed(step))
        for model, opt in ((ref, opt_ref), (ours, opt_ours)):
            opt.zero_grad()
            model(idx).pow(2).sum().backward()
            opt.step()
        emb.weight.data.copy_(params["weight"])
        emb.zero_grad()
        emb(idx).pow(2).sum().backward()
        updates, state = tx.update({"weight": emb.weight.grad}, state, params)
        params = fo.apply_updates(params, updates)
        assert torch.equal(ours.weight, ref.weight)
        torch.testing.assert_close(params["weight"], ref.weight.detach(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ functional
@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_functional_matches_torch(flags, dtype):
    run_functional(dict(HP, **flags), dtype)


def test_functional_defaults_and_tensor_hparams_match_torch():
    run_functional({}, torch.float64)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    run_functional(dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6), torch.float64,
                   tx=sparse_adam(lr=t(0.05), betas=(t(0.8), t(0.9)), eps=t(1e-6)))
    tx = sparse_adam(lr=0.05)  # hparams given at call time
    params = {"w": torch.randn(4, 3, dtype=torch.float64)}
    grads = {"w": torch.eye(4, 3, dtype=torch.float64).to_sparse()}
    a, _ = tx.update(grads, tx.init(params), params, SparseAdamHParams(t(0.01), (t(0.5), t(0.6)), t(1e-4)))
    b, _ = sparse_adam(lr=0.01, betas=(0.5, 0.6), eps=1e-4).update(grads, tx.init(params), params)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_functional_refuses_what_torch_refuses_naming_the_path():
    tx = sparse_adam()
    params = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
    state = tx.init(params)
    expected = _raised(lambda: _torch_step_with({"w": torch.ones(4, 3)}))
    assert _raised(lambda: tx.update({"w": torch.ones(4, 3), "b": None}, state, params)) == expected
    with pytest.raises(ValueError, match=r"grads at \['w'\] has shape \(4, 4\), expected \(4, 3\)"):
        tx.update({"w": torch.eye(4).to_sparse(), "b": None}, state, params)
    with pytest.raises(ValueError, match=r"grads at \['b'\] has dtype torch.float64, expected torch.float32"):
        tx.update({"w": None, "b": torch.ones(3, dtype=torch.float64).to_sparse()}, state, params)
    with pytest.raises(ValueError, match=r"params at \['c'\] is complex; SparseAdam does not support complex"):
        tx.init({"c": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match=r"params at \['s'\] is sparse; SparseAdam requires dense parameter"):
        tx.init({"s": torch.zeros(3).to_sparse()})
    with pytest.raises(ValueError, match=r"state.exp_avg at \['w'\] has shape \(4, 3\), expected \(2, 3\)"):
        tx.update({"w": torch.eye(2, 3).to_sparse(), "b": None}, state, {"w": torch.zeros(2, 3), "b": params["b"]})


def _torch_step_with(grads):
    p = torch.zeros(4, 3, requires_grad=True)
    opt = torch.optim.SparseAdam([p])
    p.grad = grads["w"]
    opt.step()


def test_functional_is_eager_only_refusing_vmap_and_running_eagerly_under_compile():
    tx = sparse_adam()
    params = {"w": torch.zeros(3, 4)}
    grads = {"w": torch.eye(3, 4).to_sparse()}
    state = tx.init(params)
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        torch.func.vmap(lambda p: tx.update(grads, state, {"w": p}))(torch.zeros(2, 3, 4))

    def train_step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    expected, expected_state = train_step(params, state, grads)
    torch._dynamo.reset()
    got, got_state = torch.compile(train_step, backend="eager")(params, state, grads)  # the update runs eagerly
    assert torch.equal(got["w"], expected["w"])
    torch.testing.assert_close(got_state, expected_state, rtol=0, atol=0)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="sparse_adam runs eagerly: torch.compile does not trace sparse"):
        torch.compile(train_step, backend="eager", fullgraph=True)(params, state, grads)


def test_step_in_place_equals_update_and_apply():
    tx = sparse_adam(lr=0.1)
    params = {"w": torch.randn(5, 3)}
    pure_params, pure_state, state = {"w": params["w"].clone()}, tx.init(params), tx.init(params)
    for step in range(3):
        grads = {"w": _grads([params["w"]], step)[0]}
        updates, pure_state = tx.update(grads, pure_state, pure_params)
        pure_params = fo.apply_updates(pure_params, updates)
        fo.step_(tx, grads, state, params)
        assert torch.equal(params["w"], pure_params["w"])
        torch.testing.assert_close(state, pure_state, rtol=0, atol=0)


# ------------------------------------------------------------------ errors, side by side with torch
BAD_HPARAMS = [
    dict(lr=0.0), dict(lr=-1.0), dict(lr=torch.tensor([0.1, 0.2])), dict(lr=torch.tensor(0.0)), dict(eps=0.0),
    dict(betas=(1.0, 0.0)), dict(betas=(0.5, 1.0)), dict(betas=(-0.1, 0.5)), dict(lr=0.0, eps=-1.0),
]


@pytest.mark.parametrize("bad", BAD_HPARAMS, ids=str)
def test_constructor_errors_match_torch(bad):
    params = [torch.zeros(2, 3, requires_grad=True)]
    expected = _raised(lambda: torch.optim.SparseAdam(params, **bad))
    assert _raised(lambda: SparseAdam(params, **bad)) == expected
    assert _raised(lambda: sparse_adam(**bad)) == expected


@pytest.mark.parametrize("params", [
    lambda: [torch.zeros(3, layout=torch.sparse_coo)],
    lambda: [{"params": [torch.zeros(2)]}, {"params": [torch.zeros(3, layout=torch.sparse_coo)]}],
    lambda: [torch.rand(2, 3, dtype=torch.complex64), torch.zeros(3, layout=torch.sparse_coo)],
    lambda: [torch.zeros(2), torch.rand(2, 3, dtype=torch.complex64)],
], ids=["sparse", "sparse-in-group", "sparse-and-complex", "complex"])
def test_param_errors_match_torch(params):
    expected = _raised(lambda: torch.optim.SparseAdam(params()))
    assert expected[0] is ValueError and _raised(lambda: SparseAdam(params())) == expected


def test_dense_gradient_error_and_the_state_it_leaves_match_torch():
    """torch counts the steps of the parameters before the dense one in its group (and steps the
    earlier groups) before it raises; the same error here, before anything is stepped or counted."""
    results = []
    for cls in (torch.optim.SparseAdam, SparseAdam):
        params = [p.requires_grad_() for p in _params(torch.float64)]
        start = [p.detach().clone() for p in params]
        opt = cls([{"params": params[:1]}, {"params": params[1:]}])
        grads = _grads(params, 0)
        grads[2] = torch.ones_like(params[2])  # dense
        _set_grads(params, grads)
        results.append((_raised(opt.step), [p.detach().clone() for p in params], opt.state_dict()))
    (ref_error, ref_params, ref_sd), (error, ours, sd) = results
    assert error == ref_error and error[0] is RuntimeError
    assert not all(torch.equal(a, b) for a, b in zip(ref_params, start))  # torch stepped the first group
    assert all(torch.equal(a, b) for a, b in zip(ours, start)) and sd["state"] == {}


def test_malformed_state_dict_is_refused_and_leaves_the_optimizer_unchanged():
    params = [p.requires_grad_() for p in _params(torch.float64)]
    opt = SparseAdam(params)
    _set_grads(params, _grads(params, 0))
    opt.step()
    good = copy.deepcopy(opt.state_dict())
    for key, value in (("exp_avg", torch.zeros(2)), ("step", "one"), ("exp_avg_sq", None)):
        bad = copy.deepcopy(good)
        bad["state"][0][key] = value
        with pytest.raises(ValueError):
            opt.load_state_dict(bad)
        _assert_same_state_dicts(opt.state_dict(), good)


def test_to_functional_and_back_continue_the_run():
    params = [p.requires_grad_() for p in _params(torch.float64)]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    opt, ref = SparseAdam(params, lr=0.05, maximize=True), torch.optim.SparseAdam(ref_params, lr=0.05, maximize=True)

    def step_both(step):
        grads = _grads(params, step)
        _set_grads(params, grads)
        _set_grads(ref_params, grads)
        opt.step()
        ref.step()

    for step in range(2):
        step_both(step)
    tree = {f"p{i}": p for i, p in enumerate(params)}
    tx, state = opt.to_functional(tree)
    assert isinstance(state, SparseAdamState)
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
    assert opt.state_dict()["state"][0]["step"] == ref.state_dict()["state"][0]["step"]
    for step in range(4, 6):
        step_both(step)
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-12, atol=1e-14)

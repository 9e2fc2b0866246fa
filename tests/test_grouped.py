"""Small CPU parameters stepped as flat buffers (``_kernels/grouped.py``) in the eager update: the
same numbers as torch.optim, as the per-tensor path, and the same purity and aliasing rules."""

import pytest
import torch

import functional_optim as fo
import functional_optim._kernels.grouped as grouped
from _parity import TOL
from _registry import IDS, OPTIMIZERS

N_SMALL = 2 * grouped.MIN_GROUP + 3


def _params(dtype):
    """Many small params of mixed shapes (one group, or two once some skip a step), a 0-d one, a
    non-contiguous one and a large one (both stepped per tensor)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4) if i % 3 == 0 else (5,) if i % 3 == 1 else () for i in range(N_SMALL)]
    params = {f"s{i}": torch.randn(s, generator=g, dtype=dtype) for i, s in enumerate(shapes)}
    params["t"] = torch.randn(4, 3, generator=g, dtype=dtype).t()
    params["big"] = torch.randn(grouped.SMALL_NUMEL + 1, generator=g, dtype=dtype)
    return params


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    grads = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    if step == 1:  # these skip a step: their counters part from the others' (two groups)
        for i in range(0, N_SMALL, 2):
            grads[f"s{i}"] = None
    return grads


def _torch_run(entry, dtype, steps):
    params = _params(dtype)
    tensors = {k: torch.nn.Parameter(p.clone()) for k, p in params.items()}
    opt = entry.torch_cls(list(tensors.values()), **entry.kwargs, foreach=False)
    for step in range(steps):
        for k, grad in _grads(params, step).items():
            tensors[k].grad = grad
        opt.step()
    return {k: t.detach() for k, t in tensors.items()}


def _functional_run(entry, dtype, steps, between=None):
    tx = entry.factory(**entry.kwargs)
    params = _params(dtype)
    state = tx.init(params)
    for step in range(steps):
        updates, state = tx.update(_grads(params, step), state, params)
        params = fo.apply_updates(params, updates)
        if between is not None:
            between(params, state)
    return params, state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_grouped_update_equals_torch(entry, dtype):
    steps = 4
    expected = _torch_run(entry, dtype, steps)
    params, _ = _functional_run(entry, dtype, steps)
    rtol, atol = TOL[dtype]
    for k in expected:
        torch.testing.assert_close(params[k], expected[k], rtol=rtol, atol=atol)


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_grouped_update_equals_the_per_tensor_update(entry, monkeypatch):
    params, state = _functional_run(entry, torch.float64, 4)
    monkeypatch.setattr(grouped, "MIN_GROUP", 10**9)  # nothing is grouped
    expected_params, expected_state = _functional_run(entry, torch.float64, 4)
    for k in params:
        torch.testing.assert_close(params[k], expected_params[k], rtol=1e-13, atol=1e-15)
    leaves, expected_leaves = fo.tree.flatten(state)[0], fo.tree.flatten(expected_state)[0]
    for a, b in zip(leaves, expected_leaves):
        if isinstance(b, torch.Tensor):
            assert a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride()
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_the_state_and_params_come_back_as_one_buffer_and_are_reused_without_copy(monkeypatch):
    tx = fo.adam()
    params = _params(torch.float32)
    state = tx.init(params)
    updates, state = tx.update(_grads(params, 0), state, params)
    params = fo.apply_updates(params, updates)
    small = sorted(f"s{i}" for i in range(N_SMALL))  # the order optree flattens a dict in
    for tree in (params, state.exp_avg, state.exp_avg_sq, updates):
        assert grouped.flat_view([tree[k] for k in small]) is not None
    assert grouped.flat_view([params["t"], params["big"]]) is None
    copies = []
    real_flatten = torch._C._nn.flatten_dense_tensors
    monkeypatch.setattr(torch._C._nn, "flatten_dense_tensors", lambda ts: copies.append(len(ts)) or real_flatten(ts))
    tx.update(_grads(params, 2), state, params)
    assert copies == [N_SMALL]  # only the gradients are copied into a flat buffer


def test_grouped_update_is_pure_and_sees_in_place_changes_to_its_inputs():
    """Inputs that are views of one buffer are read, never written; a change a user makes to one
    such leaf between steps is what the next step uses."""
    def zero_one_moment(params, state):
        state.exp_avg["s3"].zero_()

    params, state = _functional_run(OPTIMIZERS[0], torch.float64, 3, between=zero_one_moment)

    def zero_one_moment_copy(params, state):  # the same change on leaves that share nothing
        for tree in (params, state.exp_avg, state.exp_avg_sq, state.max_exp_avg_sq):
            for k in tree:
                tree[k] = tree[k].clone()
        state.exp_avg["s3"].zero_()

    expected, expected_state = _functional_run(OPTIMIZERS[0], torch.float64, 3, between=zero_one_moment_copy)
    for k in params:
        torch.testing.assert_close(params[k], expected[k], rtol=1e-13, atol=1e-15)

    tx = fo.adam()
    state = tx.init(params)
    grads = _grads(params, 0)
    before = [t.clone() for t in fo.tree.flatten((params, grads, state))[0] if isinstance(t, torch.Tensor)]
    tx.update(grads, state, params)
    after = [t for t in fo.tree.flatten((params, grads, state))[0] if isinstance(t, torch.Tensor)]
    assert all(torch.equal(a, b) for a, b in zip(after, before))

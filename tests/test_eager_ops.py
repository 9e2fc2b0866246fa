"""The eager functional update runs on out-of-place foreach ops (ForeachPureOps); it must compute
what the per-tensor pure path computes, and be chosen only where that path is not needed."""

import pytest
import torch

import functional_optim as fo
import functional_optim._definition as definition_module
from _registry import IDS, OPTIMIZERS
from functional_optim._kernels.compiled import COMPILED
from functional_optim._kernels.eager import FOREACH_PURE, eager_ops_for
from functional_optim._kernels.ops import PURE

TOL = {torch.float64: (1e-13, 1e-15), torch.float32: (2e-6, 1e-7), torch.float16: (4e-3, 1e-4)}


def _params(dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(), (4,), (3, 5), (2, 3, 4), (0,), (6, 2)]
    params = {f"p{i}": torch.randn(s, generator=g).to(dtype) for i, s in enumerate(shapes)}
    params["p5"] = params["p5"].t()  # non-contiguous
    return params


def _run(entry, dtype, ops, monkeypatch, steps=8):  # 8: RAdam rectifies from step 6
    monkeypatch.setattr(definition_module, "eager_ops_for", lambda *lists: ops)
    tx = entry.factory(**entry.kwargs)
    params = _params(dtype)
    state = tx.init(params)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        grads = {k: torch.randn(p.shape, generator=g).to(dtype) for k, p in params.items()}
        if step == 1:
            grads["p1"] = None
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_foreach_pure_ops_compute_what_per_tensor_pure_ops_compute(entry, dtype, monkeypatch):
    expected_params, expected_state = _run(entry, dtype, PURE, monkeypatch)
    params, state = _run(entry, dtype, FOREACH_PURE, monkeypatch)
    rtol, atol = TOL[dtype]
    for k in params:
        torch.testing.assert_close(params[k], expected_params[k], rtol=rtol, atol=atol)
    for a, b in zip(fo.tree.flatten(state)[0], fo.tree.flatten(expected_state)[0]):
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_the_foreach_path_is_taken_only_where_nothing_needs_the_per_tensor_form():
    p, g = [torch.zeros(3), torch.zeros(2)], [torch.ones(3), None]
    assert eager_ops_for(p, g) is FOREACH_PURE
    assert eager_ops_for([], g) is PURE  # nothing to update
    assert eager_ops_for([torch.zeros(3, requires_grad=True)], [torch.ones(3)]) is PURE  # autograd
    assert eager_ops_for(p, [torch.ones(3).to_sparse(), None]) is PURE  # sparse gradients
    assert eager_ops_for(p, g, [torch.tensor(0.1, requires_grad=True)]) is PURE  # a learned lr
    assert eager_ops_for([torch.zeros(3), torch.zeros(2, device="meta")], g) is PURE  # two devices
    seen = []
    torch.func.vmap(lambda x: seen.append(eager_ops_for([x], [x])) or x)(torch.zeros(2, 3))
    assert seen == [PURE]  # inside functorch transforms
    torch.compile(lambda x: seen.append(eager_ops_for([x], [x])) or x, backend="eager")(torch.zeros(3))
    assert seen[-1] is COMPILED  # under torch.compile: its own whole-list Ops (tests/test_compiled_ops.py)


def test_writable_lists_are_never_written_into_by_later_underscore_ops():
    """A list ``writable`` hands out may be given to in-place-style ops: in the pure foreach path
    those compute new tensors, so the list's tensors (e.g. a new state the update also returns)
    keep their values."""
    made = FOREACH_PURE.mul_([torch.ones(3)], 2.0)  # a list of the update's own tensors
    before = made[0].clone()
    FOREACH_PURE.add_(FOREACH_PURE.writable(made), 1.0)
    FOREACH_PURE.rsqrt_at_least_(FOREACH_PURE.writable(made), 0.5)
    assert torch.equal(made[0], before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_the_addcdiv_update_is_the_quotient_itself_signed_zeros_and_layout_included(dtype):
    """Adam's last line on the caller's params returns ``v * n / d`` as the update (one addcdiv
    on a broadcast -0): bit for bit the product-then-quotient torch's addcdiv adds, +0 and -0
    kept, in the numerator's layout (a transposed and a channels-last tensor)."""
    g = torch.Generator().manual_seed(3)
    shapes = [(5, 7), (2, 3, 4, 4)]
    params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    nums = [torch.randn(7, 5, generator=g, dtype=dtype).t(),
            torch.randn(2, 3, 4, 4, generator=g, dtype=dtype).to(memory_format=torch.channels_last)]
    nums[0][0, :3] = torch.tensor([0.0, -0.0, 0.0], dtype=dtype)
    denoms = [torch.rand(s, generator=g, dtype=dtype) + 0.5 for s in shapes]
    values = [-1e-3, 2e-3]
    delta = FOREACH_PURE.addcdiv_(FOREACH_PURE.base(params), nums, denoms, values)
    updates = FOREACH_PURE.updates(delta, params)
    for u, n, d, v, p in zip(updates, nums, denoms, values, params):
        expected = torch.mul(n, v) / d
        assert torch.equal(u, expected) and torch.equal(torch.signbit(u), torch.signbit(expected))
        assert u.stride() == n.stride()
        assert torch.equal(p + u, torch.addcdiv(p, n, d, value=v))  # torch's in-place step

"""fo.step_: the pure update written in place gives exactly update + apply_updates."""

import pytest
import torch

import functional_optim as fo
from _registry import IDS, OPTIMIZERS


@pytest.mark.parametrize("entry", OPTIMIZERS, ids=IDS)
def test_step_in_place_equals_update_and_apply(entry):
    opt = entry.factory(**entry.kwargs)
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    pure_params, pure_state = {k: v.clone() for k, v in params.items()}, opt.init(params)
    state = opt.init(params)
    buffers = [id(t) for t in fo.tree.flatten(state)[0]]
    for step in range(3):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        updates, pure_state = opt.update(grads, pure_state, pure_params)
        pure_params = fo.apply_updates(pure_params, updates)
        assert fo.step_(opt, grads, state, params) is None
        for k in params:
            assert torch.equal(params[k], pure_params[k])
        for ours, ref in zip(fo.tree.flatten(state)[0], fo.tree.flatten(pure_state)[0]):
            assert (ours is ref) if not isinstance(ours, torch.Tensor) else torch.equal(ours, ref)
    assert [id(t) for t in fo.tree.flatten(state)[0]] == buffers  # the same tensors, updated


_COMPILED_CASES = {
    # float64 0-d state (weight_sum, lr_max, d ...): dynamo drops in-place ops on such inputs
    "schedule_free_sgd": lambda: fo.schedule_free_sgd(lr=0.1),
    "schedule_free_adamw": lambda: fo.schedule_free_adamw(lr=0.01),
    "prodigy": lambda: fo.prodigy(),
    "adam": lambda: fo.adam(lr=0.01),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(_COMPILED_CASES))
def test_compiled_step_in_place_equals_update_and_apply(name, dtype):
    """``torch.compile(fo.step_)`` writes every state leaf and parameter, 0-d float64 ones
    included (an in-place ``copy_``/``add_`` on a 0-d float64 CPU input is silently dropped under
    torch.compile in torch 2.13; step_ writes those by indexing)."""
    torch._dynamo.reset()
    opt = _COMPILED_CASES[name]()
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=g, dtype=dtype), "s": torch.randn((), generator=g, dtype=dtype)}
    pure_params, pure_state = {k: v.clone() for k, v in params.items()}, opt.init(params)
    state = opt.init(params)
    step = torch.compile(lambda grads, state, params: fo.step_(opt, grads, state, params), fullgraph=True,
                         backend="aot_eager")
    for _ in range(3):
        grads = {k: torch.randn(v.shape, generator=g, dtype=dtype) for k, v in params.items()}
        updates, pure_state = opt.update(grads, pure_state, pure_params)
        pure_params = fo.apply_updates(pure_params, updates)
        step(grads, state, params)
        for k in params:
            torch.testing.assert_close(params[k], pure_params[k], rtol=1e-6, atol=1e-7)
        for ours, ref in zip(fo.tree.flatten(state)[0], fo.tree.flatten(pure_state)[0]):
            if isinstance(ours, torch.Tensor):
                torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    torch._dynamo.reset()

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

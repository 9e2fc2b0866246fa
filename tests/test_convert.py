"""Checkpoint in one API, continue in the other: compat state <-> functional state."""

import pytest
import torch

import compat
import functional_optim as fo
from _parity import assert_close

CASES = [
    (compat.Adam, dict(lr=0.05, amsgrad=True, weight_decay=0.1)),
    (compat.AdamW, dict(lr=0.05)),
    (compat.Adadelta, dict(lr=0.5, weight_decay=0.1)),
    (compat.NAdam, dict(lr=0.05, decoupled_weight_decay=True, weight_decay=0.1)),
]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def _grads(model, step):
    g = torch.Generator().manual_seed(step)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}


@pytest.mark.parametrize("cls, kwargs", CASES, ids=[c.__name__ for c, _ in CASES])
def test_compat_to_functional_and_back_continues_exactly(cls, kwargs):
    reference, converted = _model(), _model()
    ref_opt = cls(reference.parameters(), **kwargs)
    opt = cls(converted.parameters(), **kwargs)

    def compat_step(model, optimizer, step):
        for n, p in model.named_parameters():
            p.grad = _grads(model, step)[n]
        optimizer.step()

    for step in range(3):
        compat_step(reference, ref_opt, step)
        compat_step(converted, opt, step)

    # compat -> functional, three functional steps
    params = dict(converted.named_parameters())
    transformation, state = opt.to_functional(params)
    tree = {n: p.detach().clone() for n, p in params.items()}
    for step in range(3, 6):
        compat_step(reference, ref_opt, step)
        updates, state = transformation.update(_grads(converted, step), state, tree)
        tree = fo.apply_updates(tree, updates)
    for n, p in reference.named_parameters():
        assert_close(tree[n], p.detach(), torch.float64, n)

    # functional -> compat, three compat steps
    with torch.no_grad():
        for n, p in converted.named_parameters():
            p.copy_(tree[n])
    fresh = cls(converted.parameters(), **kwargs)
    fresh.load_functional(dict(converted.named_parameters()), state)
    for step in range(6, 9):
        compat_step(reference, ref_opt, step)
        compat_step(converted, fresh, step)
    for p, q in zip(converted.parameters(), reference.parameters()):
        assert_close(p.detach(), q.detach(), torch.float64)
    ref_sd, our_sd = ref_opt.state_dict(), fresh.state_dict()
    for pid, entry in ref_sd["state"].items():
        assert list(our_sd["state"][pid]) == list(entry)
        for key, value in entry.items():
            assert our_sd["state"][pid][key].dtype == value.dtype
            assert our_sd["state"][pid][key].device == value.device
            assert_close(our_sd["state"][pid][key], value, torch.float64, key)


def test_conversion_errors():
    model = _model()
    opt = compat.Adam([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}])
    with pytest.raises(ValueError, match=r"differ in 'lr'"):
        opt.to_functional(dict(model.named_parameters()))
    with pytest.raises(ValueError, match=r"\['stranger'\] is not a parameter"):
        opt.to_functional({"stranger": torch.zeros(2)})
    transformation, state = opt.to_functional(dict(model[0].named_parameters()))
    bad = state._replace(exp_avg={"weight": torch.zeros(1), "bias": state.exp_avg["bias"]})
    with pytest.raises(ValueError, match=r"state.exp_avg at \['weight'\]"):
        opt.load_functional(dict(model[0].named_parameters()), bad)
    assert len(opt.state) == 0

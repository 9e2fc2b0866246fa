"""compat's CPU default runs foreach where that is bitwise equal to torch's default for-loop."""

import itertools

import pytest
import torch

import compat
from _parity import grads_for_step, make_params

FLAGS = {
    "Adam": [dict(amsgrad=a, maximize=m, weight_decay=w) for a, m, w in itertools.product([0, 1], [0, 1], [0, .1])],
    "AdamW": [dict(amsgrad=a, maximize=m) for a, m in itertools.product([0, 1], [0, 1])],
    "Adagrad": [dict(lr_decay=d, weight_decay=w, maximize=m) for d, w, m in itertools.product([0, .1], [0, .1], [0, 1])],
    "Adadelta": [dict(weight_decay=w, maximize=m) for w, m in itertools.product([0, .1], [0, 1])],
}
CASES = [(name, f) for name, flags in FLAGS.items() for f in flags]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name, flags", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_cpu_default_is_bitwise_torch_default(name, flags, dtype):
    flags = {k: bool(v) if k in ("amsgrad", "maximize") else v for k, v in flags.items()}
    params = make_params(dtype)
    ref = [p.clone().requires_grad_() for p in params]
    ours = [p.clone().requires_grad_() for p in params]
    opt_ref = getattr(torch.optim, name)(ref, lr=0.05, **flags)
    opt_ours = getattr(compat, name)(ours, lr=0.05, **flags)
    assert opt_ours._use_foreach(opt_ours.param_groups[0], ours)  # the faster path is taken
    for step in range(5):
        for r, o, g in zip(ref, ours, grads_for_step(params, step)):
            r.grad = None if g is None else g.clone()
            o.grad = None if g is None else g.clone()
        opt_ref.step()
        opt_ours.step()
    for r, o in zip(ref, ours):
        assert torch.equal(r, o)
    for r, o in zip(ref, ours):
        for key, value in opt_ref.state[r].items():
            assert torch.equal(opt_ours.state[o][key], value), key
    assert opt_ours.state_dict()["param_groups"] == opt_ref.state_dict()["param_groups"]


def test_cpu_default_stays_the_for_loop_where_foreach_would_round_differently():
    """Complex params (torch's loop decays them as complex numbers), tensor lr, differentiable."""
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    assert not compat.Adam([p])._use_foreach(compat.Adam([p]).param_groups[0], [p])
    q = torch.zeros(3, requires_grad=True)
    for opt in (compat.Adam([q], lr=torch.tensor(0.1)), compat.Adam([q], differentiable=True), compat.NAdam([q])):
        assert not opt._use_foreach(opt.param_groups[0], [q])

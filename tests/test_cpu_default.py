"""compat's CPU default runs foreach only where that is bitwise equal to torch's default for-loop.

Every dtype torch's optimizers take on CPU is stepped ~20 times next to torch's default: float32
and float64 take the faster foreach path, float16 and bfloat16 (where CPU foreach rounds scalar
multiplications differently) stay on the for-loop; both must give torch's numbers bit for bit.
"""

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
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
#: dtypes for which the default takes the foreach path
FOREACH_DTYPES = (torch.float32, torch.float64)
STEPS = 20


def _grads(step: int, dtype: torch.dtype) -> list:
    """:func:`grads_for_step` (a None grad at step 2, zeros at step 3) in ``dtype``."""
    return [None if g is None else g.to(dtype) for g in grads_for_step(make_params(torch.float32), step)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name, flags", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_cpu_default_is_bitwise_torch_default(name, flags, dtype):
    flags = {k: bool(v) if k in ("amsgrad", "maximize") else v for k, v in flags.items()}
    params = [p.to(dtype) for p in make_params(torch.float32)]
    ref = [p.clone().requires_grad_() for p in params]
    ours = [p.clone().requires_grad_() for p in params]
    opt_ref = getattr(torch.optim, name)(ref, lr=0.05, **flags)
    opt_ours = getattr(compat, name)(ours, lr=0.05, **flags)
    # the faster path is taken exactly where it is proven equal
    assert opt_ours._use_foreach(opt_ours.param_groups[0], ours) == (dtype in FOREACH_DTYPES)
    for step in range(STEPS):
        for r, o, g in zip(ref, ours, _grads(step, dtype)):
            r.grad = None if g is None else g.clone()
            o.grad = None if g is None else g.clone()
        opt_ref.step()
        opt_ours.step()
    for r, o in zip(ref, ours):
        assert torch.equal(r, o)
    for r, o in zip(ref, ours):
        for key, value in opt_ref.state[r].items():
            assert opt_ours.state[o][key].dtype == value.dtype, key
            assert torch.equal(opt_ours.state[o][key], value), key
    assert opt_ours.state_dict()["param_groups"] == opt_ref.state_dict()["param_groups"]


def test_cpu_default_stays_the_for_loop_where_foreach_would_round_differently():
    """Complex params (torch's loop decays them as complex numbers), tensor lr, differentiable,
    half-precision params, an int64 ``step`` from a checkpoint, a parameter listed twice."""
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    assert not compat.Adam([p])._use_foreach(compat.Adam([p]).param_groups[0], [p])
    q = torch.zeros(3, requires_grad=True)
    for opt in (compat.Adam([q], lr=torch.tensor(0.1)), compat.Adam([q], differentiable=True), compat.NAdam([q])):
        assert not opt._use_foreach(opt.param_groups[0], [q])
    for dtype in (torch.float16, torch.bfloat16):
        h = torch.zeros(3, dtype=dtype, requires_grad=True)
        assert not compat.Adam([h])._use_foreach(compat.Adam([h]).param_groups[0], [h])
    opt = compat.Adam([q])
    opt.state[q]["step"] = torch.tensor(3)
    assert not opt._use_foreach(opt.param_groups[0], [q])
    opt = compat.Adam([q])
    assert not opt._use_foreach(opt.param_groups[0], [q, q])

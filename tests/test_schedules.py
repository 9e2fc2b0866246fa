"""Schedules against torch.optim.lr_scheduler curves; number in -> float out, tensor in -> 0-d tensor."""

import math

import pytest
import torch
from torch.optim import lr_scheduler as L

from functional_optim import schedules as S

BASE = 0.1
N = 40


def torch_curve(make_scheduler, steps=N, base=BASE):
    """lr used by the optimizer at steps 0..steps-1 (after ``t`` calls to ``scheduler.step()``)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


CASES = {
    "StepLR": (lambda o: L.StepLR(o, step_size=7, gamma=0.3), S.exponential_decay(BASE, 7, 0.3, staircase=True)),
    "ExponentialLR": (lambda o: L.ExponentialLR(o, gamma=0.9), S.exponential_decay(BASE, 1, 0.9)),
    "MultiStepLR": (lambda o: L.MultiStepLR(o, milestones=[5, 12, 30], gamma=0.5),
                    S.piecewise_constant_schedule(BASE, {5: 0.5, 12: 0.5, 30: 0.5})),
    "LinearLR": (lambda o: L.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=15),
                 S.linear_schedule(BASE * 0.2, BASE * 0.9, 15)),
    "PolynomialLR": (lambda o: L.PolynomialLR(o, total_iters=25, power=2.0), S.polynomial_schedule(BASE, 0.0, 2.0, 25)),
    "CosineAnnealingLR": (lambda o: L.CosineAnnealingLR(o, T_max=N - 1, eta_min=0.01),
                          S.cosine_decay_schedule(BASE, N - 1, alpha=0.01 / BASE)),
    "ConstantLR": (lambda o: L.ConstantLR(o, factor=0.25, total_iters=10),
                   S.join_schedules([S.constant_schedule(BASE * 0.25), S.constant_schedule(BASE)], [10])),
    # torch peaks at pct_start * N - 1 = 11 and ends at N - 1 = 39; optax-style at int(pct * T), T
    "OneCycleLR": (lambda o: L.OneCycleLR(o, max_lr=1.0, total_steps=N, pct_start=0.3, cycle_momentum=False),
                   S.cosine_onecycle_schedule(N - 1, 1.0, pct_start=11.5 / (N - 1))),
    "SequentialLR(warmup, cosine)": (
        lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=8),
                                     L.CosineAnnealingLR(o, T_max=N - 1 - 8, eta_min=0.002)], milestones=[8]),
        S.warmup_cosine_decay_schedule(BASE * 0.1, BASE, 8, N - 1, end_value=0.002)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_scheduler(name):
    make_scheduler, schedule = CASES[name]
    expected = torch_curve(make_scheduler)
    for step, lr in enumerate(expected):
        value = schedule(step)
        assert isinstance(value, float)
        assert value == pytest.approx(lr, rel=1e-9, abs=1e-15), (step, value, lr)
        tensor_value = schedule(torch.tensor(step))
        assert isinstance(tensor_value, torch.Tensor) and tensor_value.dim() == 0
        assert tensor_value.dtype == torch.float64
        assert float(tensor_value) == pytest.approx(value, rel=1e-12, abs=1e-15), (step, tensor_value, value)


def test_optax_semantics_at_the_edges():
    assert S.polynomial_schedule(1.0, 0.0, 2, 0)(5) == 1.0  # non-positive transition_steps: constant
    assert S.linear_schedule(1.0, 0.0, 10, transition_begin=5)(5) == 1.0
    assert S.linear_schedule(1.0, 0.0, 10, transition_begin=5)(100) == 0.0
    assert S.cosine_decay_schedule(2.0, 10, alpha=0.5)(1000) == 1.0  # held after decay_steps
    ed = S.exponential_decay(1.0, 2, 0.5, transition_begin=3, end_value=0.3)
    assert [ed(t) for t in (0, 3, 5, 7, 20)] == [1.0, 1.0, 0.5, 0.3, 0.3]
    assert S.exponential_decay(1.0, 1, 2.0, end_value=3.0)(5) == 3.0  # growth bounded from above
    assert S.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})(2) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="positive decay_steps"):
        S.cosine_decay_schedule(1.0, 0)
    with pytest.raises(ValueError, match="non-negative scale factors"):
        S.piecewise_constant_schedule(1.0, {3: -1.0})
    with pytest.raises(ValueError, match="boundaries"):
        S.join_schedules([S.constant_schedule(1.0)], [3])


def test_int32_tensor_step_gives_float64_on_its_device():
    step = torch.tensor(3, dtype=torch.int32)
    value = S.warmup_cosine_decay_schedule(0.0, 1.0, 5, 20)(step)
    assert value.device == step.device and value.dtype == torch.float64
    assert float(value) == pytest.approx(0.6)
    assert math.isclose(float(S.constant_schedule(2.0)(step)), 2.0)

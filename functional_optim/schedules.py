"""Schedules: pure functions ``step -> value`` (optax's names and formulas).

A schedule called with a Python ``int``/``float`` returns a Python ``float``; called with a
tensor it returns a 0-d float64 tensor (float32 on MPS) computed with tensor ops only, so a step
that reads it under ``torch.compile`` sees a changing *value*, never a changing constant, and
does not recompile. Use them through :func:`functional_optim.inject_hyperparams`, or by hand:
``opt.update(g, s, p, opt.hparams._replace(lr=schedule(step)))``, or, with a torch optimizer,
``torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedule(t) / base_lr)``.

How the torch schedulers map (with ``base`` the optimizer's initial lr, ``t`` the number of
``scheduler.step()`` calls):

==========================================  =================================================
``StepLR(step_size, gamma)``                ``exponential_decay(base, step_size, gamma, staircase=True)``
``ExponentialLR(gamma)``                    ``exponential_decay(base, 1, gamma)``
``MultiStepLR(milestones, gamma)``          ``piecewise_constant_schedule(base, {m: gamma ...})``
``LinearLR(f0, f1, n)``                     ``linear_schedule(base * f0, base * f1, n)``
``PolynomialLR(n, power)``                  ``polynomial_schedule(base, 0.0, power, n)``
``CosineAnnealingLR(T, eta_min)``, t <= T   ``cosine_decay_schedule(base, T, alpha=eta_min / base)``
``OneCycleLR(max_lr, total_steps=N, ...)``  ``cosine_onecycle_schedule(N - 1, max_lr, pct)`` with
                                            ``int(pct * (N - 1)) == pct_start * N - 1``
==========================================  =================================================
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

Step = Union[int, float, Tensor]
Value = Union[float, Tensor]
Schedule = Callable[[Step], Value]

__all__ = [
    "Schedule",
    "constant_schedule",
    "polynomial_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "exponential_decay",
    "cosine_decay_schedule",
    "piecewise_interpolate_schedule",
    "cosine_onecycle_schedule",
    "warmup_cosine_decay_schedule",
    "join_schedules",
]


# ---------------------------------------------------------------------------- number/tensor helpers
def _as_float(step: Step) -> Value:
    """A tensor step as a float64 (float32 on MPS) tensor; a number as a float."""
    if isinstance(step, Tensor):
        return step.to(torch.float32 if step.device.type == "mps" else torch.float64)
    return float(step)


def _tensor_like(x: Value, like: Tensor) -> Tensor:
    return x if isinstance(x, Tensor) else torch.full((), x, dtype=like.dtype, device=like.device)


def _where(cond, a: Value, b: Value) -> Value:
    """``a if cond else b`` for a bool, ``torch.where`` for a tensor condition."""
    if not isinstance(cond, Tensor):
        return a if cond else b
    floats = [x for x in (a, b) if isinstance(x, Tensor) and x.is_floating_point()]
    like = floats[0] if floats else _as_float(torch.zeros((), device=cond.device))
    return torch.where(cond, _tensor_like(a, like), _tensor_like(b, like))


def _clip(x: Value, low: float, high: float) -> Value:
    return torch.clamp(x, low, high) if isinstance(x, Tensor) else min(max(x, low), high)


def _cos(x: Value) -> Value:
    return torch.cos(x) if isinstance(x, Tensor) else math.cos(x)


def _floor(x: Value) -> Value:
    return torch.floor(x) if isinstance(x, Tensor) else float(math.floor(x))


# ---------------------------------------------------------------------------- schedules
def constant_schedule(value: float) -> Schedule:
    """``value`` at every step (a tensor of it for a tensor step)."""

    def schedule(step: Step) -> Value:
        t = _as_float(step)
        return _tensor_like(float(value), t) if isinstance(t, Tensor) else float(value)

    return schedule


def polynomial_schedule(init_value: float, end_value: float, power: float, transition_steps: int,
                        transition_begin: int = 0) -> Schedule:
    """From ``init_value`` to ``end_value`` along ``(1 - s / T) ** power`` over ``T = transition_steps``.

    ``s = clip(step - transition_begin, 0, T)``: the value is ``init_value`` until
    ``transition_begin`` and ``end_value`` from ``transition_begin + T`` on. A non-positive
    ``transition_steps`` gives the constant ``init_value`` and a negative ``transition_begin``
    counts as 0 (as optax).
    """
    if transition_steps <= 0:
        return constant_schedule(init_value)
    transition_begin = max(transition_begin, 0)

    def schedule(step: Step) -> Value:
        s = _clip(_as_float(step) - transition_begin, 0.0, float(transition_steps))
        frac = 1.0 - s / transition_steps
        return (init_value - end_value) * frac**power + end_value

    return schedule


def linear_schedule(init_value: float, end_value: float, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
    """Linear from ``init_value`` to ``end_value``: :func:`polynomial_schedule` with ``power=1``."""
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def piecewise_constant_schedule(init_value: float, boundaries_and_scales: Optional[Mapping[int, float]] = None
                                ) -> Schedule:
    """``init_value`` times the product of every ``scale`` whose ``boundary <= step``."""
    items = sorted((boundaries_and_scales or {}).items())
    if any(s < 0 for _, s in items):
        raise ValueError("piecewise_constant_schedule expects non-negative scale factors")

    def schedule(step: Step) -> Value:
        t = _as_float(step)
        value = _tensor_like(float(init_value), t) if isinstance(t, Tensor) else float(init_value)
        for boundary, s in items:
            value = _where(t >= boundary, value * s, value)
        return value

    return schedule


def exponential_decay(init_value: float, transition_steps: int, decay_rate: float, transition_begin: int = 0,
                      staircase: bool = False, end_value: Optional[float] = None) -> Schedule:
    """``init_value * decay_rate ** (s / transition_steps)`` with ``s = step - transition_begin``.

    ``init_value`` while ``s <= 0``; with ``staircase`` the exponent is floored. ``end_value``
    bounds the value (from below when ``decay_rate < 1``, from above otherwise). A non-positive
    ``transition_steps`` or a zero ``decay_rate`` gives the constant ``init_value`` (as optax).
    """
    if transition_steps <= 0 or decay_rate == 0:
        return constant_schedule(init_value)
    transition_begin = max(transition_begin, 0)

    def schedule(step: Step) -> Value:
        s = _as_float(step) - transition_begin
        p = s / transition_steps
        if staircase:
            p = _floor(p)
        value = _where(s <= 0, init_value, init_value * decay_rate**p)
        if end_value is not None:
            value = _where(value < end_value, end_value, value) if decay_rate < 1 \
                else _where(value > end_value, end_value, value)
        return value

    return schedule


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
                          ) -> Schedule:
    """Cosine decay (Loshchilov & Hutter, "SGDR", 2017, https://arxiv.org/abs/1608.03983).

    ``init_value * ((1 - alpha) * c ** exponent + alpha)`` with
    ``c = (1 + cos(pi * min(step, T) / T)) / 2`` and ``T = decay_steps``; ``alpha * init_value``
    from step ``T`` on (torch's ``CosineAnnealingLR`` continues the cosine past ``T_max``).
    """
    if not decay_steps > 0:
        raise ValueError(f"cosine_decay_schedule requires positive decay_steps, got decay_steps={decay_steps}")

    def schedule(step: Step) -> Value:
        t = _clip(_as_float(step), -math.inf, float(decay_steps))
        c = 0.5 * (1.0 + _cos(math.pi * t / decay_steps))
        return init_value * ((1.0 - alpha) * c**exponent + alpha)

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """``schedules[i]`` from ``boundaries[i - 1]`` on, called with the steps since that boundary."""
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"join_schedules needs len(schedules) - 1 boundaries, got {len(boundaries)} "
                         f"for {len(schedules)} schedules")

    def schedule(step: Step) -> Value:
        value = schedules[0](step)
        for boundary, s in zip(boundaries, schedules[1:]):
            value = _where(step < boundary, value, s(step - boundary))
        return value

    return schedule


def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                                 end_value: float = 0.0, exponent: float = 1.0) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine decay
    to ``end_value`` at step ``decay_steps`` (which *includes* the warmup, as in optax)."""
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent)],
        [warmup_steps],
    )


def piecewise_interpolate_schedule(interpolate_type: str, init_value: float,
                                   boundaries_and_scales: Optional[Mapping[int, float]] = None) -> Schedule:
    """Interpolate (``"linear"`` or ``"cosine"``) between the values ``init_value * prod(scales so far)``
    reached at each boundary (the first segment starts at step 0); the last value from the last
    boundary on."""
    if interpolate_type not in ("linear", "cosine"):
        raise ValueError("interpolate_type must be either 'cosine' or 'linear'")
    items = sorted((boundaries_and_scales or {}).items())
    if any(s < 0 for _, s in items):
        raise ValueError("piecewise_interpolate_schedule expects non-negative scale factors")
    bounds = [0] + [b for b, _ in items]
    values = [float(init_value)]
    for _, s in items:
        values.append(values[-1] * s)

    def interpolate(start, end, pct):
        if interpolate_type == "linear":
            return (end - start) * pct + start
        return end + (start - end) / 2.0 * (_cos(math.pi * pct) + 1.0)

    def schedule(step: Step) -> Value:
        t = _as_float(step)
        value = _tensor_like(values[-1], t) if isinstance(t, Tensor) else values[-1]
        for i in reversed(range(len(bounds) - 1)):  # the segment containing t wins
            lo, hi = bounds[i], bounds[i + 1]
            pct = (t - lo) / max(hi - lo, 1)
            inside = (t >= lo) & (t < hi) if isinstance(t, Tensor) else lo <= t < hi
            value = _where(inside, interpolate(values[i], values[i + 1], pct), value)
        return value

    return schedule


def cosine_onecycle_schedule(transition_steps: int, peak_value: float, pct_start: float = 0.3,
                             div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    """One-cycle (Smith & Topin, "Super-Convergence", 2017, https://arxiv.org/abs/1708.07120).

    Cosine from ``peak_value / div_factor`` up to ``peak_value`` at ``int(pct_start * T)``, then
    down to ``peak_value / (div_factor * final_div_factor)`` at ``T = transition_steps``. Same
    curve as ``torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos", three_phase=False)``,
    which counts its phases differently: it peaks at ``pct_start * total_steps - 1`` and ends at
    ``total_steps - 1`` (see the module docstring for the mapping).
    """
    if transition_steps <= 0:
        raise ValueError("cosine_onecycle_schedule needs a positive transition_steps")
    return piecewise_interpolate_schedule(
        "cosine",
        peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor, int(transition_steps): 1.0 / (div_factor * final_div_factor)},
    )

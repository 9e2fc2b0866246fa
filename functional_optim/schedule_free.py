"""Schedule-Free optimization: the ``schedule_free`` wrapper and the ``schedule_free_adamw`` /
``schedule_free_sgd`` aliases built from it.

Defazio et al., "The Road Less Scheduled" (2024), https://arxiv.org/abs/2405.15682.
Reference implementation: ``schedulefree.AdamWScheduleFree`` / ``SGDScheduleFree`` (PyPI
``schedulefree``, by the authors).

Schedule-Free keeps two sequences: ``z`` (the base optimizer's iterates) and ``x`` (a weighted
average of the ``z``), and evaluates gradients at their interpolation ``y = b1 x + (1 - b1) z``.
As in the reference and in optax, the *params* a training loop holds are ``y``; ``x`` is not
stored. Evaluate (or checkpoint for inference) at ``x``: :func:`schedule_free_eval_params`
gives it from the state, :func:`schedule_free_train_params` goes back.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import torch
from torch import Tensor

from . import _validate
from .base import GradientTransformation
from .combine import chain, map_updates
from .transforms import _like, _map_state, add_decayed_weights
from .tree import check_counters, check_params_match, check_state_like, check_state_type, flatten

Number = Union[float, Tensor]

__all__ = [
    "ScheduleFreeHParams",
    "ScheduleFreeState",
    "ScaleByRmsDebiasedState",
    "ScheduleFreeAdamWHParams",
    "ScheduleFreeSGDHParams",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "schedule_free_eval_params",
    "schedule_free_train_params",
]


def _device(tree: Any) -> torch.device:
    for leaf in flatten(tree)[0]:
        if isinstance(leaf, Tensor):
            return leaf.device
    return torch.device("cpu")


def _f64(x: Any, device: torch.device) -> Tensor:
    """A hyperparameter as a float64 0-d tensor: the scalar math runs in double precision, as the
    reference's Python floats do.

    A number becomes ``ones * x`` (exact): under torch.compile a Python float that changes
    between calls (a scheduler's ``lr``) is symbolic, and ``as_tensor`` of it is specialized,
    recompiling at every new value; a product stays symbolic."""
    if isinstance(x, Tensor):
        return x.to(dtype=torch.float64, device=device)
    return torch.ones((), dtype=torch.float64, device=device) * x


# ---------------------------------------------------------------------------- the wrapper
class ScheduleFreeHParams(NamedTuple):
    lr: Number
    b1: Number
    weight_lr_power: Number
    r: Number
    warmup_steps: Number


class ScheduleFreeState(NamedTuple):
    """``count``: steps taken (0-d int32); ``weight_sum``, ``lr_max``: the averaging weights'
    running sum and the largest scheduled lr so far (0-d float64; ``lr_max`` starts at -1 as in
    the reference); ``b1``: the ``b1`` of the last step (0-d float64, read by
    :func:`schedule_free_eval_params`); ``z``: the base iterates, one tensor per leaf;
    ``base_state``: the base transformation's state."""

    count: Tensor
    weight_sum: Tensor
    lr_max: Tensor
    b1: Tensor
    z: Any
    base_state: Any


def schedule_free(base: GradientTransformation, lr: Number, b1: Number = 0.9, weight_lr_power: Number = 2.0,
                  r: Number = 0.0, warmup_steps: Number = 0) -> GradientTransformation:
    """Schedule-Free wrapper around a *direction* ``d = base(g)`` (without the learning rate).

    At step ``k`` (from 0), with ``lr_k = lr * min(1, (k + 1) / warmup_steps)``::

        lr_max <- max(lr_max, lr_k);  w = (k + 1)^r * lr_max^weight_lr_power
        S <- S + w;  c = w / S  (0 while S is 0)
        y <- lerp(y, z, c) + lr_k * (b1 * (1 - c) - 1) * d     # the params (returned as updates y' - y)
        z <- z - lr_k * d

    which is ``x <- (1 - c) x + c z'``, ``y = b1 x + (1 - b1) z`` without storing ``x``
    (Defazio et al., 2024, https://arxiv.org/abs/2405.15682; the update order and formulas are
    ``schedulefree``'s). ``z`` starts at the params.

    ``hparams`` is a pair ``(ScheduleFreeHParams, base.hparams)`` (either may be ``None`` for the
    defaults), like a two-part ``chain``.

    Difference from optax's ``schedule_free(base_optimizer, learning_rate, b1, weight_lr_power)``:
    there ``base_optimizer`` includes the learning rate and ``learning_rate`` is passed again for
    the weights; here ``base`` gives the direction only and the wrapper applies ``lr_k`` (with its
    warmup) to the step and to the weights, so one ``lr`` hparam drives both. ``r`` and
    ``warmup_steps`` are the reference's polynomial weighting and linear warmup.

    ``count`` goes up at every call, also for leaves without a gradient (whose ``z`` and params
    stay as they are), as the reference's per-group ``k``.

    Example::

        tx = fo.schedule_free(fo.add_decayed_weights(0.0), lr=1.0, b1=0.9)   # schedule-free SGD
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        eval_params = fo.schedule_free_eval_params(state, params)
    """
    defaults = _validate.scalar_hparams(ScheduleFreeHParams(lr, b1, weight_lr_power, r, warmup_steps),
                                        "schedule_free")

    def init(params):
        dev = _device(params)
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        return ScheduleFreeState(torch.zeros((), dtype=torch.int32, device=dev), zero, zero - 1.0,
                                 _f64(defaults.b1, dev), map_updates(torch.clone, params), base.init(params))

    def update(updates, state, params=None, hparams=None):
        if params is None:
            raise ValueError("schedule_free.update needs params")
        check_params_match(updates, params, "schedule_free")
        if hparams is None:
            hparams = (None, None)
        if not isinstance(hparams, tuple) or len(hparams) != 2 or isinstance(hparams, ScheduleFreeHParams):
            raise TypeError("schedule_free.update expects hparams (ScheduleFreeHParams | None, base hparams | None), "
                            f"got {type(hparams).__name__}")
        hp = _validate.check_hparams_record("schedule_free", defaults, hparams[0])
        base_hparams = hparams[1]
        check_state_type(state, ScheduleFreeState, "schedule_free")
        check_counters("schedule_free", state, ("count", "weight_sum", "lr_max", "b1"))
        check_state_like(updates, state.z, "schedule_free: state.z")
        dev = state.weight_sum.device
        k1 = (state.count + 1).to(torch.float64)
        warm = _f64(hp.warmup_steps, dev)
        sched = torch.where(state.count < warm, k1 / torch.clamp(warm, min=1.0), torch.ones_like(k1))
        lr_k = _f64(hp.lr, dev) * sched
        lr_max = torch.maximum(lr_k, state.lr_max)
        weight = k1 ** _f64(hp.r, dev) * lr_max ** _f64(hp.weight_lr_power, dev)
        weight_sum = state.weight_sum + weight
        zero_sum = weight_sum == 0
        c = torch.where(zero_sum, torch.zeros_like(weight), weight / torch.where(zero_sum, torch.ones_like(weight),
                                                                                 weight_sum))
        b1_ = _f64(hp.b1, dev)
        y_coef = lr_k * (b1_ * (1 - c) - 1)

        direction, base_state = base.update(updates, state.base_state, params, base_hparams)

        def y_step(d, y, z):
            return torch.lerp(y, z, _like(c, y)) + _like(y_coef, d) * d - y

        out = map_updates(y_step, direction, params, state.z)
        z = _map_state(lambda d, z: z - _like(lr_k, d) * d, direction, state.z)
        return out, ScheduleFreeState(state.count + 1, weight_sum, lr_max, b1_, z, base_state)

    return GradientTransformation(init, update, (defaults, base.hparams))


def _find_sf_states(node: Any, found: list) -> None:
    if isinstance(node, ScheduleFreeState):
        found.append(node)
    elif isinstance(node, dict):
        for v in node.values():
            _find_sf_states(v, found)
    elif isinstance(node, (tuple, list)):
        for v in node:
            _find_sf_states(v, found)


def _sf_state(state: Any) -> ScheduleFreeState:
    """The one :class:`ScheduleFreeState` in ``state`` (itself, or nested in an
    ``inject_hyperparams``, ``chain`` or ``MultiSteps`` state)."""
    if isinstance(state, ScheduleFreeState):
        return state
    found: list = []
    _find_sf_states(state, found)
    if len(found) != 1:
        raise TypeError(f"expected the state of a schedule_free transformation (one ScheduleFreeState in it), "
                        f"found {len(found)} in a {type(state).__name__}")
    return found[0]


def schedule_free_eval_params(state: ScheduleFreeState, params: Any) -> Any:
    """The evaluation point ``x`` from the training params ``y``: ``x = lerp(y, z, 1 - 1/b1)``.

    The functional counterpart of ``schedulefree``'s ``optimizer.eval()`` (same formula, with the
    ``b1`` of the last step). ``state`` is the wrapper's state or any state holding exactly one
    (``inject_hyperparams``, ``chain``, ``MultiSteps``). Pure: returns a new tree; the training
    loop keeps ``y``. Example::

        eval_params = fo.schedule_free_eval_params(state, params)
        loss = model_fn(eval_params, batch)
    """
    state = _sf_state(state)
    check_params_match(state.z, params, "schedule_free_eval_params", "state.z", same_dtype=True)
    w = 1 - 1 / state.b1
    return map_updates(lambda y, z: torch.lerp(y, z, _like(w, y)), params, state.z)


def schedule_free_train_params(state: ScheduleFreeState, eval_params: Any) -> Any:
    """Back from ``x`` to the training params ``y = lerp(x, z, 1 - b1)`` (``optimizer.train()``)."""
    state = _sf_state(state)
    check_params_match(state.z, eval_params, "schedule_free_train_params", "state.z", same_dtype=True)
    w = 1 - state.b1
    return map_updates(lambda x, z: torch.lerp(x, z, _like(w, x)), eval_params, state.z)


# ---------------------------------------------------------------------------- Adam's denominator
class ScaleByRmsDebiasedHParams(NamedTuple):
    b2: Number
    eps: Number


class ScaleByRmsDebiasedState(NamedTuple):
    """``count``: calls so far (0-d int32, up at every call as optax's counts); ``nu``: the EMA of
    squared gradients, one tensor per leaf (``schedulefree``'s ``exp_avg_sq``)."""

    count: Tensor
    nu: Any


def _scale_by_rms_debiased(b2: Number, eps: Number) -> GradientTransformation:
    """``nu <- b2 nu + (1 - b2) g^2``; ``u = g / (sqrt(nu / (1 - b2^t)) + eps)``.

    optax's ``scale_by_adam(b1=0, b2, eps)`` without its (then useless) first moment; the bias
    correction uses one count for all leaves, as ``schedulefree`` uses its group's ``k``.
    """
    defaults = ScaleByRmsDebiasedHParams(b2, eps)

    def init(params):
        return ScaleByRmsDebiasedState(torch.zeros((), dtype=torch.int32, device=_device(params)),
                                       map_updates(torch.zeros_like, params))

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("scale_by_rms_debiased", defaults, hparams)
        check_state_type(state, ScaleByRmsDebiasedState, "scale_by_rms_debiased")
        check_counters("scale_by_rms_debiased", state, ("count",))
        check_state_like(updates, state.nu, "scale_by_rms_debiased: state.nu")
        dev = state.count.device
        count = state.count + 1
        bc2 = 1 - _f64(hp.b2, dev) ** count.to(torch.float64)

        def nu_step(g, v):
            b = _like(hp.b2, v)
            if isinstance(b, Tensor):
                return v * b + (1 - b) * g * g
            return torch.addcmul(v * b, g, g, value=1 - b)

        nu = _map_state(nu_step, updates, state.nu)
        out = map_updates(lambda g, v: g / ((v / _like(bc2, v)).sqrt() + _like(hp.eps, v)), updates, nu)
        return out, ScaleByRmsDebiasedState(count, nu)

    return GradientTransformation(init, update, defaults)


# ---------------------------------------------------------------------------- aliases
def _flat(inner: GradientTransformation, record: Any, split: Callable[[Any], tuple], name: str
          ) -> GradientTransformation:
    """``inner`` (a schedule_free) driven by one flat hparams ``record`` (the reference's group keys)."""
    record = _validate.scalar_hparams(record, name)

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record(name, record, hparams)
        return inner.update(updates, state, params, split(hp))

    return GradientTransformation(inner.init, update, record)


class ScheduleFreeAdamWHParams(NamedTuple):
    lr: Number
    betas: tuple
    eps: Number
    weight_decay: Number
    warmup_steps: Number
    r: Number
    weight_lr_power: Number


def schedule_free_adamw(lr: Number = 0.0025, betas: tuple = (0.9, 0.999), eps: Number = 1e-8,
                        weight_decay: Number = 0.0, warmup_steps: Number = 0, r: Number = 0.0,
                        weight_lr_power: Number = 2.0) -> GradientTransformation:
    """Schedule-Free AdamW: :func:`schedule_free` (``b1 = betas[0]``) around the direction
    ``g / (sqrt(nu / (1 - b2^t)) + eps) + weight_decay * y``.

    A composition::

        schedule_free(chain(scale_by_rms_debiased(b2, eps), add_decayed_weights(weight_decay)),
                      lr, b1, weight_lr_power, r, warmup_steps)

    with one flat hparams record :class:`ScheduleFreeAdamWHParams` (``schedulefree``'s group
    keys). Defaults are ``schedulefree.AdamWScheduleFree``'s, and the steps equal it up to
    rounding (the params are returned as ``y' - y`` updates). Weight decay is computed at ``y``
    and goes through the averaging, as the reference's. Evaluate at
    :func:`schedule_free_eval_params`. Paper: https://arxiv.org/abs/2405.15682.

    Example::

        opt = fo.schedule_free_adamw(lr=1e-3, warmup_steps=100)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params); params = fo.apply_updates(params, updates)
        eval_params = fo.schedule_free_eval_params(state, params)
    """
    _validate.check_lr(lr)
    _validate.check_weight_decay(weight_decay)
    b1, b2 = betas
    base = chain(_scale_by_rms_debiased(b2, eps), add_decayed_weights(weight_decay))
    inner = schedule_free(base, lr, b1, weight_lr_power, r, warmup_steps)

    def split(hp):
        sf = ScheduleFreeHParams(hp.lr, hp.betas[0], hp.weight_lr_power, hp.r, hp.warmup_steps)
        return sf, (ScaleByRmsDebiasedHParams(hp.betas[1], hp.eps), base.hparams[1]._replace(weight_decay=hp.weight_decay))

    record = ScheduleFreeAdamWHParams(lr, tuple(betas), eps, weight_decay, warmup_steps, r, weight_lr_power)
    return _flat(inner, record, split, "schedule_free_adamw")


class ScheduleFreeSGDHParams(NamedTuple):
    lr: Number
    momentum: Number
    weight_decay: Number
    warmup_steps: Number
    r: Number
    weight_lr_power: Number


def schedule_free_sgd(lr: Number = 1.0, momentum: Number = 0.9, weight_decay: Number = 0.0,
                      warmup_steps: Number = 0, r: Number = 0.0, weight_lr_power: Number = 2.0
                      ) -> GradientTransformation:
    """Schedule-Free SGD: :func:`schedule_free` (``b1 = momentum``) around ``g + weight_decay * y``.

    A composition: ``schedule_free(add_decayed_weights(weight_decay), lr, momentum,
    weight_lr_power, r, warmup_steps)`` with the flat record :class:`ScheduleFreeSGDHParams`.
    Defaults and checks are ``schedulefree.SGDScheduleFree``'s (``0 < momentum < 1``).
    Paper: https://arxiv.org/abs/2405.15682.

    Example::

        opt = fo.schedule_free_sgd(lr=0.5)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params); params = fo.apply_updates(params, updates)
    """
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if momentum <= 0 or momentum >= 1:
        raise ValueError(f"Momentum must be between 0 and 1 exclusive: {momentum}")
    base = add_decayed_weights(weight_decay)
    inner = schedule_free(base, lr, momentum, weight_lr_power, r, warmup_steps)

    def split(hp):
        sf = ScheduleFreeHParams(hp.lr, hp.momentum, hp.weight_lr_power, hp.r, hp.warmup_steps)
        return sf, base.hparams._replace(weight_decay=hp.weight_decay)

    record = ScheduleFreeSGDHParams(lr, momentum, weight_decay, warmup_steps, r, weight_lr_power)
    return _flat(inner, record, split, "schedule_free_sgd")

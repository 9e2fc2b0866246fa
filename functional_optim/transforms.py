"""Small gradient transformations to compose with the optimizers (see :mod:`functional_optim.combine`).

Each is a :class:`~functional_optim.base.GradientTransformation` with optax's name and meaning.
Its numbers live in an hparams record (``ScaleHParams(step_size)`` ...) so that they can be
passed at call time, scheduled with :func:`functional_optim.inject_hyperparams`, or driven by a
torch LR scheduler through ``compat.TransformationOptimizer``; a field may be a Python number
or a 0-d tensor. ``None`` gradient leaves stay ``None`` and leave their state as it is.

Nothing here reads a tensor back to the host (no ``.item()``, no data-dependent ``if``): clipping
and skipping are written with ``torch.clamp`` / ``torch.where`` so that a step compiles into one
graph with ``torch.compile(fullgraph=True)`` and never waits on the device.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _validate
from .base import GradientTransformation
from .combine import map_updates, masked, select_tree
from .tree import check_counters, check_params_match, check_state_like, check_state_type, flatten, unflatten

Number = Union[float, Tensor]

__all__ = [
    "EmptyState",
    "ScaleHParams",
    "ScaleByLearningRateHParams",
    "ClipHParams",
    "ClipByGlobalNormHParams",
    "AddDecayedWeightsHParams",
    "TraceHParams",
    "TraceState",
    "ZeroNansState",
    "ApplyIfFiniteState",
    "scale",
    "scale_by_learning_rate",
    "scale_by_sign",
    "flip_sign",
    "clip",
    "clip_by_global_norm",
    "global_norm",
    "add_decayed_weights",
    "trace",
    "zero_nans",
    "set_to_zero",
    "apply_if_finite",
]


class EmptyState(NamedTuple):
    """State of a transformation that keeps none."""


def _stateless(name: str, defaults: Any, fn) -> GradientTransformation:
    """A transformation without state: ``updates -> fn(updates, params, hparams)``."""
    defaults = _validate.scalar_hparams(defaults, name)

    def init(params):
        return EmptyState()

    def update(updates, state, params=None, hparams=None):
        check_state_type(state, EmptyState, name)
        hp = _validate.check_hparams_record(name, defaults, hparams)
        if params is not None:  # the updates flow on to params they must match (apply_updates, step_)
            check_params_match(updates, params, name)
        return fn(updates, params, hp), state

    return GradientTransformation(init, update, defaults)


def _map_state(fn, updates: Any, state_tree: Any) -> Any:
    """A per-leaf state tree: ``fn(u, s)`` where the update is a tensor, ``s`` unchanged where it is ``None``."""
    u_leaves, spec = flatten(updates)
    s_leaves = flatten(state_tree)[0]
    return unflatten(spec, [s if u is None else fn(u, s) for u, s in zip(u_leaves, s_leaves)])


def _like(scalar: Any, x: Tensor) -> Any:
    """A tensor hyperparameter in ``x``'s (real) dtype and on its device, so that a 0-d leaf is not
    promoted by a float64 hyperparameter; numbers pass as they are."""
    if not isinstance(scalar, Tensor):
        return scalar
    return scalar.to(dtype=x.real.dtype if x.is_complex() else x.dtype, device=x.device)


def _first_device(tree: Any) -> torch.device:
    for leaf in flatten(tree)[0]:
        if isinstance(leaf, Tensor):
            return leaf.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------- scaling
class ScaleHParams(NamedTuple):
    step_size: Number


def scale(step_size: Number) -> GradientTransformation:
    """``u <- step_size * u``. ``scale(-1.0)`` flips the sign (see :func:`flip_sign`)."""
    return _stateless("scale", ScaleHParams(step_size),
                      lambda u, p, hp: map_updates(lambda x: x * _like(hp.step_size, x), u))


def flip_sign() -> GradientTransformation:
    """``u <- -u``: turns a gradient into a descent direction (or a descent step into ascent)."""
    return _stateless("flip_sign", None, lambda u, p, hp: map_updates(torch.neg, u))


class ScaleByLearningRateHParams(NamedTuple):
    lr: Number


def scale_by_learning_rate(lr: Number, *, flip_sign: bool = True) -> GradientTransformation:
    """``u <- -lr * u`` (``+lr * u`` with ``flip_sign=False``): the last part of a hand-built optimizer.

    ``chain(add_decayed_weights(wd), trace(momentum, nesterov=n), scale_by_learning_rate(lr))``
    is ``torch.optim.SGD(lr=lr, momentum=momentum, weight_decay=wd, nesterov=n)`` step by step.
    The field is called ``lr`` (optax: ``learning_rate``) so that one ``lr`` schedule drives it
    and this library's optimizers alike.
    """
    _validate.check_lr(lr)
    sign = -1.0 if flip_sign else 1.0
    return _stateless("scale_by_learning_rate", ScaleByLearningRateHParams(lr),
                      lambda u, p, hp: map_updates(lambda x: x * _like(sign * hp.lr, x), u))


def scale_by_sign() -> GradientTransformation:
    """``u <- sign(u)`` (signSGD: Bernstein et al., 2018, https://arxiv.org/abs/1802.04434)."""
    return _stateless("scale_by_sign", None, lambda u, p, hp: map_updates(torch.sign, u))


def set_to_zero() -> GradientTransformation:
    """Updates of zero: the parameters it sees do not move (use it as the "frozen" part of a partition)."""
    return _stateless("set_to_zero", None, lambda u, p, hp: map_updates(torch.zeros_like, u))


# ---------------------------------------------------------------------------- clipping
class ClipHParams(NamedTuple):
    max_delta: Number


def clip(max_delta: Number) -> GradientTransformation:
    """Clamp every element to ``[-max_delta, max_delta]`` (``torch.nn.utils.clip_grad_value_``)."""

    def fn(updates, params, hp):
        return map_updates(lambda x: torch.clamp(x, -_like(hp.max_delta, x), _like(hp.max_delta, x)), updates)

    return _stateless("clip", ClipHParams(max_delta), fn)


def global_norm(updates: Any, norm_type: float = 2.0) -> Tensor:
    """The ``norm_type``-norm of all leaves as one vector (``None`` leaves skipped), as a 0-d tensor.

    Computed like ``torch.nn.utils.get_total_norm``: the norm of the per-leaf norms, on the
    device of the first leaf.
    """
    leaves = [u for u in flatten(updates)[0] if u is not None]
    if not leaves:
        return torch.tensor(0.0)
    device = leaves[0].device
    norms = [torch.linalg.vector_norm(u, norm_type).to(device) for u in leaves]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


class ClipByGlobalNormHParams(NamedTuple):
    max_norm: Number


def clip_by_global_norm(max_norm: Number, *, norm_type: float = 2.0) -> GradientTransformation:
    """Scale all updates by ``min(1, max_norm / (total_norm + 1e-6))``, as ``torch.nn.utils.clip_grad_norm_``.

    ``total_norm`` is :func:`global_norm` over every leaf (``norm_type`` may be ``inf``).
    Pascanu et al., "On the difficulty of training recurrent neural networks" (2013),
    https://arxiv.org/abs/1211.5063. The factor is applied unconditionally (it is 1 when the
    norm is small), so there is no host sync. Unlike optax, which uses ``max_norm / max(norm,
    max_norm)``, the formula is torch's: with the ``1e-6`` in the denominator the factor is
    within ``1e-6 / norm`` of optax's.
    """
    norm_type = float(norm_type)

    def fn(updates, params, hp):
        leaves = [u for u in flatten(updates)[0] if u is not None]
        if not leaves:
            return updates
        total = global_norm(updates, norm_type)
        factor = torch.clamp(hp.max_norm / (total + 1e-6), max=1.0)
        return map_updates(lambda x: x * _like(factor, x), updates)

    return _stateless("clip_by_global_norm", ClipByGlobalNormHParams(max_norm), fn)


# ---------------------------------------------------------------------------- weight decay
class AddDecayedWeightsHParams(NamedTuple):
    weight_decay: Number


def add_decayed_weights(weight_decay: Number = 0.0, mask: Any = None) -> GradientTransformation:
    """``u <- u + weight_decay * params`` (needs ``params``).

    Before an optimizer this is an L2 penalty: ``chain(add_decayed_weights(wd), adam(lr))`` is
    ``torch.optim.Adam(lr=lr, weight_decay=wd)``. ``mask`` (a bool tree or a function of the
    params, see :func:`~functional_optim.masked`) limits it to some leaves; the others pass
    through.
    """
    weight_decay = _validate.scalar_hparam(weight_decay, "add_decayed_weights hparams.weight_decay")
    _validate.check_weight_decay(weight_decay)

    def fn(updates, params, hp):
        if params is None:
            raise ValueError("add_decayed_weights.update needs params")
        wd = hp.weight_decay
        if isinstance(wd, Tensor):
            return map_updates(lambda u, p: u + _like(wd, p) * p, updates, params)
        return map_updates(lambda u, p: torch.add(u, p, alpha=wd), updates, params)

    tx = _stateless("add_decayed_weights", AddDecayedWeightsHParams(weight_decay), fn)
    return tx if mask is None else masked(tx, mask)


# ---------------------------------------------------------------------------- momentum
class TraceHParams(NamedTuple):
    decay: Number


class TraceState(NamedTuple):
    """The momentum buffer, one tensor per leaf (torch's ``momentum_buffer``)."""

    trace: Any


def trace(decay: Number, nesterov: bool = False) -> GradientTransformation:
    """Momentum: ``t <- decay * t + u``; the update is ``t`` (or ``u + decay * t`` with ``nesterov``).

    Polyak (1964); Nesterov (1983), in the form of Sutskever et al. (2013). The trace starts at
    zero, so its first value is ``u``: torch's SGD momentum buffer with ``dampening=0``.
    """
    defaults = _validate.scalar_hparams(TraceHParams(decay), "trace")

    def init(params):
        return TraceState(map_updates(torch.zeros_like, params))

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("trace", defaults, hparams)
        check_state_type(state, TraceState, "trace")
        check_state_like(updates, state.trace, "trace: state.trace")
        new_trace = _map_state(lambda u, t: t * _like(hp.decay, t) + u, updates, state.trace)
        if nesterov:
            out = map_updates(lambda u, t: u + _like(hp.decay, t) * t, updates, new_trace)
        else:
            out = map_updates(lambda u, t: t, updates, new_trace)
        return out, TraceState(new_trace)

    return GradientTransformation(init, update, defaults)


# ---------------------------------------------------------------------------- non-finite values
class ZeroNansState(NamedTuple):
    """Whether each leaf's last update had a NaN (a 0-d bool tensor per leaf)."""

    found_nan: Any


def zero_nans() -> GradientTransformation:
    """Replace NaNs by zeros and record, per leaf, whether there were any (leaves without a
    gradient keep their flag)."""

    def init(params):
        return ZeroNansState(map_updates(lambda p: torch.zeros((), dtype=torch.bool, device=p.device), params))

    def update(updates, state, params=None, hparams=None):
        check_state_type(state, ZeroNansState, "zero_nans")
        check_state_like(updates, state.found_nan, "zero_nans: state.found_nan", scalar=True)
        found = _map_state(lambda u, f: torch.isnan(u).any(), updates, state.found_nan)
        out = map_updates(lambda u: torch.where(torch.isnan(u), torch.zeros_like(u), u), updates)
        return out, ZeroNansState(found)

    return GradientTransformation(init, update, None)


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`.

    ``notfinite_count``: consecutive skipped steps; ``last_finite``: whether the last gradient
    was finite; ``total_notfinite``: steps skipped so far (0-d int32 tensors / bool);
    ``inner_state``: the wrapped transformation's state, unchanged by skipped steps.
    """

    notfinite_count: Tensor
    last_finite: Tensor
    total_notfinite: Tensor
    inner_state: Any


def all_finite(updates: Any) -> Tensor:
    """0-d bool tensor: every element of every leaf is finite (``None`` leaves ignored)."""
    leaves = [u for u in flatten(updates)[0] if u is not None]
    if not leaves:
        return torch.tensor(True)
    device = leaves[0].device
    return torch.stack([torch.isfinite(u).all().to(device) for u in leaves]).all()


def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: Optional[int] = None
                    ) -> GradientTransformation:
    """Skip the whole step when any gradient element is NaN or infinite.

    On a skipped step the updates are zeros (parameters do not move), ``inner``'s state is
    returned unchanged and the counters in :class:`ApplyIfFiniteState` go up. After more than
    ``max_consecutive_errors`` consecutive bad steps the update is applied anyway (as optax);
    ``None`` (the default, where optax requires a number) means never.

    The inner update is computed every step and selected with ``torch.where`` on a 0-d flag:
    no host sync and no data-dependent Python branch, so it compiles with ``fullgraph=True``.
    This is the functional counterpart of ``torch.amp.GradScaler`` skipping ``optimizer.step()``.
    """

    def init(params):
        device = _first_device(params)
        zero = torch.zeros((), dtype=torch.int32, device=device)
        return ApplyIfFiniteState(zero, torch.ones((), dtype=torch.bool, device=device), zero.clone(),
                                  inner.init(params))

    def update(updates, state, params=None, hparams=None):
        check_state_type(state, ApplyIfFiniteState, "apply_if_finite")
        check_counters("apply_if_finite", state, ("notfinite_count", "last_finite", "total_notfinite"))
        device = state.notfinite_count.device
        finite = all_finite(updates).to(device)
        count = torch.where(finite, torch.zeros_like(state.notfinite_count), state.notfinite_count + 1)
        apply = finite if max_consecutive_errors is None else finite | (count > max_consecutive_errors)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, hparams)
        new_updates = map_updates(lambda u: torch.where(apply.to(u.device), u, torch.zeros_like(u)), new_updates)
        total = torch.where(finite, state.total_notfinite, state.total_notfinite + 1)
        return new_updates, ApplyIfFiniteState(count, finite, total, select_tree(apply, new_inner, state.inner_state))

    return GradientTransformation(init, update, inner.hparams)

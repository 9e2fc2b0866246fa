"""Sophia with a Hutchinson estimate of the Hessian diagonal (SophiaH).

Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training" (2023), https://arxiv.org/abs/2305.14342. Reference implementation for the numbers:
``pytorch_optimizer.SophiaH`` (tests compare step by step).

The optimizer is split into pure pieces, so that the second-order part stays composable:

* :func:`hutchinson_probes` draws the random vectors ``z`` (Gaussian or Rademacher), in the
  reference's order, from the global generator or a given ``torch.Generator``;
* :func:`hutchinson_hessian_diag` computes the gradient and the estimate
  ``mean_i z_i * (H z_i)`` of the Hessian diagonal of a loss function with ``torch.func``
  (a vector-Jacobian product of the gradient: reverse over reverse, the same products as
  ``torch.autograd.grad(grads, params, grad_outputs=z)`` on ``create_graph=True`` gradients);
* :func:`sophia_set_hessian` hands an estimate to the optimizer's state (pure: a new state);
* :func:`scale_by_sophia` is the update: it folds a pending estimate into the EMA of the
  Hessian diagonal and returns the clipped, preconditioned momentum;
* :func:`sophia_h` is the alias with ``pytorch_optimizer``'s weight-decay variants.

A training loop estimates the Hessian every ``k`` steps (the reference's ``update_period``) and
otherwise takes plain gradients; the update itself has no Python control flow on tensor values.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _validate
from ._moments import check_betas_range, check_non_negative, decayed_chain, first_device, leafwise, lerp, zero_count
from .base import GradientTransformation
from .combine import map_updates, tree_get
from .transforms import _like
from .tree import check_counters, check_params_match, check_state_like, check_state_type, flatten, leaf_paths, unflatten

Number = Union[float, Tensor]

__all__ = [
    "ScaleBySophiaHParams",
    "ScaleBySophiaState",
    "scale_by_sophia",
    "sophia_set_hessian",
    "sophia_h",
    "hutchinson_probes",
    "hutchinson_hessian_diag",
    "combine_hutchinson_samples",
    "check_hutchinson_args",
]

HUTCHINSON_DISTRIBUTIONS = ("gaussian", "rademacher")


class ScaleBySophiaHParams(NamedTuple):
    """``b1``: decay of the gradient momentum; ``b2``: decay of the EMA of the Hessian-diagonal
    estimates; ``eps``: floor of that EMA; ``clip_threshold``: bound of each entry of the update
    (``pytorch_optimizer.SophiaH``'s ``p``)."""

    b1: Number = 0.96
    b2: Number = 0.99
    eps: Number = 1e-12
    clip_threshold: Number = 1e-2


class ScaleBySophiaState(NamedTuple):
    """``count``: updates so far (0-d int32, shared by the leaves); ``momentum``: EMA of the
    gradients; ``hessian_moment``: EMA of the Hessian-diagonal estimates; ``hessian``: the latest
    estimate handed over by :func:`sophia_set_hessian` (``pytorch_optimizer``'s ``hessian``
    state); ``hessian_pending``: 0-d bool, true while that estimate waits to be folded into
    ``hessian_moment`` by the next update."""

    count: Tensor
    momentum: Any
    hessian_moment: Any
    hessian: Any
    hessian_pending: Tensor


def _refuse_complex(name: str, updates: Any) -> None:
    leaves = flatten(updates)[0]
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Tensor) and leaf.is_complex():
            raise ValueError(f"{name}: the leaf at {leaf_paths(updates)[i]} is complex; the Hessian-diagonal "
                             f"estimate is defined for real parameters (pytorch_optimizer.SophiaH refuses them too)")


def scale_by_sophia(b1: Number = 0.96, b2: Number = 0.99, eps: Number = 1e-12,
                    clip_threshold: Number = 1e-2) -> GradientTransformation:
    r"""Rescale updates by Sophia's clipped diagonal preconditioning (as ``pytorch_optimizer.SophiaH``).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        h_t = \begin{cases} \beta_2 h_{t-1} + (1-\beta_2)\hat h & \text{a new estimate } \hat h
              \text{ is pending} \\ h_{t-1} & \text{otherwise} \end{cases} \\
        u_t = \mathrm{clip}\big(m_t / \max(h_t, \epsilon), -\rho, \rho\big)

    with :math:`\rho` = ``clip_threshold`` (both EMAs as ``torch.lerp``, no bias correction).
    Liu et al. (2023), https://arxiv.org/abs/2305.14342, write the update as
    :math:`\mathrm{clip}(m_t / \max(\gamma h_t, \epsilon), 1)`; since
    :math:`\mathrm{clip}(x/\gamma, 1) = \mathrm{clip}(x, \gamma)/\gamma`, the paper's step with
    learning rate :math:`\eta` is this one with ``clip_threshold`` :math:`=\gamma`, ``eps``
    :math:`=\epsilon/\gamma` and learning rate :math:`\eta/\gamma`. A negative estimate is floored
    at ``eps``, so its entry of the update is clipped to :math:`\pm\rho` (a sign step).

    The estimate :math:`\hat h` enters through the state: ``state =
    sophia_set_hessian(state, h_hat)`` before ``update`` (every ``k`` steps, see
    :func:`hutchinson_hessian_diag`); ``update`` folds it in (a ``torch.where`` on the 0-d
    ``hessian_pending`` flag, so a compiled update is one graph whichever steps have estimates)
    and clears the flag. As in the reference, a leaf without a gradient at a step keeps its
    state (its pending estimate is not folded later), and a leaf whose first gradient comes
    before any estimate divides by ``eps`` (a sign step of size :math:`\rho`).

    Example::

        tx = fo.chain(fo.scale_by_sophia(), fo.scale_by_learning_rate(6e-2))
    """
    defaults = _validate.scalar_hparams(ScaleBySophiaHParams(b1, b2, eps, clip_threshold), "scale_by_sophia")
    check_betas_range((b1, b2), ("beta1", "beta2"))
    check_non_negative(eps, "eps")
    check_non_negative(clip_threshold, "clip_threshold")

    def init(params):
        return ScaleBySophiaState(zero_count(params), map_updates(torch.zeros_like, params),
                                  map_updates(torch.zeros_like, params), map_updates(torch.zeros_like, params),
                                  torch.zeros((), dtype=torch.bool, device=first_device(params)))

    def update(updates, state, params=None, hparams=None):
        hp = _validate.check_hparams_record("scale_by_sophia", defaults, hparams)
        check_state_type(state, ScaleBySophiaState, "scale_by_sophia")
        check_counters("scale_by_sophia", state, ("count", "hessian_pending"))
        for field in ("momentum", "hessian_moment", "hessian"):
            check_state_like(updates, getattr(state, field), f"scale_by_sophia: state.{field}")
        _refuse_complex("scale_by_sophia", updates)
        pending = state.hessian_pending

        def leaf(g, m, h_ema, h_new):
            m = lerp(m, g, 1.0 - hp.b1)
            h_ema = torch.where(pending.to(g.device), lerp(h_ema, h_new, 1.0 - hp.b2), h_ema)
            bound = _like(hp.clip_threshold, g)
            u = torch.clamp(m / torch.clamp_min(h_ema, _like(hp.eps, h_ema)), -bound, bound)
            return u, m, h_ema, h_new

        out, momentum, h_ema, h_new = leafwise(leaf, updates, state.momentum, state.hessian_moment, state.hessian,
                                               n_out=4)
        return out, ScaleBySophiaState(state.count + 1, momentum, h_ema, h_new, torch.zeros_like(pending))

    return GradientTransformation(init, update, defaults)


def sophia_set_hessian(state: Any, hessian_diag: Any) -> Any:
    """A copy of ``state`` whose Sophia part holds the estimate ``hessian_diag``, pending.

    ``state`` is the state of :func:`scale_by_sophia` or of any composition holding exactly one
    (``sophia_h``'s named chain ...; in a ``partition`` with several, call it on each part's
    state). ``hessian_diag`` has the params' structure; a ``None`` leaf keeps that leaf's previous
    estimate (which the next update folds in again if the leaf has a gradient: give an estimate
    for every leaf that has one). The next ``update`` folds the estimates into the EMA of the
    Hessian diagonal, ``h <- b2 h + (1 - b2) h_hat``. Pure: nothing is mutated; shapes, dtypes
    and devices are checked against the state, naming the path.
    """
    inner = tree_get(state, ScaleBySophiaState)
    check_state_like(inner.momentum, hessian_diag, "sophia_set_hessian: hessian_diag")
    merged = map_updates(lambda old, new: old if new is None else new, inner.hessian, hessian_diag)
    new = inner._replace(hessian=merged, hessian_pending=torch.ones_like(inner.hessian_pending))
    return _replace_node(state, inner, new)


def _replace_node(tree: Any, old: Any, new: Any) -> Any:
    """``tree`` with the node ``old`` (found by identity) replaced by ``new``; every other node is
    the very same object where nothing below it changed (a compiled step guards on constant leaves)."""
    if tree is old:
        return new
    if isinstance(tree, Mapping):
        items = {k: _replace_node(v, old, new) for k, v in tree.items()}
        if all(items[k] is v for k, v in tree.items()):
            return tree
        return items if type(tree) is dict else type(tree)(items)
    if isinstance(tree, (tuple, list)):
        items = [_replace_node(v, old, new) for v in tree]
        if all(a is b for a, b in zip(items, tree)):
            return tree
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree


def sophia_h(lr: Number = 6e-2, b1: Number = 0.96, b2: Number = 0.99, weight_decay: Number = 0.0,
             clip_threshold: Number = 1e-2, eps: Number = 1e-12, *, weight_decouple: bool = True,
             fixed_decay: bool = False, maximize: bool = False, mask: Any = None) -> GradientTransformation:
    """SophiaH as a composition (defaults and flags of ``pytorch_optimizer.SophiaH``).

    ``named_chain(("sophia", scale_by_sophia(b1, b2, eps, clip_threshold)), ("decay",
    add_decayed_weights(weight_decay)), ("lr", scale_by_learning_rate(lr)))`` with the default
    ``weight_decouple=True`` (``p - lr (u + wd p)``, the reference's ``p *= 1 - lr wd``);
    ``fixed_decay=True`` without the ``lr`` factor; ``weight_decouple=False`` adds the decay to
    the gradient before the momentum (the Hessian estimate is of the loss alone, as in the
    reference, which estimates it before the decay); ``maximize`` flips the gradient first (the
    estimate is not flipped, as in the reference).

    The Hessian-diagonal estimate enters with :func:`sophia_set_hessian` (every
    ``update_period`` steps in the reference, which is the loop's choice here)::

        tx = fo.sophia_h(lr=6e-2, weight_decay=0.1)
        state = tx.init(params)
        for t in range(steps):
            if t % 10 == 0:
                probes = fo.hutchinson_probes(params)
                grads, h_hat = fo.hutchinson_hessian_diag(loss_fn, params, probes, batch)
                state = fo.sophia_set_hessian(state, h_hat)
            else:
                grads = torch.func.grad(loss_fn)(params, batch)
            updates, state = tx.update(grads, state, params)
            params = fo.apply_updates(params, updates)

    Equal to ``pytorch_optimizer.SophiaH`` step by step up to rounding (the learning rate
    multiplies the update instead of entering ``add(alpha=-lr)``; decoupled decay as
    ``p - lr*wd*p``).
    """
    _validate.check_lr(lr)
    check_non_negative(weight_decay, "weight_decay")
    block = scale_by_sophia(b1, b2, eps, clip_threshold)
    return decayed_chain("sophia", block, lr, weight_decay, weight_decouple=weight_decouple, fixed_decay=fixed_decay,
                         maximize=maximize, mask=mask)


# ---------------------------------------------------------------------------- Hutchinson's estimator
def _draw(p: Tensor, distribution: str, generator: Optional[torch.Generator]) -> Tensor:
    """One probe like ``p``: the reference's ``torch.randn_like(p)`` or
    ``torch.randint_like(p, 0, 2) * 2.0 - 1.0``, written as the in-place fills they are made of
    (``p``'s strides kept, filled in memory order), so a ``generator`` gives the numbers the
    global generator would."""
    if distribution == "rademacher":
        return torch.empty_like(p).random_(0, 2, generator=generator) * 2.0 - 1.0
    return torch.empty_like(p).normal_(generator=generator)


def check_hutchinson_args(num_samples: int, distribution: str) -> None:
    """``pytorch_optimizer``'s checks of ``num_samples`` and ``hessian_distribution`` (its messages)."""
    if num_samples <= 0:
        raise ValueError("num_samples must be positive")
    if distribution not in HUTCHINSON_DISTRIBUTIONS:
        opts = " or ".join(f"'{d}'" for d in HUTCHINSON_DISTRIBUTIONS)
        raise ValueError(f"hessian_distribution {distribution} must be one of ({opts})")


def hutchinson_probes(params: Any, num_samples: int = 1, distribution: str = "gaussian",
                      generator: Optional[torch.Generator] = None) -> list:
    """``num_samples`` trees of random vectors with the structure of ``params``.

    ``distribution``: ``"gaussian"`` (standard normal) or ``"rademacher"`` (``±1``). The numbers
    are drawn sample by sample, leaf by leaf in tree order (``None`` leaves stay ``None``), from
    ``generator`` or, without one, from the global generator of each leaf's device, exactly as
    ``pytorch_optimizer``'s ``compute_hutchinson_hessian`` draws them: the same seed gives the
    same probes, so estimates can be compared with the reference's. Drawing them outside
    :func:`hutchinson_hessian_diag` keeps that function deterministic (compile, vmap). The
    reference draws for the parameters that have a gradient only: to follow it at a step where
    some have none, pass ``params`` with ``None`` at those leaves.
    """
    check_hutchinson_args(num_samples, distribution)
    return [map_updates(lambda p: _draw(p, distribution, generator), params) for _ in range(num_samples)]


def combine_hutchinson_samples(hvps: Sequence[Any], probes: Sequence[Any]) -> Any:
    """``sum_i z_i * (H z_i) / n`` leaf by leaf (``n = len(probes)``), accumulated from zeros with
    ``addcmul(value=1/n)`` in the reference's order (the same rounding); ``None`` leaves stay ``None``."""
    if len(hvps) != len(probes) or not probes:
        raise ValueError(f"combine_hutchinson_samples: {len(hvps)} products for {len(probes)} probes")
    for k, z in enumerate(probes[1:], 1):
        check_params_match(z, probes[0], "combine_hutchinson_samples", f"probes[{k}]", same_dtype=True)
    for k, hz in enumerate(hvps):
        check_params_match(hz, probes[0], "combine_hutchinson_samples", f"hvps[{k}]", same_dtype=True)
    weight = 1.0 / len(probes)
    leaves, spec = flatten(probes[0])
    hvp_leaves = [flatten(h)[0] for h in hvps]
    probe_leaves = [flatten(z)[0] for z in probes]
    out = []
    for j, first in enumerate(leaves):
        if first is None:
            out.append(None)
            continue
        acc = torch.zeros_like(first)
        for hz, z in zip(hvp_leaves, probe_leaves):
            acc = torch.addcmul(acc, hz[j], z[j], value=weight)
        out.append(acc)
    return unflatten(spec, out)


def hutchinson_hessian_diag(loss_fn: Callable[..., Tensor], params: Any, probes: Sequence[Any], *args: Any,
                            has_aux: bool = False) -> tuple:
    r"""The gradient of ``loss_fn(params, *args)`` and Hutchinson's estimate of its Hessian diagonal.

    .. math:: \hat h = \frac1n \sum_{i=1}^n z_i \odot (H z_i), \qquad
              \mathbb E[\hat h] = \mathrm{diag}(H) \text{ for } \mathbb E[z z^\top] = I

    (Hutchinson, 1989; Sophia's estimator, Liu et al., 2023). ``probes``: the ``z_i``, trees with
    the structure of ``params`` (from :func:`hutchinson_probes`). :math:`Hz` is the
    vector-Jacobian product of ``torch.func.grad(loss_fn)`` (reverse over reverse: the products
    ``torch.autograd.grad(grads, params, grad_outputs=z)`` computes on ``create_graph=True``
    gradients, so the estimate equals ``pytorch_optimizer.SophiaH``'s given the same probes).
    A parameter on which the gradient does not depend gets a zero estimate. A ``None`` probe leaf
    (all samples alike) gives a ``None`` estimate for that leaf and a zero cotangent, which is
    the reference leaving a parameter without gradient out of its estimate.

    Returns ``(grads, h_hat)``, or ``(grads, h_hat, aux)`` with ``has_aux=True`` (``loss_fn``
    then returns ``(loss, aux)``). Pure, built from ``torch.func``: it composes with
    ``torch.func.vmap`` (an ensemble) and with autograd through it (meta-learning).
    """
    if not probes:
        raise ValueError("hutchinson_hessian_diag needs at least one probe")
    skipped = [z is None for z in flatten(probes[0])[0]]
    for i, z in enumerate(probes):
        check_state_like(params, z, f"hutchinson_hessian_diag: probes[{i}]")
        if [leaf is None for leaf in flatten(z)[0]] != skipped:
            raise ValueError(f"hutchinson_hessian_diag: probes[{i}] has None leaves where probes[0] has not")

    def grad_fn(p):
        return torch.func.grad(loss_fn, has_aux=has_aux)(p, *args)

    if has_aux:
        grads, vjp_fn, aux = torch.func.vjp(grad_fn, params, has_aux=True)
    else:
        grads, vjp_fn = torch.func.vjp(grad_fn, params)
    # a None probe leaf contributes a zero cotangent (the reference leaves that parameter out)
    hvps = [vjp_fn(map_updates(lambda g, zi: torch.zeros_like(g) if zi is None else zi, grads, z))[0]
            for z in probes]
    h_hat = combine_hutchinson_samples(hvps, probes)
    return (grads, h_hat, aux) if has_aux else (grads, h_hat)

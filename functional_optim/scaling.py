"""optax's scaling building blocks: ``scale_by_adam``, ``scale_by_rms``, ``scale_by_trust_ratio`` ...

Each factory returns a small :class:`~functional_optim.base.GradientTransformation` with
optax's name and formula, to be put together with :func:`functional_optim.chain`::

    adam  = chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), scale_by_learning_rate(1e-3))
    lamb  = chain(scale_by_adam(eps=1e-6), add_decayed_weights(0.01), scale_by_trust_ratio(),
                  scale_by_learning_rate(1e-3))
    muon_like = chain(trace(0.95, nesterov=True), orthogonalize(), scale_by_learning_rate(0.02))

Conventions, the same as :mod:`functional_optim.transforms`:

* numbers live in an hparams record (``ScaleByAdamHParams(b1, b2, eps, eps_root)`` ...), given at
  call time as ``update(grads, state, params, hparams)``; a field may be a Python number or a 0-d
  tensor, and a tensor that changes value never recompiles a compiled step. What changes the
  state's structure (``initial_scale``, ``nesterov``, ``bias_correction``) is fixed when the
  transformation is made;
* a ``None`` gradient leaf gives a ``None`` update and leaves that leaf's state as it is;
* the state is checked against the updates (structure, shapes, dtypes, devices), errors naming
  the field and the path;
* ``update`` is pure (nothing is mutated) and reads nothing back to the host, so it runs under
  ``torch.compile(fullgraph=True)``, ``torch.func.vmap`` and autograd.

Moment dtypes (optax's ``mu_dtype``): ``scale_by_adam(mu_dtype=, nu_dtype=)``,
``scale_by_rms(nu_dtype=)``, ``scale_by_stddev(mu_dtype=, nu_dtype=)`` and
``ema(accumulator_dtype=)`` keep that moment in the given floating dtype (``None``, the default:
the parameter's dtype, the code path as it always was). A step reads the stored moments back in
the wider of their dtype and the gradient's (``torch.promote_types``: float32 math for float32
gradients and ``bfloat16`` moments), computes the new moments and the update there from those
unrounded values, and stores the new moments rounded to nearest in their dtype; so the update
comes out in that wider dtype. ``init`` and ``update`` refuse complex leaves when a moment dtype
is set (a real dtype cannot hold them), and the state check accepts exactly that dtype, naming
the field and path otherwise.

One deliberate difference from optax: the moment estimators (``scale_by_adam``, ``scale_by_rms``,
``scale_by_stddev``, ``ema``) keep a step count *per leaf*, which does not advance for a leaf whose
gradient is ``None`` (torch's per-parameter ``step``). optax keeps one count for the whole tree;
the two agree whenever every leaf has a gradient at every step. ``scale_by_schedule`` and
``add_noise`` keep one count (a schedule is a function of the training step).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _validate
from ._kernels.muon import NS_COEFFICIENTS, NS_EPS, NS_STEPS, check_newton_schulz_args, newton_schulz
from .base import GradientTransformation
from .combine import map_updates
from .rounding import _mix32
from .transforms import _first_device, _like, _stateless
from .tree import check_counters, check_state_like, check_state_type, flatten, lazy_paths, unflatten

Number = Union[float, Tensor]

__all__ = [
    "ScaleByAdamHParams", "ScaleByAdamState", "scale_by_adam",
    "ScaleByRmsHParams", "ScaleByRmsState", "scale_by_rms",
    "ScaleByStddevHParams", "ScaleByStddevState", "scale_by_stddev",
    "ScaleByTrustRatioHParams", "scale_by_trust_ratio",
    "ScaleByRssHParams", "ScaleByRssState", "scale_by_rss",
    "ScaleByScheduleState", "scale_by_schedule",
    "EmaHParams", "EmaState", "ema",
    "centralize",
    "AddNoiseHParams", "AddNoiseState", "add_noise",
    "ScaleByParamBlockHParams", "scale_by_param_block_norm", "scale_by_param_block_rms",
    "ScaleByPolyakHParams", "scale_by_polyak",
    "OrthogonalizeHParams", "orthogonalize",
    "safe_norm",
]


# ---------------------------------------------------------------------------- helpers
def _leafwise(fn: Callable, updates: Any, *states: Any) -> tuple:
    """``fn(u, *s) -> (out, *new_s)`` on every leaf; where ``u`` is ``None`` the output leaf is
    ``None`` and every state leaf stays as it is. Returns ``(out_tree, *new_state_trees)``."""
    u_leaves, spec = flatten(updates)
    s_leaves = [flatten(s)[0] for s in states]
    outs: list = [[] for _ in range(1 + len(states))]
    for i, u in enumerate(u_leaves):
        olds = [s[i] for s in s_leaves]
        new = (None, *olds) if u is None else fn(u, *olds)
        for bucket, value in zip(outs, new):
            bucket.append(value)
    return tuple(unflatten(spec, leaves) for leaves in outs)


def _counts(params: Any) -> Any:
    """A 0-d int32 step count per leaf, on the leaf's device."""
    return map_updates(lambda p: torch.zeros((), dtype=torch.int32, device=p.device), params)


def _bias_correction(decay: Any, count: Tensor, like: Tensor) -> Tensor:
    """``1 - decay ** count``, computed in float64 (float32 on MPS) as torch computes it in Python
    floats, then rounded to ``like``'s (real) dtype, as torch rounds a Python scalar into an op;
    so the update keeps the leaf's dtype (a 0-d leaf included)."""
    t = count.to(torch.float32 if count.device.type == "mps" else torch.float64)
    bc = 1 - torch.pow(decay.to(t.dtype) if isinstance(decay, Tensor) else decay, t)
    return bc.to(like.real.dtype if like.is_complex() else like.dtype)


def _check_moment_dtype(name: str, field: str, dtype: Any) -> Optional[torch.dtype]:
    """``None`` or a real floating ``torch.dtype`` (a moment's storage dtype), else ``TypeError``."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{name}: {field} must be a real floating torch.dtype or None, got {dtype!r}")
    return dtype


def _refuse_complex(tree: Any, what: str) -> None:
    """``ValueError`` naming the first complex leaf: a moment kept in a real dtype cannot hold it."""
    paths = lazy_paths(tree)
    for i, leaf in enumerate(flatten(tree)[0]):
        if isinstance(leaf, Tensor) and leaf.is_complex():
            raise ValueError(f"{what} is a real dtype; the complex leaf at {paths()[i]} needs it to be None")


def _moment(params: Any, dtype: Optional[torch.dtype], what: str, fill: Optional[float] = None) -> Any:
    """A moment per leaf, zeros or every element ``fill``, in ``dtype`` (``None``: the leaf's own)."""
    if dtype is not None:
        _refuse_complex(params, what)
    if fill is None:
        return map_updates(lambda p: torch.zeros_like(p, dtype=dtype), params)
    return map_updates(lambda p: torch.full_like(p, fill, dtype=dtype), params)


def _check_moments(name: str, updates: Any, state: Any, dtypes: dict) -> None:
    """``check_state_like`` of each moment ``state.<field>`` against the updates, in the dtype that
    ``dtypes`` (``{field: (argument name, dtype)}``) gives it; complex updates are refused where a
    dtype is set."""
    for field, (arg, dtype) in dtypes.items():
        if dtype is not None:
            _refuse_complex(updates, f"{name}: {arg}")
        check_state_like(updates, getattr(state, field), f"{name}: state.{field}", dtype=dtype)


def _work_dtype(g: Tensor, *moments: Tensor) -> torch.dtype:
    """The dtype a step computes in: the widest of the gradient's and the stored moments'."""
    dtype = g.dtype
    for m in moments:
        dtype = torch.promote_types(dtype, m.dtype)
    return dtype


def _sq(x: Tensor) -> Tensor:
    """``|x|^2`` (the real square of a complex element)."""
    return (x * x.conj()).real if x.is_complex() else x * x


def _hp(name: str, defaults: Any, hparams: Any) -> Any:
    return _validate.check_hparams_record(name, defaults, hparams)


def _needs_params(name: str, params: Any) -> None:
    if params is None:
        raise ValueError(f"{name}.update needs params")


def safe_norm(x: Tensor, min_norm: Number = 0.0) -> Tensor:
    """``max(||x||_2, min_norm)`` (optax's ``numerics.safe_norm``: ``min_norm`` where the norm is
    at most ``min_norm``), a 0-d tensor in ``x``'s (real) dtype."""
    norm = torch.linalg.vector_norm(x)
    return torch.where(norm <= _like(min_norm, norm), _like(min_norm, norm) * torch.ones_like(norm), norm)


def _safe_rms(x: Tensor, min_rms: Number) -> Tensor:
    rms = torch.sqrt(torch.mean(_sq(x)))
    return torch.where(rms <= _like(min_rms, rms), _like(min_rms, rms) * torch.ones_like(rms), rms)


# ---------------------------------------------------------------------------- Adam
class ScaleByAdamHParams(NamedTuple):
    b1: Number = 0.9
    b2: Number = 0.999
    eps: Number = 1e-8
    eps_root: Number = 0.0


class ScaleByAdamState(NamedTuple):
    """``count``: 0-d int32 steps per leaf; ``mu``, ``nu``: first and second moments per leaf."""

    count: Any
    mu: Any
    nu: Any


def scale_by_adam(b1: Number = 0.9, b2: Number = 0.999, eps: Number = 1e-8, eps_root: Number = 0.0, *,
                  nesterov: bool = False, bias_correction: bool = True, mu_dtype: Optional[torch.dtype] = None,
                  nu_dtype: Optional[torch.dtype] = None) -> GradientTransformation:
    """Rescale updates by Adam's moment estimates (Kingma & Ba, 2014, https://arxiv.org/abs/1412.6980).

    With ``t`` the leaf's step count (after this step)::

        mu    <- b1 mu + (1 - b1) g             nu <- b2 nu + (1 - b2) |g|^2
        mu^   =  mu / (1 - b1^t)                nu^ = nu / (1 - b2^t)
        u     =  mu^ / (sqrt(nu^ + eps_root) + eps)

    ``nesterov=True`` (Dozat, 2016, NAdam) uses ``mu^ = b1 mu / (1 - b1^(t+1)) + (1 - b1) g /
    (1 - b1^t)``, as optax. ``bias_correction=False`` (an extension of optax, used by
    pytorch-optimizer's LAMB) uses ``mu`` and ``nu`` as they are (with ``nesterov``,
    ``b1 mu + (1 - b1) g`` for ``mu^``).

    ``chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))`` is ``torch.optim.Adam(lr=lr,
    betas=(b1, b2), eps=eps)`` (to rounding; torch divides ``sqrt(nu)`` by ``sqrt(1 - b2^t)``
    rather than taking the root of ``nu^``), ``None`` gradients included.

    ``mu_dtype`` / ``nu_dtype`` (e.g. ``torch.bfloat16``; ``None``: the parameter's dtype) store
    the moments in that dtype, as optax's ``mu_dtype`` (optax has none for ``nu``): the step runs
    in the wider of the gradient's and the moments' dtypes and rounds the new moments to nearest
    when it stores them (see the module docstring).

    Example::

        tx = fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(1e-3))
        updates, state = tx.update(grads, tx.init(params), params)
        half_state = fo.scale_by_adam(mu_dtype=torch.bfloat16, nu_dtype=torch.bfloat16)  # 4 bytes/param
    """
    defaults = _validate.scalar_hparams(ScaleByAdamHParams(b1, b2, eps, eps_root), "scale_by_adam")
    _validate.check_betas((b1, b2))
    _validate.check_eps(eps)
    mu_dtype = _check_moment_dtype("scale_by_adam", "mu_dtype", mu_dtype)
    nu_dtype = _check_moment_dtype("scale_by_adam", "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByAdamState(_counts(params), _moment(params, mu_dtype, "scale_by_adam: mu_dtype"),
                                _moment(params, nu_dtype, "scale_by_adam: nu_dtype"))

    def update(updates, state, params=None, hparams=None):
        hp = _hp("scale_by_adam", defaults, hparams)
        check_state_type(state, ScaleByAdamState, "scale_by_adam")
        check_state_like(updates, state.count, "scale_by_adam: state.count", scalar=True)
        _check_moments("scale_by_adam", updates, state, {"mu": ("mu_dtype", mu_dtype), "nu": ("nu_dtype", nu_dtype)})

        def leaf(g, count, mu_stored, nu_stored):
            work = _work_dtype(g, mu_stored, nu_stored)
            g, mu, nu = g.to(work), mu_stored.to(work), nu_stored.to(work)
            c1, c2 = _like(hp.b1, g), _like(hp.b2, g)
            mu = mu * c1 + g * (1 - c1)
            nu = nu * c2 + _sq(g).to(nu.dtype) * (1 - c2)
            count = count + 1
            if bias_correction:
                if nesterov:
                    mu_hat = (c1 * mu) / _bias_correction(hp.b1, count + 1, g) + ((1 - c1) * g) / _bias_correction(
                        hp.b1, count, g)
                else:
                    mu_hat = mu / _bias_correction(hp.b1, count, g)
                nu_hat = nu / _bias_correction(hp.b2, count, g)
            else:
                mu_hat = c1 * mu + (1 - c1) * g if nesterov else mu
                nu_hat = nu
            out = mu_hat / (torch.sqrt(nu_hat + _like(hp.eps_root, g)) + _like(hp.eps, g))
            return out, count, mu.to(mu_stored.dtype), nu.to(nu_stored.dtype)

        out, count, mu, nu = _leafwise(leaf, updates, state.count, state.mu, state.nu)
        return out, ScaleByAdamState(count, mu, nu)

    return GradientTransformation(init, update, defaults)


# ---------------------------------------------------------------------------- RMS / stddev
class ScaleByRmsHParams(NamedTuple):
    decay: Number = 0.9
    eps: Number = 1e-8


class ScaleByRmsState(NamedTuple):
    """``count``: 0-d int32 steps per leaf; ``nu``: the EMA of ``|g|^2`` per leaf."""

    count: Any
    nu: Any


def _root(nu: Tensor, eps: Any, eps_in_sqrt: bool) -> Tensor:
    """``1 / sqrt(nu + eps)`` or ``1 / (sqrt(nu) + eps)``."""
    return torch.rsqrt(nu + eps) if eps_in_sqrt else 1 / (torch.sqrt(nu) + eps)


def scale_by_rms(decay: Number = 0.9, eps: Number = 1e-8, initial_scale: float = 0.0, *, eps_in_sqrt: bool = True,
                 bias_correction: bool = False, nu_dtype: Optional[torch.dtype] = None) -> GradientTransformation:
    """Rescale updates by the root of an EMA of squared gradients (RMSProp: Hinton, 2012, lecture 6.5)::

        nu <- decay nu + (1 - decay) |g|^2      (nu starts at initial_scale)
        nu^ = nu / (1 - decay^t)  if bias_correction  else nu
        u   = g / sqrt(nu^ + eps)  if eps_in_sqrt  else  g / (sqrt(nu^) + eps)

    optax's defaults (``eps`` inside the root). ``chain(scale_by_rms(alpha, eps, eps_in_sqrt=False),
    scale_by_learning_rate(lr))`` is ``torch.optim.RMSprop(lr=lr, alpha=alpha, eps=eps)``.
    ``nu_dtype`` stores ``nu`` in that dtype (``None``: the parameter's; see the module docstring).

    Example: ``fo.chain(fo.scale_by_rms(0.99), fo.scale_by_learning_rate(1e-2))``.
    """
    defaults = _validate.scalar_hparams(ScaleByRmsHParams(decay, eps), "scale_by_rms")
    initial_scale = float(initial_scale)
    nu_dtype = _check_moment_dtype("scale_by_rms", "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByRmsState(_counts(params), _moment(params, nu_dtype, "scale_by_rms: nu_dtype", initial_scale))

    def update(updates, state, params=None, hparams=None):
        hp = _hp("scale_by_rms", defaults, hparams)
        check_state_type(state, ScaleByRmsState, "scale_by_rms")
        check_state_like(updates, state.count, "scale_by_rms: state.count", scalar=True)
        _check_moments("scale_by_rms", updates, state, {"nu": ("nu_dtype", nu_dtype)})

        def leaf(g, count, nu_stored):
            work = _work_dtype(g, nu_stored)
            g, nu = g.to(work), nu_stored.to(work)
            d = _like(hp.decay, g)
            nu = nu * d + _sq(g).to(nu.dtype) * (1 - d)
            count = count + 1
            nu_hat = nu / _bias_correction(hp.decay, count, g) if bias_correction else nu
            return g * _root(nu_hat, _like(hp.eps, g), eps_in_sqrt), count, nu.to(nu_stored.dtype)

        out, count, nu = _leafwise(leaf, updates, state.count, state.nu)
        return out, ScaleByRmsState(count, nu)

    return GradientTransformation(init, update, defaults)


class ScaleByStddevHParams(NamedTuple):
    decay: Number = 0.9
    eps: Number = 1e-8


class ScaleByStddevState(NamedTuple):
    """``count``: 0-d int32 steps per leaf; ``mu``, ``nu``: EMAs of ``g`` and ``|g|^2`` per leaf."""

    count: Any
    mu: Any
    nu: Any


def scale_by_stddev(decay: Number = 0.9, eps: Number = 1e-8, initial_scale: float = 0.0, *,
                    eps_in_sqrt: bool = True, bias_correction: bool = False, mu_dtype: Optional[torch.dtype] = None,
                    nu_dtype: Optional[torch.dtype] = None) -> GradientTransformation:
    """Rescale updates by a centred second moment (centred RMSProp: Graves, 2013,
    https://arxiv.org/abs/1308.0850)::

        mu <- decay mu + (1 - decay) g          nu <- decay nu + (1 - decay) |g|^2
        (both bias-corrected by 1 - decay^t with bias_correction)
        u   = g / sqrt(nu - mu^2 + eps)  if eps_in_sqrt  else  g / (sqrt(nu - mu^2) + eps)

    ``nu`` starts at ``initial_scale``, ``mu`` at zero. ``chain(scale_by_stddev(alpha, eps,
    eps_in_sqrt=False), scale_by_learning_rate(lr))`` is ``torch.optim.RMSprop(centered=True)``.
    ``mu_dtype`` / ``nu_dtype`` store the moments in those dtypes (``None``: the parameter's; see
    the module docstring).
    """
    defaults = _validate.scalar_hparams(ScaleByStddevHParams(decay, eps), "scale_by_stddev")
    initial_scale = float(initial_scale)
    mu_dtype = _check_moment_dtype("scale_by_stddev", "mu_dtype", mu_dtype)
    nu_dtype = _check_moment_dtype("scale_by_stddev", "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByStddevState(_counts(params), _moment(params, mu_dtype, "scale_by_stddev: mu_dtype"),
                                  _moment(params, nu_dtype, "scale_by_stddev: nu_dtype", initial_scale))

    def update(updates, state, params=None, hparams=None):
        hp = _hp("scale_by_stddev", defaults, hparams)
        check_state_type(state, ScaleByStddevState, "scale_by_stddev")
        check_state_like(updates, state.count, "scale_by_stddev: state.count", scalar=True)
        _check_moments("scale_by_stddev", updates, state,
                       {"mu": ("mu_dtype", mu_dtype), "nu": ("nu_dtype", nu_dtype)})

        def leaf(g, count, mu_stored, nu_stored):
            work = _work_dtype(g, mu_stored, nu_stored)
            g, mu, nu = g.to(work), mu_stored.to(work), nu_stored.to(work)
            d = _like(hp.decay, g)
            mu = mu * d + g * (1 - d)
            nu = nu * d + _sq(g).to(nu.dtype) * (1 - d)
            count = count + 1
            if bias_correction:
                bc = _bias_correction(hp.decay, count, g)
                mu_hat, nu_hat = mu / bc, nu / bc
            else:
                mu_hat, nu_hat = mu, nu
            return (g * _root(nu_hat - _sq(mu_hat), _like(hp.eps, g), eps_in_sqrt), count, mu.to(mu_stored.dtype),
                    nu.to(nu_stored.dtype))

        out, count, mu, nu = _leafwise(leaf, updates, state.count, state.mu, state.nu)
        return out, ScaleByStddevState(count, mu, nu)

    return GradientTransformation(init, update, defaults)


# ---------------------------------------------------------------------------- trust ratio
class ScaleByTrustRatioHParams(NamedTuple):
    min_norm: Number = 0.0
    trust_coefficient: Number = 1.0
    eps: Number = 0.0
    weight_decay: Number = 0.0


def scale_by_trust_ratio(min_norm: Number = 0.0, trust_coefficient: Number = 1.0, eps: Number = 0.0, *,
                         weight_decay: Number = 0.0, max_param_norm: Optional[float] = None
                         ) -> GradientTransformation:
    """Scale each leaf's update by the ratio of its parameter's norm to the update's norm (LARS/LAMB).

    With ``||.||`` floored at ``min_norm`` (:func:`safe_norm`), ``P = ||p||`` and ``U = ||u||``::

        r = trust_coefficient * P / (U + weight_decay * P + eps)     (r = 1 where P = 0 or U + wd P = 0)
        u <- r * (u + weight_decay * p)

    With the defaults (``weight_decay=0``) this is optax's ``scale_by_trust_ratio``: the layer-wise
    trust ratio of LAMB (You et al., 2019, https://arxiv.org/abs/1904.00962) and of LARS (You et
    al., 2017, https://arxiv.org/abs/1708.03888) applied after the weight decay was added.
    Two extensions reproduce the papers' other forms (and pytorch-optimizer's LARS / LAMB):

    * ``weight_decay``: LARS's Algorithm 1, where the decay is added *after* the ratio was taken
      and enters its denominator as ``wd ||p||`` (``u`` here is the bare gradient);
    * ``max_param_norm``: LAMB's scaling function ``phi(||p||) = min(||p||, max_param_norm)``
      (pytorch-optimizer clamps at 10); ``None`` leaves the norm as it is.

    Needs ``params``. Stateless. Example: ``fo.chain(fo.scale_by_adam(eps=1e-6),
    fo.add_decayed_weights(0.01), fo.scale_by_trust_ratio(), fo.scale_by_learning_rate(1e-3))``.
    """
    defaults = _validate.scalar_hparams(ScaleByTrustRatioHParams(min_norm, trust_coefficient, eps, weight_decay),
                                        "scale_by_trust_ratio")
    max_param_norm = None if max_param_norm is None else float(max_param_norm)

    def leaf(hp, u, p):
        p_norm = safe_norm(p, hp.min_norm)
        if max_param_norm is not None:
            p_norm = torch.clamp(p_norm, max=max_param_norm)
        u_norm = safe_norm(u, hp.min_norm)
        wd = hp.weight_decay
        decayed = not (isinstance(wd, (int, float)) and wd == 0)
        denom = u_norm + _like(wd, p_norm) * p_norm if decayed else u_norm
        ratio = _like(hp.trust_coefficient, p_norm) * p_norm / (denom + _like(hp.eps, p_norm))
        ratio = torch.where((p_norm == 0) | (denom == 0), torch.ones_like(ratio), ratio)
        if decayed:
            u = u + _like(wd, p) * p
        return u * ratio.to(u.real.dtype if u.is_complex() else u.dtype)

    def fn(updates, params, hp):
        _needs_params("scale_by_trust_ratio", params)
        return map_updates(lambda u, p: leaf(hp, u, p), updates, params)

    return _stateless("scale_by_trust_ratio", defaults, fn)


# ---------------------------------------------------------------------------- RSS (Adagrad)
class ScaleByRssHParams(NamedTuple):
    eps: Number = 1e-7


class ScaleByRssState(NamedTuple):
    """``sum_of_squares``: the running sum of ``|g|^2`` per leaf."""

    sum_of_squares: Any


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: Number = 1e-7) -> GradientTransformation:
    """Rescale updates by the root of the sum of all squared gradients (Adagrad: Duchi et al., 2011,
    https://jmlr.org/papers/v12/duchi11a.html)::

        s <- s + |g|^2        (s starts at initial_accumulator_value)
        u  = g / sqrt(s + eps)  where s > 0, else 0

    optax's formula (``eps`` inside the root). Example: ``fo.chain(fo.scale_by_rss(),
    fo.scale_by_learning_rate(0.1))``.
    """
    defaults = _validate.scalar_hparams(ScaleByRssHParams(eps), "scale_by_rss")
    _validate.check_initial_accumulator_value(initial_accumulator_value)
    initial = float(initial_accumulator_value)

    def init(params):
        return ScaleByRssState(map_updates(lambda p: torch.full_like(p, initial), params))

    def update(updates, state, params=None, hparams=None):
        hp = _hp("scale_by_rss", defaults, hparams)
        check_state_type(state, ScaleByRssState, "scale_by_rss")
        check_state_like(updates, state.sum_of_squares, "scale_by_rss: state.sum_of_squares")

        def leaf(g, s):
            s = s + _sq(g).to(s.dtype)
            inv = torch.where(s > 0, torch.rsqrt(s + _like(hp.eps, g)), torch.zeros_like(s))
            return g * inv, s

        out, s = _leafwise(leaf, updates, state.sum_of_squares)
        return out, ScaleByRssState(s)

    return GradientTransformation(init, update, defaults)


# ---------------------------------------------------------------------------- schedule
class ScaleByScheduleState(NamedTuple):
    """``count``: the number of updates so far (one 0-d int32 tensor)."""

    count: Tensor


def _check_count(name: str, state: Any) -> None:
    check_counters(name, state, ("count",))


def scale_by_schedule(step_size_fn: Callable[[Tensor], Number]) -> GradientTransformation:
    """``u <- step_size_fn(count) * u``, then ``count <- count + 1`` (``count`` starts at 0).

    ``step_size_fn`` is a schedule (:mod:`functional_optim.schedules`) or any function of a 0-d
    int32 tensor written with tensor ops; under ``torch.compile`` the count is a tensor, so a step
    never recompiles as it advances. Example: ``fo.scale_by_schedule(fo.schedules.exponential_decay
    (1.0, 100, 0.5))``. (For the learning rate itself, ``inject_hyperparams`` is the usual way.)
    """
    if not callable(step_size_fn):
        raise TypeError("scale_by_schedule needs a callable step_size_fn")

    def init(params):
        return ScaleByScheduleState(torch.zeros((), dtype=torch.int32, device=_first_device(params)))

    def update(updates, state, params=None, hparams=None):
        check_state_type(state, ScaleByScheduleState, "scale_by_schedule")
        _check_count("scale_by_schedule", state)
        step_size = step_size_fn(state.count)
        out = map_updates(lambda u: u * _like(step_size, u), updates)
        return out, ScaleByScheduleState(state.count + 1)

    return GradientTransformation(init, update, None)


# ---------------------------------------------------------------------------- EMA
class EmaHParams(NamedTuple):
    decay: Number


class EmaState(NamedTuple):
    """``count``: 0-d int32 steps per leaf; ``ema``: the moving average per leaf."""

    count: Any
    ema: Any


def ema(decay: Number, debias: bool = True, *, accumulator_dtype: Optional[torch.dtype] = None
        ) -> GradientTransformation:
    """An exponential moving average of the updates, the update being the average::

        e <- decay e + (1 - decay) u        u <- e / (1 - decay^t)  (debias)  or  e

    As optax's ``ema`` (``debias=True`` by default; ``e`` starts at zero), including its
    ``accumulator_dtype``: ``e`` stored in that dtype (``None``: the parameter's; see the module
    docstring). Example: ``fo.chain(fo.ema(0.9), fo.scale_by_learning_rate(0.1))`` is heavy-ball
    momentum in the "EMA" convention.
    """
    defaults = _validate.scalar_hparams(EmaHParams(decay), "ema")
    accumulator_dtype = _check_moment_dtype("ema", "accumulator_dtype", accumulator_dtype)

    def init(params):
        return EmaState(_counts(params), _moment(params, accumulator_dtype, "ema: accumulator_dtype"))

    def update(updates, state, params=None, hparams=None):
        hp = _hp("ema", defaults, hparams)
        check_state_type(state, EmaState, "ema")
        check_state_like(updates, state.count, "ema: state.count", scalar=True)
        _check_moments("ema", updates, state, {"ema": ("accumulator_dtype", accumulator_dtype)})

        def leaf(u, count, e_stored):
            work = _work_dtype(u, e_stored)
            u, e = u.to(work), e_stored.to(work)
            d = _like(hp.decay, u)
            e = e * d + u * (1 - d)
            count = count + 1
            return (e / _bias_correction(hp.decay, count, u) if debias else e), count, e.to(e_stored.dtype)

        out, count, e = _leafwise(leaf, updates, state.count, state.ema)
        return out, EmaState(count, e)

    return GradientTransformation(init, update, defaults)


# ---------------------------------------------------------------------------- centralize
def centralize() -> GradientTransformation:
    """Gradient centralization (Yong et al., 2020, https://arxiv.org/abs/2004.01461): a leaf of
    two or more dimensions has its mean over all dimensions but the first subtracted; vectors
    and scalars pass unchanged (optax's ``centralize``). Example: ``fo.chain(fo.centralize(),
    fo.adam())``."""

    def leaf(u):
        if u.dim() <= 1:
            return u
        return u - u.mean(dim=tuple(range(1, u.dim())), keepdim=True)

    return _stateless("centralize", None, lambda u, p, hp: map_updates(leaf, u))


# ---------------------------------------------------------------------------- noise
class AddNoiseHParams(NamedTuple):
    eta: Number = 0.01
    gamma: Number = 0.55


class AddNoiseState(NamedTuple):
    """``count``: steps so far (0-d int32); ``seed``: the noise stream's seed (0-d int64)."""

    count: Tensor
    seed: Tensor


def _normal_noise(seed: Tensor, count: Tensor, leaf_index: int, like: Tensor) -> Tensor:
    """Standard normal noise of ``like``'s shape, a pure function of (seed, count, leaf, element).

    Counter-based: each element's two uniforms are hashes of its index and a key made from the
    seed, the step and the leaf's position, turned into a normal by Box-Muller. Only integer
    tensor ops, ``log``, ``sqrt`` and ``cos``: the same numbers eagerly, compiled (to float
    rounding) and under vmap, on any device, with no generator object.
    """
    real = like.real.dtype if like.is_complex() else like.dtype
    work = torch.float64 if real == torch.float64 else torch.float32
    seed = seed.to(torch.int64)
    key = _mix32(seed ^ _mix32(seed >> 32))
    key = _mix32(key ^ _mix32(count.to(torch.int64) + 0x2545F491))
    key = _mix32(key ^ _mix32(torch.full_like(seed, leaf_index) + 0x3C6EF372))
    idx = torch.arange(like.numel(), dtype=torch.int64, device=like.device).reshape(like.shape)
    h1 = _mix32(key ^ _mix32(2 * idx))
    h2 = _mix32(key ^ _mix32(2 * idx + 1))
    u1 = (h1.to(work) + 1) / 4294967296.0  # (0, 1]
    u2 = h2.to(work) / 4294967296.0  # [0, 1)
    z = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return z.to(real)


def add_noise(eta: Number = 0.01, gamma: Number = 0.55, seed: int = 0) -> GradientTransformation:
    """Add annealed Gaussian noise (Neelakantan et al., 2015, https://arxiv.org/abs/1511.06807)::

        u <- u + N(0, eta / (1 + t)^gamma)        (t = steps before this one)

    The noise is a deterministic function of ``seed`` (kept in the state), the step count, the
    leaf's position and the element's index, computed with tensor ops (a counter-based hash and
    Box-Muller, see :func:`_normal_noise`): a run is reproducible from its state alone, and the
    step compiles and vmaps. It is not torch's random stream (and not JAX's). ``None`` leaves get
    no noise. Example: ``fo.chain(fo.add_noise(0.01, 0.55, seed=0), fo.sgd(lr=0.1))``.
    """
    defaults = _validate.scalar_hparams(AddNoiseHParams(eta, gamma), "add_noise")
    seed = int(seed)

    def init(params):
        device = _first_device(params)
        return AddNoiseState(torch.zeros((), dtype=torch.int32, device=device),
                             torch.tensor(seed, dtype=torch.int64, device=device))

    def update(updates, state, params=None, hparams=None):
        hp = _hp("add_noise", defaults, hparams)
        check_state_type(state, AddNoiseState, "add_noise")
        check_counters("add_noise", state, ("count", "seed"))
        leaves, spec = flatten(updates)
        t = state.count.to(torch.float32 if state.count.device.type == "mps" else torch.float64) + 1
        var = hp.eta / torch.pow(t, hp.gamma.to(t.dtype) if isinstance(hp.gamma, Tensor) else hp.gamma)
        std = torch.sqrt(var.to(t.dtype) if isinstance(var, Tensor) else var)
        out = []
        for i, u in enumerate(leaves):
            if u is None:
                out.append(None)
                continue
            noise = _normal_noise(state.seed.to(u.device), state.count.to(u.device), i, u)
            out.append(u + noise * _like(std.to(u.device), noise))
        return unflatten(spec, out), AddNoiseState(state.count + 1, state.seed)

    return GradientTransformation(init, update, defaults)


# ---------------------------------------------------------------------------- parameter-block scaling
class ScaleByParamBlockHParams(NamedTuple):
    min_scale: Number = 1e-3


def scale_by_param_block_norm(min_scale: Number = 1e-3) -> GradientTransformation:
    """``u <- u * max(||p||_2, min_scale)`` per leaf (a leaf is a "block"): Adafactor's relative
    step size (Shazeer & Stern, 2018, https://arxiv.org/abs/1804.04235), as optax. Needs params."""

    def fn(updates, params, hp):
        _needs_params("scale_by_param_block_norm", params)
        return map_updates(lambda u, p: u * safe_norm(p, hp.min_scale).to(u.dtype), updates, params)

    return _stateless("scale_by_param_block_norm", ScaleByParamBlockHParams(min_scale), fn)


def scale_by_param_block_rms(min_scale: Number = 1e-3) -> GradientTransformation:
    """``u <- u * max(rms(p), min_scale)`` per leaf, ``rms(p) = sqrt(mean(|p|^2))``: Adafactor's
    relative step size with ``scale_parameter=True`` (Shazeer & Stern, 2018), as optax. Needs params."""

    def fn(updates, params, hp):
        _needs_params("scale_by_param_block_rms", params)
        return map_updates(lambda u, p: u * _safe_rms(p, hp.min_scale).to(u.dtype), updates, params)

    return _stateless("scale_by_param_block_rms", ScaleByParamBlockHParams(min_scale), fn)


# ---------------------------------------------------------------------------- Polyak step size
class ScaleByPolyakHParams(NamedTuple):
    """``value`` is the loss at ``params``: give it at every call
    (``tx.update(g, s, p, tx.hparams._replace(value=loss))``)."""

    f_min: Number = 0.0
    max_learning_rate: Number = 1.0
    eps: Number = 0.0
    value: Optional[Number] = None


def scale_by_polyak(f_min: Number = 0.0, max_learning_rate: Number = 1.0, eps: Number = 0.0,
                    variant: str = "sps") -> GradientTransformation:
    """Polyak's step size (Loizou et al., 2021, https://arxiv.org/abs/2002.10542; SPS_max)::

        gap = value - f_min   (max(gap, 0) for variant "sps+")
        u  <- min(gap / (||g||^2 + eps), max_learning_rate) * u     (0 where ||g||^2 + eps <= machine eps)

    ``||g||^2`` is over every leaf. optax passes the loss as an extra argument; here it is the
    ``value`` field of the hparams, given at call time (a 0-d tensor: no recompiles). The
    threshold is the machine epsilon of the norm's dtype (optax: of ``float``). Stateless.
    Example::

        tx = fo.chain(fo.scale_by_polyak(f_min=0.0), fo.scale_by_learning_rate(1.0))
        updates, state = tx.update(grads, state, params, (tx.hparams[0]._replace(value=loss), None))
    """
    if variant not in ("sps", "sps+"):
        raise ValueError(f"scale_by_polyak: variant must be 'sps' or 'sps+', got {variant!r}")

    def fn(updates, params, hp):
        if hp.value is None:
            raise ValueError("scale_by_polyak.update needs the loss: pass hparams with value=loss")
        leaves = [u for u in flatten(updates)[0] if u is not None]
        if not leaves:
            return updates
        device = leaves[0].device
        sq = torch.stack([_sq(u).sum().to(device) for u in leaves]).sum()
        value = hp.value.to(device=device, dtype=sq.dtype) if isinstance(hp.value, Tensor) else hp.value
        gap = value - _like(hp.f_min, sq)
        if variant == "sps+":
            gap = torch.relu(gap) if isinstance(gap, Tensor) else max(gap, 0.0)
        denom = sq + _like(hp.eps, sq)
        step = torch.clamp(gap / denom, max=_like(hp.max_learning_rate, sq))
        step = torch.where(denom <= torch.finfo(sq.dtype).eps, torch.zeros_like(step), step)
        return map_updates(lambda u: u * step.to(device=u.device, dtype=u.real.dtype if u.is_complex() else u.dtype),
                           updates)

    return _stateless("scale_by_polyak", ScaleByPolyakHParams(f_min, max_learning_rate, eps, None), fn)


# ---------------------------------------------------------------------------- orthogonalize
class OrthogonalizeHParams(NamedTuple):
    eps: Number = NS_EPS


def orthogonalize(ns_coefficients: Sequence[float] = NS_COEFFICIENTS, ns_steps: int = NS_STEPS,
                  eps: Number = NS_EPS) -> GradientTransformation:
    """Replace each matrix update by its Newton–Schulz orthogonalisation ``~ U V^T`` (Muon's core:
    Jordan et al., 2024, https://kellerjordan.github.io/posts/muon/).

    Uses :func:`functional_optim.newton_schulz` (torch.optim.Muon's iteration, in bfloat16; the
    result cast back to the update's dtype). Leaves that are not 2-D pass unchanged (route them
    to another optimizer with :func:`functional_optim.partition`). ``ns_coefficients`` and
    ``ns_steps`` are fixed; ``eps`` is an hparam. Example (Muon without its lr adjustment)::

        fo.chain(fo.trace(0.95, nesterov=True), fo.orthogonalize(), fo.scale_by_learning_rate(0.02))
    """
    ns_coefficients = tuple(float(c) for c in ns_coefficients)
    ns_steps = int(ns_steps)
    check_newton_schulz_args(ns_coefficients, ns_steps)

    def leaf(u, hp):
        if u.dim() != 2:
            return u
        return newton_schulz(u, ns_coefficients, ns_steps, hp.eps).to(u.dtype)

    return _stateless("orthogonalize", OrthogonalizeHParams(eps),
                      lambda u, p, hp: map_updates(lambda x: leaf(x, hp), u))

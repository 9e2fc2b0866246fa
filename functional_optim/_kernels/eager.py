"""The pure (out-of-place) math over whole lists: what an eager functional ``update`` runs.

:class:`~functional_optim._kernels.ops.PureOps` writes one Python-level tensor operation per
parameter, which is what ``torch.compile`` (Inductor fuses it), ``torch.func.vmap`` and
``torch.func.grad`` need. Run eagerly, that costs one dispatch per parameter per operation, and
the per-parameter scalar math (bias corrections from the step counts) several more: on 1000
small tensors the functional Adam step was ~5x torch's foreach step.

:class:`ForeachPureOps` computes the same formulas with torch's *out-of-place* foreach
operations (``torch._foreach_add(xs, ys)`` returns new tensors; one C++ call per list instead of
one Python call per tensor), and takes per-parameter scalars as one float64 vector
(:meth:`per_param` does the scalar math once per list, not once per parameter), cast once per
dtype and split into 0-d views. Nothing is mutated, so the update stays pure.

The step's final update is computed as the update itself. The kernel receives the params
marked as :class:`_Base`; the first update op on them (``addcdiv_``, ``add_``: Adam's, Adagrad's
and Adadelta's last line) returns a :class:`_Delta` holding ``v * n / d`` (or ``alpha * o``)
instead of ``p + v * n / d``, which :meth:`ForeachPureOps.updates` hands out as the updates. That
saves the ``new - params`` pass and one allocation per parameter, and it rounds as torch's
in-place step: ``addcdiv`` computes ``(v * n) / d`` and adds it, so ``apply_updates``' ``p + u``
is torch's result bit for bit (``new - params`` is exact only where the two are within a factor
of two). A :class:`_Delta` is not a list, so a kernel cannot read it as parameters by mistake; an
operation handed one (NAdam's second ``addcdiv_``) adds it to its base first. RAdam's last line
(:meth:`ForeachPureOps.rectified_update_`) returns its update the same way.

Where the per-tensor form computes both branches of a per-parameter choice with ``torch.where``
(RAdam's rectification, ASGD's averaging weight ``mu == 1``), this path reads the scalars that
decide it on the host, once per list, as torch's CPU step reads them, and computes one branch.

It is chosen only where it computes what :class:`PureOps` computes and nothing needs the
per-tensor form: eagerly, outside functorch transforms, with no input that requires grad (see
:func:`eager_ops_for`). Results agree with :class:`PureOps` to rounding: a few operations are
fused where torch fuses them (``addcdiv``, ``addcmul``, ``lerp``, ``add(alpha=)``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from . import runs
from .compiled import COMPILED, COMPILED_SCALARS_PER_PARAM
from .ops import FOREACH_LERP_HAS_NUMBER_LIST, PURE, PureOps, Scalar, ScalarArg, _fill_rprop_factors_

__all__ = ["ForeachPureOps", "FOREACH_PURE", "eager_ops_for", "inside_functorch_transform"]

_REDUCED = (torch.float16, torch.bfloat16)


def _one_device(xs: Sequence[Tensor]) -> bool:
    """Whether every tensor of ``xs`` is on the first one's device (so they can be stacked)."""
    device = xs[0].device
    return all(x.device == device for x in xs)


def _one_dtype(xs: Sequence[Tensor]) -> torch.dtype | None:
    """The dtype shared by every tensor of ``xs``, or ``None`` if they differ."""
    dtype = xs[0].dtype
    return dtype if all(x.dtype == dtype for x in xs) else None


class ForeachPureOps(PureOps):
    """Out-of-place ``torch._foreach_*`` math; per-parameter scalars as float64 vectors."""

    # ------------------------------------------------------------------ scalars
    def per_param(self, fn: Callable[..., Any], *values: Any) -> Any:
        """``fn`` applied to each parameter's scalars, computed once over the stacked vectors.

        Each argument is one scalar per parameter: a float64 vector, a list of 0-d tensors on one
        device (stacked), or a list of Python numbers (made a vector on the others' device)."""
        tensors = [_as_vector(v) for v in values if not _numbers(v)]
        if tensors and all(t is not None for t in tensors):
            device = _common_device(tensors)
            if device is not None:
                return fn(*(torch.tensor(v, dtype=torch.float64, device=device) if _numbers(v)
                            else _on(_as_vector(v), device) for v in values))
        return super().per_param(fn, *(_unbound(v) for v in values))

    def norms(self, xs) -> list:
        if len(xs) > 1 and _one_device(xs) and _one_dtype(xs) is not None:
            return list(torch._foreach_norm(xs, 2))
        return super().norms(xs)

    def sqrt_div(self, xs, divisors: ScalarArg):
        if _is_vector(divisors):  # the roots of the per-parameter divisors taken once, as one vector
            return self.div_(self.sqrt(xs), divisors**0.5)
        return super().sqrt_div(xs, divisors)

    def neg_quotients(self, numerator: Scalar, denominators: Any) -> Any:
        if _is_vector(denominators):
            return -(numerator / denominators)
        return super().neg_quotients(numerator, denominators)

    def next_step_times(self, steps: Any, factor: Scalar) -> Any:
        if _is_vector(steps):
            return (steps + 1) * factor
        return super().next_step_times(steps, factor)

    def _scalars(self, scalar: ScalarArg, xs: Sequence[Tensor]) -> Any:
        """A scalar argument in the form foreach ops take: a number, a list of numbers, or a list
        of 0-d tensors in each tensor's dtype. A float64 vector of per-parameter scalars on the
        host becomes Python numbers (read once; torch's host scalar math, and on an accelerator the
        foreach kernels' fast path: numbers, not a 0-d tensor per tensor); one on an accelerator
        is cast once and split into 0-d views (no host synchronisation)."""
        if isinstance(scalar, Tensor):
            if scalar.dim() == 0:
                scalar = [scalar] * len(xs)
            elif scalar.is_cpu and not scalar.requires_grad:
                return scalar.tolist()
            else:
                dtype = _one_dtype(xs)
                if dtype is not None:
                    return list(scalar.to(device=xs[0].device, dtype=dtype).unbind())
                scalar = list(scalar.unbind())
        if isinstance(scalar, (list, tuple)):
            if scalar and isinstance(scalar[0], Tensor):
                return [s.to(x.dtype) if s.dtype != x.dtype else s for s, x in zip(scalar, xs)]
            return list(scalar)
        return scalar

    def step_values(self, steps: Sequence[Tensor]) -> Any:
        """The step counts as one float64 vector (``per_param`` does its math on it)."""
        return self.scalar_values(steps)

    def scalar_values(self, scalars: Sequence[Tensor]) -> Any:
        """The 0-d ``scalars`` as one float64 vector: on the host where their values are known
        there without reading an accelerator (:func:`.runs.host_values`), else where they are."""
        run = runs.known_scalars(scalars) if len(scalars) > 1 else None
        if run is not None:
            host = runs.host_of(run, scalars[0])
            return (host if host is not None else run.flat(scalars[0])).to(torch.float64)
        if len(scalars) > 1 and _one_device(scalars):
            return torch.stack(list(scalars)).to(torch.float64)
        return super().scalar_values(scalars)

    def realize(self, scalars):
        return scalars

    # ------------------------------------------------------------------ the final update
    def base(self, params: list) -> list:
        return _Base(params)

    def updates(self, new_params, params: list) -> list:
        if type(new_params) is _Delta:
            return list(new_params.delta)
        return self.sub(new_params, params)

    def _delta_of(self, xs) -> bool:
        """Whether an update op on ``xs`` may return the update alone: ``xs`` are the caller's
        params, in one float32/float64 dtype (half types round ``p + u`` once in float32)."""
        return type(xs) is _Base and bool(xs) and _one_dtype(xs) in _IN_PLACE_DTYPES

    # ------------------------------------------------------------------ list math
    # Every list an operation returns is a :class:`_Fresh` list of tensors this update made. An
    # "underscore" operation may update such a list in place (the kernels are written for the
    # in-place Ops), which saves an allocation per tensor; lists the caller passed in (params,
    # grads, state) are never written. In place only in float32/float64: torch's in-place foreach
    # ops round a scalar to a half dtype first, the out-of-place ones do not.

    def _foreach(self, name: str, xs, *args, **kwargs):
        """``torch._foreach_<name>_`` on ``xs`` if it is ours to overwrite, else the out-of-place op."""
        if type(xs) is _Fresh and _one_dtype(xs) in _IN_PLACE_DTYPES:
            getattr(torch, f"_foreach_{name}_")(xs, *args, **kwargs)
            return xs
        return _Fresh(getattr(torch, f"_foreach_{name}")(xs, *args, **kwargs))

    def neg(self, xs):
        return _Fresh(torch._foreach_neg(xs))

    def add(self, xs, others, alpha: ScalarArg = 1):
        alpha = self._scalars(alpha, xs)
        if isinstance(alpha, list):
            return _Fresh(torch._foreach_add(xs, torch._foreach_mul(others, alpha)))
        return _Fresh(torch._foreach_add(xs, others, alpha=alpha))

    def add_scalar(self, xs, value: ScalarArg):
        return _Fresh(torch._foreach_add(xs, self._scalars(value, xs)))

    def add_(self, xs, other, alpha: ScalarArg = 1):
        if isinstance(other, (list, tuple)) and any(isinstance(o, Tensor) and o.dim() > 0 for o in other):
            alpha = self._scalars(alpha, xs)
            if self._delta_of(xs):  # the update itself: alpha * other
                if isinstance(alpha, (int, float)) and alpha == 1:
                    return _Delta(xs, other if type(other) is _Fresh else _copies(other))
                return _Delta(xs, _Fresh(torch._foreach_mul(other, alpha)))
            if isinstance(alpha, list):
                return self._foreach("add", xs, torch._foreach_mul(other, alpha))
            return self._foreach("add", xs, other, alpha=alpha)  # tensors (a 0-d param's among them)
        if not (isinstance(alpha, (int, float)) and alpha == 1):
            other = self.per_param(lambda o, a: o * a, *_as_lists(len(xs), other, alpha))
        return self._foreach("add", xs, self._scalars(other, xs))

    def abs(self, xs):
        return _Fresh(torch._foreach_abs(xs))

    def sign(self, xs):
        return _Fresh(torch._foreach_sign(xs))

    def sign_(self, xs):
        return self._foreach("sign", xs)

    def mul(self, xs, other):
        if isinstance(other, (int, float)) or (isinstance(other, (list, tuple)) and other
                                               and all(isinstance(o, Tensor) for o in other)):
            return _Fresh(torch._foreach_mul(xs, list(other) if isinstance(other, tuple) else other))
        return _Fresh(super().mul(xs, other))

    def rprop_factors_(self, signs, eta_minus: Scalar, eta_plus: Scalar):
        if type(signs) is _Fresh and _one_dtype(signs) in _IN_PLACE_DTYPES:
            return _fill_rprop_factors_(signs, eta_minus, eta_plus)  # this update's own temporaries
        return _Fresh(super().rprop_factors_(signs, eta_minus, eta_plus))

    def square(self, xs):
        return _Fresh(torch._foreach_mul(xs, xs))

    def sqrt(self, xs):
        return _Fresh(torch._foreach_sqrt(xs))

    def sqrt_(self, xs):
        return self._foreach("sqrt", xs)

    def clone(self, xs):
        return _copies(xs)

    def own(self, xs):
        return _Fresh(xs)

    def scale_and_add_(self, xs, others, scales: ScalarArg, scratch: bool = False):
        if scratch and type(others) is _Fresh and self._delta_of(xs) and _one_dtype(others) in _IN_PLACE_DTYPES:
            torch._foreach_mul_(others, self._scalars(scales, xs))  # the kernel's temporaries: scaled in place
            return _Delta(xs, others)
        return super().scale_and_add_(xs, others, scales, scratch)

    def writable(self, xs):
        # A plain list: the underscore ops that follow compute out of place, so tensors of ``xs``
        # that the update returns elsewhere (Adafactor's new ``variance``) are never overwritten.
        return list(xs)

    def increment_(self, steps):
        """``step + 1`` for each counter. Many 0-d counters of one dtype on one device are counted
        as one vector, handed back as its 0-d views (one op and one cut, not an addition per
        counter) and remembered as a run (:mod:`.runs`), so :meth:`scalar_values` reads them
        without a stack; on an accelerator with their values on the host, advanced by the same
        addition there (exact: IEEE addition rounds alike on every device)."""
        counters, host = _counters(steps)
        if counters is None:
            return _Fresh(torch._foreach_add(steps, 1))
        new = counters + 1
        return _Fresh(runs.record(list(new.unbind()), new, runs.Layout.scalars(len(steps)),
                                  host=None if host is None else host + 1))

    def copy_(self, dsts, srcs):
        """Per-parameter host values (ASGD's new ``eta`` and ``mu``) for 0-d tensors on one
        accelerator: cast on the host, copied as one vector (waiting for nothing) and handed back
        as a run with those host values; anything else as :meth:`PureOps.copy_` does it."""
        if (_is_vector(srcs) and srcs.is_cpu and not srcs.requires_grad and len(dsts) > 1 and not dsts[0].is_cpu
                and all(type(d) is Tensor and d.dim() == 0 for d in dsts) and _one_dtype(dsts) is not None
                and _one_device(dsts) and not runs.capturing(dsts[0].device)):
            values = srcs.to(dsts[0].dtype)
            new = _on(values, dsts[0].device)
            return runs.record(list(new.unbind()), new, runs.Layout.scalars(len(dsts)), host=values)
        return super().copy_(dsts, srcs)

    def mul_(self, xs, scalar: ScalarArg):
        scaled = _scaled_host_run(xs, scalar)
        if scaled is not None:
            return scaled
        return self._foreach("mul", xs, self._scalars(scalar, xs))

    def mul_tensors_(self, xs, others):
        return self._foreach("mul", xs, others)

    def div_(self, xs, scalar: ScalarArg):
        return self._foreach("div", xs, self._scalars(scalar, xs))

    def div_tensors_(self, xs, others):
        return self._foreach("div", xs, others)

    def lerp_(self, xs, ends, weight: ScalarArg):
        if isinstance(weight, (int, float)):
            return self._foreach("lerp", xs, ends, weight)
        dtype = _one_dtype(xs)
        if dtype is None or dtype in _REDUCED or isinstance(weight, (list, tuple)) and weight \
                and not isinstance(weight[0], Tensor):
            return _Fresh(super().lerp_(xs, ends, _unbound(weight)))
        if isinstance(weight, Tensor) and weight.dim() == 1:
            if weight.is_cpu and not weight.requires_grad and FOREACH_LERP_HAS_NUMBER_LIST:
                # read on the host, as torch's CPU step reads them (the same lerp: a number is cast to
                # the tensors' dtype as the 0-d weights below are)
                return self._foreach("lerp", xs, ends, weight.tolist())
            weights = list(weight.to(dtype).unbind())  # a per-parameter vector: one cast
        elif isinstance(weight, (list, tuple)):
            weights = _cast_all(list(weight), dtype)
        else:
            weights = [weight.to(dtype)] * len(xs)
        return self._foreach("lerp", xs, ends, weights)

    def addcmul(self, xs, t1s, t2s, value: ScalarArg = 1):
        if isinstance(value, (int, float)):  # never into ``xs``, even a list this update made
            return _Fresh(torch._foreach_addcmul(xs, t1s, t2s, value))
        return self.addcmul_(self.clone(xs), t1s, t2s, value)

    def addcmul_(self, xs, t1s, t2s, value: ScalarArg = 1):
        value = self._scalars(value, xs)
        if isinstance(value, list) and value and isinstance(value[0], Tensor):
            return self._foreach("add", xs, torch._foreach_mul(torch._foreach_mul(t1s, t2s), value))
        return self._foreach("addcmul", xs, t1s, t2s, value)

    def addcdiv_(self, xs, t1s, t2s, value: ScalarArg = 1):
        value = self._scalars(value, xs)
        tensor_values = isinstance(value, list) and value and isinstance(value[0], Tensor)
        if self._delta_of(xs):
            # the update itself, rounded as the sum below computes it: v * (n / d) for tensor
            # values (PureOps' order), (v * n) / d for numbers (torch's addcdiv kernel)
            if tensor_values:
                return _Delta(xs, self._foreach("mul", _Fresh(torch._foreach_div(t1s, t2s)), value))
            # ``-0 + (v * n) / d`` in one pass (-0 is the exact additive identity, signed zeros
            # included): one write of new memory instead of a product and an in-place quotient
            return _Delta(xs, _Fresh(torch._foreach_addcdiv(_negative_zeros_like(t1s), t1s, t2s, value)))
        if tensor_values:
            return self._foreach("add", xs, torch._foreach_mul(torch._foreach_div(t1s, t2s), value))
        return self._foreach("addcdiv", xs, t1s, t2s, value)

    def rectified_update_(self, xs, exp_avgs, exp_avg_sqs, eps: Scalar, lr: Scalar, bias_corrections1: ScalarArg,
                          bias_corrections2: ScalarArg, rects: ScalarArg):
        """:meth:`PureOps.rectified_update_`'s formula with foreach ops, for lists of one
        float32/float64 dtype with host ``lr``, ``eps`` and scalar vectors: the update ``-(lr / b1) m``, times
        ``r sqrt(b2) / (sqrt(v) + eps)`` on the tensors where ``r > 0`` (read on the host, as
        torch's CPU step reads its scalars; no ``torch.where`` computing both branches). On the
        caller's params it is the update itself (:class:`_Delta`); ``x + (-(c a))`` is the pure
        path's ``x - c a`` bit for bit. Anything else takes the per-tensor default."""
        dtype = _one_dtype(xs)
        if not (dtype in _IN_PLACE_DTYPES and isinstance(lr, (int, float))
                and isinstance(eps, (int, float))
                and all(_is_vector(s) and s.is_cpu for s in (bias_corrections1, bias_corrections2, rects))):
            return _Fresh(super().rectified_update_(xs, exp_avgs, exp_avg_sqs, eps, lr, bias_corrections1,
                                                    bias_corrections2, rects))
        steps = _Fresh(torch._foreach_mul(exp_avgs, (-(lr / bias_corrections1)).to(dtype).tolist()))
        rectified = [i for i, r in enumerate(rects.tolist()) if r > 0]
        if rectified:
            # (on the tensors' device: ``out=`` takes no other, and the copy waits for nothing)
            numerators = _on((rects * bias_corrections2**0.5).to(dtype), xs[0].device)
            denoms = torch._foreach_sqrt([exp_avg_sqs[i] for i in rectified])
            torch._foreach_add_(denoms, eps)
            for i, d in zip(rectified, denoms):
                torch.div(numerators[i], d, out=d)  # r sqrt(b2) / (sqrt(v) + eps), in place
            torch._foreach_mul_([steps[i] for i in rectified], denoms)
        if self._delta_of(xs):
            return _Delta(xs, steps)
        return self._foreach("add", xs, steps)

    def average_(self, axs, xs, weights):
        """:meth:`PureOps.average_` (``a + w (x - a)``, ``x`` itself where ``w == 1``) for lists
        of one float32/float64 dtype with weights on the host (CPU tensors, or an accelerator's run
        with host values: :func:`_host_list`): the weights read on the host (one read), so
        where ``w == 1`` (ASGD before ``t0``) nothing is computed, and elsewhere ``(x - a) w + a``
        is written into the new difference. The list returned is not this update's to overwrite
        (it may hold ``xs`` themselves)."""
        host = _host_list(weights) if _one_dtype(xs) in _IN_PLACE_DTYPES else None
        if host is None:
            return _Fresh(super().average_(axs, xs, weights))
        out = list(xs)
        moving = [i for i, w in enumerate(host) if w != 1]
        if moving:
            diffs = torch._foreach_sub([xs[i] for i in moving], [axs[i] for i in moving])
            torch._foreach_mul_(diffs, [host[i] for i in moving])
            torch._foreach_add_(diffs, [axs[i] for i in moving])
            for i, d in zip(moving, diffs):
                out[i] = d
        return out

    def maximum_(self, xs, others):
        return self._foreach("maximum", xs, others)

    def sub(self, xs, others):
        return _Fresh(torch._foreach_sub(xs, others))

    def rsqrt_at_least_(self, xs, bound: Scalar):
        if isinstance(bound, Tensor):
            return _Fresh(super().rsqrt_at_least_(xs, bound))
        return self._foreach("rsqrt", self._foreach("clamp_min", xs, bound))


class _Fresh(list):
    """A list of tensors made by this update (see ``ForeachPureOps._foreach``)."""


class _Base(list):
    """The caller's parameters as the kernel receives them (see the module docstring)."""


class _Delta:
    """The parameters after an update op on :class:`_Base` params, held as ``base + delta``.

    Deliberately not a list: the kernel may only return it or hand it to another operation,
    which materializes it first (:func:`_materializing`)."""

    __slots__ = ("base", "delta")

    def __init__(self, base: _Base, delta: _Fresh) -> None:
        self.base, self.delta = base, delta

    def materialize(self) -> _Fresh:
        """``base + delta`` as new tensors (the delta's own buffers are reused)."""
        torch._foreach_add_(self.delta, self.base)
        return self.delta


def _materializing(method: Callable) -> Callable:
    """``method`` with every :class:`_Delta` argument turned into the parameters it stands for."""

    def wrapper(self, *args, **kwargs):
        if any(type(a) is _Delta for a in args):
            args = tuple(a.materialize() if type(a) is _Delta else a for a in args)
        return method(self, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = method.__name__, method.__doc__, method
    return wrapper


def _materialize_deltas_in(cls: type) -> type:
    """Wrap every list operation ``cls`` (and the Ops it inherits from) offers with :func:`_materializing`."""
    names = {name for klass in cls.__mro__ for name, member in vars(klass).items()
             if callable(member) and not name.startswith("_") and name not in ("updates", "base")}
    for name in names:
        setattr(cls, name, _materializing(getattr(cls, name)))
    return cls


_IN_PLACE_DTYPES = (torch.float32, torch.float64)


def _negative_zeros_like(xs: Sequence[Tensor]) -> list:
    """``-0.0`` broadcast to each tensor's shape (stride-0 views of one 0-d tensor per dtype and
    device: nothing is allocated per tensor). As the ``self`` of an out-of-place ``addcdiv`` it
    makes the result exactly ``value * t1 / t2``: ``-0 + y == y`` for every ``y``, ``+0`` and
    ``-0`` included, and the output takes its layout from ``t1``/``t2`` (a stride-0 operand does
    not decide it)."""
    zeros: dict = {}
    out = []
    for x in xs:
        key = (x.dtype, x.device)
        zero = zeros.get(key)
        if zero is None:
            zero = zeros[key] = torch.full((), -0.0, dtype=x.dtype, device=x.device)
        out.append(zero.expand(x.shape))
    return out


def _numbers(x: Any) -> bool:
    """A non-empty list of Python numbers (one per parameter)."""
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(v, (int, float)) for v in x)


def _as_vector(x: Any) -> Tensor | None:
    """One scalar per parameter as a float64 vector: ``x`` itself, the stack of a list of 0-d tensors
    on one device, or ``None`` if ``x`` is neither."""
    if _is_vector(x):
        return x
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, Tensor) for v in x) and _one_device(x):
        return torch.stack(list(x)).to(torch.float64)
    return None


def _is_vector(x: Any) -> bool:
    """A 1-D tensor: per-parameter scalars held as one vector (hyperparameters are 0-d)."""
    return isinstance(x, Tensor) and x.dim() == 1


def _counters(steps: Sequence[Tensor]) -> tuple:
    """Many 0-d step counters (or other per-parameter scalars) of one dtype on one device as one
    vector (their known run's buffer, or a stack) and, on an accelerator, their values on the
    host; ``(None, None)`` otherwise.

    Counters on an accelerator that are not a known run (loaded, or copied by the caller) are
    read once here, outside CUDA graph capture; from then on the host values follow them."""
    if len(steps) < 2:
        return None, None
    run = runs.known_scalars(steps)
    if run is not None:
        return run.flat(steps[0]), (None if run.device.type == "cpu" else runs.host_of(run, steps[0]))
    if not (all(type(s) is Tensor and s.dim() == 0 and not s.requires_grad for s in steps)
            and _one_dtype(steps) is not None and _one_device(steps)):
        return None, None
    counters = torch.stack(list(steps))
    if counters.is_cpu or runs.capturing(counters.device):
        return counters, None
    return counters, counters.cpu()


def _host_list(scalars: Sequence[Tensor]) -> list | None:
    """The values of 0-d tensors as Python numbers where the host has them without reading an
    accelerator: CPU tensors (one stack), or a run with host values (:func:`.runs.host_values`)."""
    if not scalars or not all(type(w) is Tensor and w.dim() == 0 for w in scalars):
        return None
    if all(w.is_cpu for w in scalars):
        return torch.stack(list(scalars)).tolist()
    host = runs.host_values(scalars) if len(scalars) > 1 else None
    return None if host is None else host.tolist()


def _scaled_host_run(xs: Sequence[Tensor], scalar: Any) -> "_Fresh | None":
    """``xs * scalar`` where ``xs`` is a known run of 0-d tensors on an accelerator with host values
    (NAdam's ``mu_product``) and ``scalar`` a host vector: one product on the device and the same
    on the host (each factor rounded to the run's dtype first, as the foreach kernel rounds a
    number), handed back as a run with its new host values; else ``None``."""
    if not (len(xs) > 1 and _is_vector(scalar) and scalar.is_cpu and not scalar.requires_grad
            and not xs[0].is_cpu):
        return None
    flat, host = _counters(xs)  # (a run not known is read once, as counters are)
    if host is None:
        return None
    factors = scalar.to(flat.dtype)
    new = flat * _on(factors, flat.device)
    return _Fresh(runs.record(list(new.unbind()), new, runs.Layout.scalars(len(xs)), host=host * factors))


def _copies(xs: Sequence[Tensor]) -> "_Fresh":
    """A copy of each tensor (as ``clone`` makes it: same layout), copied by one foreach call
    rather than a kernel per tensor."""
    out = _Fresh(torch.empty_like(x) for x in xs)
    if out:
        torch._foreach_copy_(out, list(xs))
    return out


def _common_device(tensors: Sequence[Tensor]) -> torch.device | None:
    """The device the per-parameter scalar math on ``tensors`` runs on: theirs if they share one;
    the accelerator where host vectors meet vectors on one accelerator; else ``None``."""
    devices = {t.device for t in tensors}
    if len(devices) == 1:
        return tensors[0].device
    others = [d for d in devices if d.type != "cpu"]
    return others[0] if len(others) == 1 and len(devices) == 2 else None


def _on(vector: Tensor, device: torch.device) -> Tensor:
    """``vector`` on ``device``: a host vector is copied without waiting for the device's queue."""
    return vector if vector.device == device else vector.to(device, non_blocking=True)


def _cast_all(scalars: list, dtype: torch.dtype) -> list:
    """0-d tensors in ``dtype``: many on one device cast as one stacked vector (one op, not one
    ``.to`` per parameter: Adafactor's per-parameter lerp weights on 1000 tensors)."""
    if all(s.dtype == dtype for s in scalars):
        return scalars
    if len(scalars) > 1 and _one_device(scalars):
        return list(torch.stack(scalars).to(dtype).unbind())
    return [s.to(dtype) for s in scalars]


def _unbound(scalar: Any) -> Any:
    """A per-parameter vector as a list of 0-d tensors (what :class:`PureOps` takes)."""
    return list(scalar.unbind()) if isinstance(scalar, Tensor) and scalar.dim() == 1 else scalar


def _as_lists(n: int, *scalars: Any) -> list:
    """Each scalar argument as a per-parameter list (a vector is split, a single one repeated)."""
    out = []
    for s in scalars:
        if isinstance(s, Tensor) and s.dim() == 1:
            out.append(list(s.unbind()))
        elif isinstance(s, (list, tuple)):
            out.append(list(s))
        else:
            out.append([s] * n)
    return out


_materialize_deltas_in(ForeachPureOps)
FOREACH_PURE = ForeachPureOps()


def _batched(x: Any) -> bool:
    """Whether ``x`` is a tensor batched by ``torch.func.vmap`` (a question Dynamo answers while
    tracing, where :func:`inside_functorch_transform` reads its own interpreter stack)."""
    return isinstance(x, Tensor) and torch._C._functorch.is_batchedtensor(x)


def inside_functorch_transform() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp ...) is running."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def eager_ops_for(params: Sequence[Any], grads: Sequence[Any], *others: Sequence[Any]) -> PureOps:
    """The pure Ops for one update: :data:`FOREACH_PURE` eagerly, :data:`~.compiled.COMPILED`
    under ``torch.compile`` (:data:`~.compiled.COMPILED_SCALARS_PER_PARAM` where a tensor
    hyperparameter or state is on another device than the parameters); :data:`PURE` (per
    tensor) inside functorch transforms (vmap, grad), when anything requires grad (autograd
    through the update), for sparse gradients and tensor subclasses (DTensor), for parameters on
    several devices, and when there is nothing to update (``params`` empty). ``others``:
    hyperparameters, state."""
    if not params:
        return PURE
    if torch.compiler.is_compiling():
        device = params[0].device
        elsewhere = any(isinstance(x, Tensor) and x.device != device for leaves in others for x in leaves)
        whole_lists = COMPILED_SCALARS_PER_PARAM if elsewhere else COMPILED
        if any(_batched(x) for x in params) or any(_batched(x) for x in grads if x is not None):
            return PURE  # (vmap under compile: Dynamo cannot tell inside_functorch_transform)
    elif inside_functorch_transform():
        return PURE
    else:
        whole_lists = FOREACH_PURE
    if any(type(x) is not Tensor or x.requires_grad for x in params) or not _one_device(params):
        return PURE  # (per-parameter scalar vectors live on the parameters' one device)
    if any(x is not None and (type(x) is not Tensor or x.requires_grad or x.is_sparse) for x in grads):
        return PURE
    for leaves in others:
        if any(isinstance(x, Tensor) and (x.requires_grad or type(x) is not Tensor) for x in leaves):
            return PURE
    return whole_lists


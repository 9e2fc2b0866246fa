"""Three ways to run the same list-of-tensors math.

A kernel is written once as a sequence of calls such as ``exp_avgs = ops.lerp_(exp_avgs, grads, w)``.
The trailing underscore marks an operation that *may* update its first argument in place:

* :class:`PureOps` never mutates: every call returns new tensors. It is what the functional
  ``update`` runs, and it works under ``torch.compile``, ``torch.func.vmap``/``grad`` and autograd.
* :class:`LoopOps` mutates one tensor at a time with ``Tensor.*_`` methods: torch's for-loop
  ("single tensor") implementation, also used for ``differentiable=True``.
* :class:`ForeachOps` mutates whole lists with ``torch._foreach_*_``: torch's foreach
  implementation (one horizontally fused launch per list on CUDA).

Operations without an underscore always return new tensors.

Scalars (``value``, ``alpha``, ``weight`` ...) may be a Python number, a 0-d tensor, or a list
with one such scalar per tensor (e.g. per-parameter bias corrections).

``host_scalars`` says how per-parameter step counts are read: as Python floats (``.item()``, as
torch does when ``capturable=False``; double-precision scalar math, no graph capture) or as 0-d
tensors (traceable, capturable, vmappable): float64 for the pure path, the step's own dtype for
the in-place paths (as torch's ``capturable``/``differentiable`` code does).
"""

from __future__ import annotations

import sys
from typing import Sequence, Union

import torch
from torch import Tensor

Scalar = Union[float, int, Tensor]
ScalarArg = Union[Scalar, Sequence[Scalar]]


def nonzero(x: Scalar) -> bool:
    """``x != 0`` for a number; a tensor hyperparameter is always applied (no host sync)."""
    return isinstance(x, Tensor) or x != 0


def _full_value(t: Tensor) -> Tensor:
    """``t`` itself, or for a DTensor its full (replicated) value: partial placements reduced,
    shards gathered. ``torch.distributed.tensor`` is not imported here: a DTensor exists only
    once that module is loaded, so plain tensors (and builds without torch.distributed) pay
    one dict lookup."""
    if type(t) is not Tensor:
        dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
        if dtensor is not None and isinstance(t, dtensor):
            return t.full_tensor()
    return t


def _nth(scalar: ScalarArg, i: int) -> Scalar:
    """The ``i``-th parameter's value of a scalar argument: shared, or one per parameter (a list,
    or a 1-D tensor: per-parameter scalars held as a vector; hyperparameters are always 0-d)."""
    if isinstance(scalar, (list, tuple)) or (isinstance(scalar, Tensor) and scalar.dim() == 1):
        return scalar[i]
    return scalar


class Ops:
    """Interface shared by the three implementations (see module docstring)."""

    host_scalars: bool = False
    #: dtype of tensor scalars read from state (None: as stored, like torch's capturable path)
    step_dtype: torch.dtype | None = None

    def step_values(self, steps: Sequence[Tensor]) -> list[Scalar]:
        """Per-parameter step counts, as Python floats or as 0-d tensors."""
        return self.scalar_values(steps)

    def per_param(self, fn, *values):
        """``[fn(*v) for v in zip(*values)]``: scalar math per parameter (step sizes from step
        counts ...). Implementations that hold per-parameter scalars as one vector compute it
        once for all parameters instead."""
        return [fn(*v) for v in zip(*values)]

    def scalar_values(self, scalars: Sequence[Tensor]) -> list[Scalar]:
        """0-d tensors (step counts, norms ...) read as Python floats (``.item()``, when
        ``host_scalars``) or kept as 0-d tensors in ``step_dtype`` (traceable, no host sync).

        A sharded DTensor scalar (``p.norm(2)`` of an FSDP2 parameter is a per-shard partial
        norm) is reduced to its full value before it is read; ``.item()`` alone would read this
        rank's shard. Kept as tensors, DTensor scalars stay DTensors and reduce when used.
        """
        if self.host_scalars:
            return [_full_value(s).item() for s in scalars]
        if self.step_dtype is None:
            return list(scalars)
        return [s.to(self.step_dtype) for s in scalars]

    def realize(self, scalars: list) -> list:
        """Per-parameter tensor scalars computed once, not once per element, under torch.compile.

        Inductor inlines a cheap 0-d expression (``lr / (1 - beta1 ** t)``) into the loop of every
        tensor that uses it, recomputing the float64 ``pow`` per element: a compiled Adam step on
        13.5M parameters took 55 ms instead of 10 ms. A 1x1 matmul is never inlined, so routing the
        scalars through one (an exact multiplication by 1) makes Inductor compute them once.
        Eagerly, and for Python numbers, this is the identity.
        """
        if not (torch.compiler.is_compiling() and scalars and all(isinstance(s, Tensor) for s in scalars)):
            return scalars
        stacked = torch.stack(scalars)
        one = torch.ones((1, 1), dtype=stacked.dtype, device=stacked.device)
        return list(torch.mm(stacked.reshape(-1, 1), one).reshape(stacked.shape).unbind())

    def add_sparse_(self, x: Tensor, sparse: Tensor) -> Tensor:
        """``x + sparse`` for one dense tensor and a sparse one of its shape (SparseAdam's masked
        updates, three per parameter): in place where this Ops works in place, without the list
        wrapping of :meth:`add_` (about 1 µs a call)."""
        return self.add_([x], [sparse])[0]

    def base(self, params: list) -> list:
        """The parameters as the kernel receives them. :class:`~functional_optim._kernels.eager.
        ForeachPureOps` marks them so that the step's final update yields ``new - params``
        directly (see :meth:`updates`); everywhere else they are passed as they are."""
        return params

    def updates(self, new_params, params: list) -> list:
        """``new_params - params``: the updates a pure step returns (see :meth:`base`)."""
        return self.sub(new_params, params)

    def signed_and_decayed(self, params, grads, maximize: bool, lr: Scalar, weight_decay: Scalar,
                           decoupled: bool):
        """The common opening of Adam-style steps: ``g <- -g`` if ``maximize``, then weight decay,
        decoupled (``theta <- theta (1 - lr wd)``, Loshchilov & Hutter) or L2 (``g <- g + wd theta``).
        The caller's grads are never modified."""
        if maximize:
            grads = self.neg(grads)
        if nonzero(weight_decay):
            if decoupled:
                params = self.mul_(params, 1 - lr * weight_decay)
            else:
                grads = self.add(grads, params, alpha=weight_decay)
        return params, grads

    # Where torch's implementations order the same math differently ---------------------
    # The defaults are torch's foreach order (and the pure path's); the in-place classes override
    # them where torch's for-loop (or its capturable foreach code) computes otherwise, so that each
    # compat implementation rounds exactly as torch's implementation of the same name.

    def sqrt_div(self, xs, divisors: ScalarArg):
        """``sqrt(x / d)`` as new tensors, computed as ``sqrt(x) / sqrt(d)`` (torch's foreach order).

        ``d`` is a scalar or one scalar per tensor; ``sqrt(d)`` is taken once per scalar.
        :class:`LoopOps` computes ``(x / d).sqrt()`` instead, as torch's single-tensor NAdam does.
        """
        roots = self.realize([_nth(divisors, i) ** 0.5 for i in range(len(xs))])
        return self.div_(self.sqrt(xs), roots)

    def next_step_times(self, steps: Sequence[Scalar], factor: Scalar) -> list:
        """``(t + 1) * factor`` for each step value ``t`` (a number or a 0-d tensor), as torch's
        for-loop code and its host scalar math write it. :class:`ForeachOps` computes
        ``t * factor + factor`` for tensor steps, as torch's capturable foreach code does."""
        return [(t + 1) * factor for t in steps]

    def add_scaled_quotients_(self, xs, terms: Sequence[tuple], denoms):
        """``x + sum_k v_k * t_k / d`` for ``terms = [(t_k, v_k), ...]`` (tensor lists ``t_k``, step
        sizes ``v_k``: a scalar or one per tensor) over the common denominators ``denoms``.

        This is the update of torch's paths that keep step sizes as tensors (``capturable``,
        ``differentiable``), which scale the numerators before dividing: the for-loop runs
        ``x.addcdiv_(t_k * v_k, d)`` per term (:class:`LoopOps`), the foreach code one
        ``addcdiv_`` of ``sum_k v_k t_k`` (:class:`ForeachOps`). The default is one ``addcdiv_``
        per term with ``value=v_k``.
        """
        for ts, values in terms:
            xs = self.addcdiv_(xs, ts, denoms, values)
        return xs

    def neg_quotients(self, numerator: Scalar, denominators: Sequence[Scalar]) -> list:
        """``-(n / d)`` for each ``d`` (a number or a 0-d tensor), e.g. Adam's step size
        ``-lr / (1 - beta1^t)``, as torch's for-loop and its host scalar math compute it.
        :class:`ForeachOps` computes ``1 / (-d / n)`` for tensor ``d``, as torch's capturable
        foreach Adam does (``_foreach_div_`` by ``lr``, then ``_foreach_reciprocal_``)."""
        return [-(numerator / d) for d in denominators]

    def addcdiv_sqrt_(self, xs, numerators, squares, root_divisors: ScalarArg, eps: Scalar, values: ScalarArg):
        """``x + v * n / (sqrt(s) / r + eps)``: Adam's update (``r = sqrt(1 - beta2^t)``, ``v`` the
        negative step size; ``r`` and ``v`` are scalars, one per tensor or shared).

        The default is torch's order with host scalars: the denominator, then ``addcdiv_`` with
        ``value=v``. Without host scalars (``capturable``, ``differentiable``) torch folds the tensor
        ``v`` into the denominator and adds ``n / denominator``: its for-loop computes the
        denominator as ``sqrt(s) / (r v) + eps / v`` (:class:`LoopOps`), its foreach code as
        ``(sqrt(s) / r + eps) / v`` (:class:`ForeachOps`).
        """
        denoms = self.add_(self.div_(self.sqrt(squares), root_divisors), eps)
        return self.addcdiv_(xs, numerators, denoms, values)

    def scale_and_add_(self, xs, others, scales: ScalarArg, scratch: bool = False):
        """``x + s * o``: the final update of Adadelta (``s = -lr``) and Adafactor (one ``s`` per tensor).

        ``scratch`` says that ``others`` are the kernel's own temporaries, which may be overwritten.
        The default is ``add_(xs, others, alpha=scales)``, the rounding of torch's for-loop
        (``param.add_(update, alpha=s)``, ``s`` read as a number: :class:`LoopOps` reads a tensor
        ``s`` with ``.item()`` also when capturable or differentiable, as ``add_``'s ``alpha`` does).
        :class:`ForeachOps` scales ``others`` first where ``s`` is one per tensor or a tensor, in
        place when ``scratch`` (``_foreach_mul_(updates, s)``, then ``_foreach_add_``) as torch's
        foreach code does; an in-place foreach product rounds ``s`` to a half dtype first.
        Tensor scales given one per tensor are cast to their tensor's dtype here (the foreach code
        multiplies by them as they are).
        """
        if isinstance(scales, (list, tuple)):
            scales = [_as_dtype_of(s, x) for s, x in zip(scales, xs)]
        return self.add_(xs, others, alpha=scales)

    def scale_and_addcdiv_(self, xs, numerators, denoms, scales: ScalarArg, scratch: bool = False):
        """``x + s * n / d``: Adagrad's update (``s = -clr``, one per tensor).

        The default is ``addcdiv_(xs, numerators, denoms, value=scales)``, the rounding of torch's
        for-loop. :class:`ForeachOps` scales the numerators first, as torch's foreach code does
        (``_foreach_mul`` of the grads by ``s``, in place when ``scratch``: the numerators are the
        kernel's own temporaries), then ``_foreach_addcdiv_`` with value 1; that rounds ``n s`` to
        the tensors' dtype (visible for float16/bfloat16 and for tensor ``s``).
        """
        return self.addcdiv_(xs, numerators, denoms, scales)

    def step_size_lr(self, lr: Scalar) -> Scalar:
        """``lr`` as it enters per-parameter step sizes computed on the host: as it is (a tensor
        ``lr`` gives tensor step sizes, as in torch's for-loop NAdam). :class:`ForeachOps` with
        ``host_scalars`` reads a tensor with ``.item()``, as torch's foreach NAdam does
        (``_get_value(lr)``; its decoupled weight decay still uses the tensor)."""
        return lr

    # Always out of place --------------------------------------------------------------
    def neg(self, xs):
        return [torch.neg(x) for x in xs]

    def add(self, xs, others, alpha: ScalarArg = 1):
        """``x + alpha * other``; ``others`` is a list of tensors."""
        return [_add(x, o, _nth(alpha, i)) for i, (x, o) in enumerate(zip(xs, others))]

    def add_scalar(self, xs, value: ScalarArg):
        """``x + value`` for a scalar ``value`` (a tensor scalar is cast to ``x``'s dtype)."""
        return [x + _as_dtype_of(_nth(value, i), x) for i, x in enumerate(xs)]

    def square(self, xs):
        return [x * x for x in xs]

    def sqrt(self, xs):
        return [torch.sqrt(x) for x in xs]

    def clone(self, xs):
        return [x.clone() for x in xs]

    def addcmul(self, xs, t1s, t2s, value: ScalarArg = 1):
        """``x + v t1 t2`` as new tensors, ``xs`` unchanged (torch's out-of-place ``addcmul``:
        RMSprop's centered ``square_avg.addcmul(grad_avg, grad_avg, value=-1)``). By default
        :meth:`addcmul_` into copies, which rounds the same."""
        return self.addcmul_(self.clone(xs), t1s, t2s, value)

    def own(self, xs: list) -> list:
        """``xs``, tensors the kernel has just made, marked as its own temporaries: the out-of-place
        eager Ops may then overwrite them in their underscore operations (in-place Ops always do)."""
        return xs

    def writable(self, xs):
        """``xs`` as tensors the kernel may then update in place: copies (torch's ``.clone()``),
        except in :class:`PureOps`, which never writes and hands them back as they are."""
        return self.clone(xs)

    def rsqrt_at_least_(self, xs, bound: Scalar):
        """``1 / sqrt(max(x, bound))`` (Adafactor's update scale), in place where the Ops write in
        place: callers pass their own temporaries (see :meth:`writable`)."""
        return [torch.rsqrt(torch.clamp(x, min=_as_dtype_of(bound, x))) for x in xs]

    def norms(self, xs) -> list:
        """Each tensor's 2-norm, a 0-d tensor per tensor (Adafactor's RMS terms). The pure foreach
        path computes them with one ``torch._foreach_norm`` call."""
        return [x.norm(2) for x in xs]

    def outer_products(self, rows, cols):
        """``r @ c`` for column vectors ``r`` (``(..., n, 1)``) and row vectors ``c`` (``(..., 1, m)``),
        as torch's Adafactor forms its variance estimate: a product with one term per element.
        :class:`PureOps` writes it as the broadcast product ``r * c``, the same single rounding,
        which Inductor fuses with what follows instead of materializing a matmul's output."""
        return [r @ c for r, c in zip(rows, cols)]

    # RAdam, Adamax, ASGD, Rprop -------------------------------------------------------
    # List operations (out of place unless the name ends in ``_``), then the updates whose order
    # differs between torch's for-loop and foreach code. The defaults below are the pure path's
    # (per tensor, no host synchronisation); LoopOps and ForeachOps override them with torch's.

    def abs(self, xs):
        """``|x|`` as new tensors (Adamax's infinity norm)."""
        return [torch.abs(x) for x in xs]

    def sign(self, xs):
        """``sign(x)`` as new tensors (Rprop)."""
        return [torch.sign(x) for x in xs]

    def sign_(self, xs):
        """``sign(x)`` of the kernel's own temporaries, in place where the Ops write in place."""
        return self.sign(xs)

    def rprop_factors_(self, signs, eta_minus: Scalar, eta_plus: Scalar):
        """Rprop's step-size factors from the signs of ``g * prev`` (the kernel's temporaries):
        ``eta_plus`` where positive, ``eta_minus`` where negative, 1 where zero, NaN kept. Here one
        ``torch.where`` chain, out of place (compiles and vmaps without host synchronisation); the
        in-place Ops write the values into the signs (:func:`_fill_rprop_factors_`). Tensor etas
        are cast to the signs' dtype, as torch's assignment casts its numbers."""
        out = []
        for s in signs:
            minus, plus = _as_dtype_of(eta_minus, s), _as_dtype_of(eta_plus, s)
            out.append(torch.where(s > 0, plus, torch.where(s < 0, minus, torch.where(s == 0, 1.0, s))))
        return out

    def zero_where_equal_(self, xs, keys, value: Scalar):
        """``x`` with zeros where ``key == value`` (Rprop skips the elements whose step size it
        shrank), in place where the Ops write in place (:func:`_zero_where_equal_`)."""
        return [torch.where(k == _as_dtype_of(value, k), 0.0, x) for x, k in zip(xs, keys)]

    def mul(self, xs, other):
        """``x * o`` as new tensors; ``other`` is a list of tensors or a scalar argument. A tensor
        scalar is used as it is (torch multiplies by a 0-d tensor without rounding it to ``x``'s
        dtype first)."""
        return [x * _nth(other, i) for i, x in enumerate(xs)]

    def sub(self, xs, others):
        """``x - o`` as new tensors."""
        return [x - o for x, o in zip(xs, others)]

    def clamp_(self, xs, low: Scalar, high: Scalar):
        """``min(max(x, low), high)`` (Rprop's step sizes), in place where the Ops write in place."""
        return [torch.clamp(x, _as_dtype_of(low, x), _as_dtype_of(high, x)) for x in xs]

    def copy_(self, dsts, srcs):
        """``srcs`` (tensors, or one number or 0-d tensor per destination) written into ``dsts``, in
        place where the Ops write in place; here new tensors with the destinations' dtypes and devices."""
        out = []
        for i, d in enumerate(dsts):
            s = _nth(srcs, i)
            out.append(s.to(device=d.device, dtype=d.dtype) if isinstance(s, Tensor)
                       else torch.as_tensor(s, dtype=d.dtype, device=d.device))
        return out

    def rectified_update_(self, xs, exp_avgs, exp_avg_sqs, eps: Scalar, lr: Scalar, bias_corrections1: ScalarArg,
                          bias_corrections2: ScalarArg, rects: ScalarArg):
        """RAdam's update ``x - lr / b1 * m * (r sqrt(b2) / (sqrt(v) + eps) if r > 0 else 1)``.

        ``b1``, ``b2`` are the bias corrections ``1 - beta^t`` and ``r`` the variance rectification
        (0 where torch's ``rho_t <= 5`` skips it), one per tensor. The default is torch's capturable
        for-loop formula out of place (``torch.where`` picks the branch, no host synchronisation).
        :class:`LoopOps` follows torch's for-loop (a Python branch per tensor for host scalars,
        ``torch.where`` for tensor ones), :class:`ForeachOps` torch's foreach code, which folds
        both branches into one per-element factor ``1 / ((sqrt(v) + eps) / s_r) + s_u``.
        """
        out = []
        for i, (x, m, v) in enumerate(zip(xs, exp_avgs, exp_avg_sqs)):
            r, bc1, bc2 = _nth(rects, i), _nth(bias_corrections1, i), _nth(bias_corrections2, i)
            corrected = m * _as_dtype_of(lr / bc1, m)
            if not isinstance(r, Tensor):
                r = torch.as_tensor(r, dtype=torch.float64, device=x.device)
            adaptive = _as_dtype_of(r * bc2**0.5, v) / (torch.sqrt(v) + _as_dtype_of(eps, v))
            out.append(x - corrected * torch.where(r > 0, adaptive, 1.0))
        return out

    def decay_and_add_(self, xs, others, decay: Scalar, step_sizes):
        """``x - s (o + decay x)``, ``s`` one 0-d tensor per tensor (ASGD: ``decay = lambd``, ``s`` its
        ``eta``), computed as ``x (1 - decay s) - s o`` (torch's for-loop; ``s`` read as
        :meth:`scalar_values` reads it). :class:`LoopOps` with tensor scalars ends with
        ``addcmul_(o, s, value=-1)``, :class:`ForeachOps` computes ``x - s (o + decay x)``, as
        torch's capturable for-loop and its foreach code do."""
        sizes = self.scalar_values(step_sizes)
        xs = self.mul_(xs, self.per_param(lambda s: 1 - decay * s, sizes))
        return self.scale_and_add_(xs, others, self.per_param(lambda s: -s, sizes))

    def average_(self, axs, xs, weights):
        """``a + w (x - a)``, ``w`` one 0-d tensor per tensor (ASGD's running average ``ax`` with
        weight ``mu``); ``w == 1`` gives ``x`` itself, as torch's for-loop copies it then. Here
        ``torch.where`` decides (no host synchronisation); :class:`LoopOps` with host scalars reads
        ``w`` (``.item()``), :class:`ForeachOps` always adds ``(x - a) w`` (``addcmul_``), as torch's
        implementations do."""
        # ``(x - a) * w`` rounded to ``x``'s dtype, as ``mul_`` rounds it (0-d ``x`` would promote)
        return [torch.where(w == 1, x, a + ((x - a) * w).to(x.dtype)) for a, x, w in zip(axs, xs, weights)]

    def power_schedule(self, steps: Sequence[Tensor], lr: Scalar, decay: Scalar, power: Scalar):
        """``lr / (1 + decay lr t)^power`` from each step count ``t`` (ASGD's ``eta``), ``t`` read
        by :meth:`step_values`. :class:`ForeachOps` computes it from the step tensors themselves
        (in their dtype; capturable: ``lr * 1 / (t decay lr + 1)^power``), as torch's foreach
        ASGD does."""
        return self.per_param(lambda t: lr / ((1 + decay * lr * t) ** power), self.step_values(steps))


def _radam_adaptive_lr(v: Tensor, bias_correction2: Scalar, eps: Scalar) -> Tensor:
    """``sqrt(b2) / (sqrt(v) + eps)`` as torch's for-loop RAdam computes it (``eps`` added out of
    place under autograd, where ``sqrt``'s output is saved for backward)."""
    root = v.sqrt()
    root = root.add(eps) if torch.is_grad_enabled() else root.add_(eps)
    return (bias_correction2**0.5) / root


def _add(x: Tensor, other, alpha: Scalar) -> Tensor:
    if isinstance(alpha, Tensor):
        return x + other * _as_dtype_of(alpha, x)
    return torch.add(x, other, alpha=alpha)


def lerp(x: Tensor, end: Tensor, weight: Scalar) -> Tensor:
    """``x + weight (end - x)`` out of place, rounded exactly as torch's for-loop ``x.lerp_(end, w)``.

    torch's kernel picks its formula by the weight (``end - (end - x)(1 - w)`` for ``|w| >= 0.5``,
    so that ``w = 1`` gives ``end`` exactly), fuses the multiply-add, and computes float16/bfloat16
    in float32 with one final rounding; ``x + w * (e - x)`` written out differs from it (up to
    the whole value when ``w = 1``). So a tensor weight (the pure path's float64 step-derived
    scalars) goes to ``torch.lerp`` too, cast to the dtype torch would compute a Python weight
    in: the tensor's own, float32 for float16/bfloat16 (then the result is rounded back once).
    ``torch.lerp`` is differentiable in the weight, vmappable and traceable.
    """
    if not isinstance(weight, Tensor):
        return torch.lerp(x, end, weight)
    dtype = torch.promote_types(x.dtype, end.dtype)
    opmath = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    out = torch.lerp(x.to(opmath), end.to(opmath), weight.to(opmath))
    return out.to(dtype)


def _as_dtype_of(scalar: Scalar, like: Tensor) -> Scalar:
    """Cast a tensor scalar to ``like``'s dtype (keeps vmap/promotion behaviour predictable)."""
    if isinstance(scalar, Tensor) and scalar.dtype != like.dtype:
        return scalar.to(like.dtype)
    return scalar


def _fill_rprop_factors_(signs: list, eta_minus: Scalar, eta_plus: Scalar) -> list:
    """:meth:`Ops.rprop_factors_` in place: ``masked_fill_`` of ``eta_plus``, ``eta_minus`` and 1 in
    torch's order (its non-capturable code assigns through the same masks). The values are those of
    the ``torch.where`` chain; the signs are overwritten instead of three new tensors being made."""
    for s in signs:
        s.masked_fill_(s > 0, _as_dtype_of(eta_plus, s))
        s.masked_fill_(s < 0, _as_dtype_of(eta_minus, s))
        s.masked_fill_(s == 0, 1.0)
    return signs


def _zero_where_equal_(xs: list, keys: list, value: Scalar) -> list:
    """:meth:`Ops.zero_where_equal_` in place."""
    for x, k in zip(xs, keys):
        x.masked_fill_(k == _as_dtype_of(value, k), 0.0)
    return xs


class PureOps(Ops):
    """Out-of-place math; inputs are never mutated.

    Step-derived scalars (bias corrections ...) are float64 0-d tensors, which matches torch's
    default (host, double precision) scalar math without any host synchronisation.
    """

    host_scalars = False
    step_dtype = torch.float64

    def add(self, xs, others, alpha: ScalarArg = 1):
        # Written as ``x + other * alpha`` rather than ``torch.add(..., alpha=)``: with torch 2.13,
        # Inductor's pattern matcher miscompiles ``torch.add(grad, param, alpha=wd)`` when the grad
        # comes from ``torch.func.grad`` in the same graph (Adadelta's L2 term went wrong).
        return [x + o * _as_dtype_of(_nth(alpha, i), x) for i, (x, o) in enumerate(zip(xs, others))]

    def increment_(self, steps):
        return [s + 1 for s in steps]

    def add_(self, xs, other: ScalarArg | list, alpha: ScalarArg = 1):
        if isinstance(other, (list, tuple)) and other and isinstance(other[0], Tensor) and other[0].dim() > 0:
            return self.add(xs, other, alpha)
        return [x + _as_dtype_of(_nth(other, i), x) * _nth(alpha, i) for i, x in enumerate(xs)]

    def add_sparse_(self, x: Tensor, sparse: Tensor) -> Tensor:
        return x + sparse

    def mul_(self, xs, scalar: ScalarArg):
        return [x * _as_dtype_of(_nth(scalar, i), x) for i, x in enumerate(xs)]

    def mul_tensors_(self, xs, others):
        return [x * o for x, o in zip(xs, others)]

    def div_(self, xs, scalar: ScalarArg):
        return [x / _as_dtype_of(_nth(scalar, i), x) for i, x in enumerate(xs)]

    def div_tensors_(self, xs, others):
        return [x / o for x, o in zip(xs, others)]

    def lerp_(self, xs, ends, weight: ScalarArg):
        return [lerp(x, e, _nth(weight, i)) for i, (x, e) in enumerate(zip(xs, ends))]

    def addcmul_(self, xs, t1s, t2s, value: ScalarArg = 1):
        out = []
        for i, (x, a, b) in enumerate(zip(xs, t1s, t2s)):
            v = _as_dtype_of(_nth(value, i), x)
            out.append(torch.addcmul(x, a, b, value=v) if not isinstance(v, Tensor) else x + v * (a * b))
        return out

    def addcmul(self, xs, t1s, t2s, value: ScalarArg = 1):
        return PureOps.addcmul_(self, xs, t1s, t2s, value)  # (out of place already)

    def addcdiv_(self, xs, t1s, t2s, value: ScalarArg = 1):
        out = []
        for i, (x, a, b) in enumerate(zip(xs, t1s, t2s)):
            v = _as_dtype_of(_nth(value, i), x)
            out.append(torch.addcdiv(x, a, b, value=v) if not isinstance(v, Tensor) else x + v * (a / b))
        return out

    def maximum_(self, xs, others):
        return [torch.maximum(x, o) for x, o in zip(xs, others)]

    def writable(self, xs):
        return xs  # nothing is ever written in place here

    def outer_products(self, rows, cols):
        return [r * c for r, c in zip(rows, cols)]

    def sqrt_(self, xs):
        return self.sqrt(xs)

    def sub(self, xs, others):
        """``x - other`` (the updates ``new_params - params``)."""
        return [x - o for x, o in zip(xs, others)]


class LoopOps(Ops):
    """In-place math, one tensor at a time (torch's for-loop implementation)."""

    def __init__(self, host_scalars: bool = True):
        self.host_scalars = host_scalars

    def _values(self, scalar: ScalarArg, n: int) -> list:
        """Per-tensor ``value=``/``alpha=`` arguments: torch passes a tensor there as a Python
        number (read on the host) unless it must stay a tensor (capturable/autograd)."""
        values = list(scalar) if isinstance(scalar, (list, tuple)) else [scalar] * n
        if self.host_scalars:
            values = [v.item() if isinstance(v, Tensor) and not v.requires_grad else v for v in values]
        return values

    def sqrt(self, xs):
        # A temporary may be updated in place by later ops; under autograd sqrt's backward saves
        # its output, so hand out a copy that is safe to mutate (differentiable=True only).
        if torch.is_grad_enabled():
            return [torch.sqrt(x).clone() for x in xs]
        return [torch.sqrt(x) for x in xs]

    def increment_(self, steps):
        for s in steps:
            s += 1
        return steps

    def add_(self, xs, other: ScalarArg | list, alpha: ScalarArg = 1):
        others = list(other) if isinstance(other, (list, tuple)) else [other] * len(xs)
        if isinstance(alpha, (int, float)):  # the common case: no per-tensor value to read
            for x, o in zip(xs, others):
                x.add_(o, alpha=alpha)
            return xs
        for x, o, a in zip(xs, others, self._values(alpha, len(xs))):
            if isinstance(a, Tensor):
                x.add_(o * a)
            else:
                x.add_(o, alpha=a)
        return xs

    def add_sparse_(self, x: Tensor, sparse: Tensor) -> Tensor:
        return x.add_(sparse)

    def mul_(self, xs, scalar: ScalarArg):
        if isinstance(scalar, (list, tuple)):
            for x, v in zip(xs, scalar):
                x.mul_(v)
        else:
            for x in xs:
                x.mul_(scalar)
        return xs

    def mul_tensors_(self, xs, others):
        for x, o in zip(xs, others):
            x.mul_(o)
        return xs

    def div_(self, xs, scalar: ScalarArg):
        if isinstance(scalar, (list, tuple)):
            for x, v in zip(xs, scalar):
                x.div_(v)
        else:
            for x in xs:
                x.div_(scalar)
        return xs

    def div_tensors_(self, xs, others):
        for x, o in zip(xs, others):
            x.div_(o)
        return xs

    def lerp_(self, xs, ends, weight: ScalarArg):
        weights = list(weight) if isinstance(weight, (list, tuple)) else [weight] * len(xs)
        for x, e, w in zip(xs, ends, weights):
            x.lerp_(e, w)
        return xs

    def addcmul(self, xs, t1s, t2s, value: ScalarArg = 1):
        # torch's for-loop: one out-of-place addcmul per tensor; under autograd (differentiable)
        # the default, whose copies keep the operands saved for backward from later in-place updates
        if isinstance(value, (int, float)) and not torch.is_grad_enabled():
            return [torch.addcmul(x, a, b, value=value) for x, a, b in zip(xs, t1s, t2s)]
        return super().addcmul(xs, t1s, t2s, value)

    def addcmul_(self, xs, t1s, t2s, value: ScalarArg = 1):
        keep = torch.is_grad_enabled()  # under autograd, operands saved for backward are copied
        for x, a, b, v in zip(xs, t1s, t2s, self._values(value, len(xs))):
            if keep:
                a, b = a.clone(), b.clone()
            if isinstance(v, Tensor):
                x.add_(a * b * v)
            else:
                x.addcmul_(a, b, value=v)
        return xs

    def addcdiv_(self, xs, t1s, t2s, value: ScalarArg = 1):
        keep = torch.is_grad_enabled()  # under autograd, operands saved for backward are copied
        for x, a, b, v in zip(xs, t1s, t2s, self._values(value, len(xs))):
            if keep:
                a, b = a.clone(), b.clone()
            if isinstance(v, Tensor):
                x.add_(torch.div(a, b).mul_(v))
            else:
                x.addcdiv_(a, b, value=v)
        return xs

    def maximum_(self, xs, others):
        if torch.is_grad_enabled():  # operands saved for backward must not change later: copy them
            for x, o in zip(xs, others):
                x.copy_(torch.maximum(x.clone(), o.clone()))
        else:
            for x, o in zip(xs, others):
                torch.maximum(x, o, out=x)
        return xs

    def rsqrt_at_least_(self, xs, bound: Scalar):
        for x in xs:
            x.clamp_(min=bound).rsqrt_()
        return xs

    def sqrt_(self, xs):
        for x in xs:
            x.sqrt_()
        return xs

    def sqrt_div(self, xs, divisors: ScalarArg):
        """``(x / d).sqrt()``: torch's single-tensor NAdam order (see :meth:`Ops.sqrt_div`)."""
        return self.sqrt([torch.div(x, _nth(divisors, i)) for i, x in enumerate(xs)])

    def add_scaled_quotients_(self, xs, terms: Sequence[tuple], denoms):
        """``x.addcdiv_(t_k * v_k, d)`` per term, as torch's for-loop does with tensor step sizes."""
        for ts, values in terms:
            for i, (x, t, d) in enumerate(zip(xs, ts, denoms)):
                x.addcdiv_(t * _nth(values, i), d)
        return xs

    def addcdiv_sqrt_(self, xs, numerators, squares, root_divisors: ScalarArg, eps: Scalar, values: ScalarArg):
        """Without host scalars, ``x.addcdiv_(n, sqrt(s) / (r v) + eps / v)`` as torch's capturable and
        differentiable for-loop Adam folds the step size into the denominator (see :meth:`Ops.addcdiv_sqrt_`)."""
        if self.host_scalars:
            return super().addcdiv_sqrt_(xs, numerators, squares, root_divisors, eps, values)
        keep = torch.is_grad_enabled()  # under autograd, a numerator saved for backward is copied
        for i, (x, n, s) in enumerate(zip(xs, numerators, squares)):
            v = _nth(values, i)
            denom = (s.sqrt() / (_nth(root_divisors, i) * v)).add_(eps / v)
            x.addcdiv_(n.clone() if keep else n, denom)
        return xs

    def scale_and_add_(self, xs, others, scales: ScalarArg, scratch: bool = False):
        """``x.add_(o, alpha=s)`` with ``s`` read as a number, as torch's for-loop does also when
        capturable or differentiable (a tensor that requires grad, or one met while compiling, is
        kept: see :meth:`Ops.scale_and_add_`)."""
        if isinstance(scales, (int, float)):
            return self.add_(xs, others, alpha=scales)
        keep = torch.compiler.is_compiling()
        alphas = []
        for i, x in enumerate(xs):
            s = _nth(scales, i)
            if isinstance(s, Tensor):
                s = _as_dtype_of(s, x) if keep or s.requires_grad else s.item()
            alphas.append(s)
        return self.add_(xs, others, alpha=alphas)

    # RAdam, Adamax, ASGD, Rprop: torch's for-loop order (see the Ops methods) ----------
    def mul(self, xs, other):
        """``x * o``; under autograd a tensor ``o`` is multiplied as a copy, since it may be updated
        in place later (torch's differentiable Rprop multiplies by ``prev.clone()``)."""
        keep = torch.is_grad_enabled()
        out = []
        for i, x in enumerate(xs):
            o = _nth(other, i)
            out.append(x * (o.clone() if keep and isinstance(o, Tensor) else o))
        return out

    def clamp_(self, xs, low: Scalar, high: Scalar):
        for x in xs:
            x.clamp_(low, high)
        return xs

    def sign_(self, xs):
        return [x.sign_() for x in xs]

    rprop_factors_ = staticmethod(_fill_rprop_factors_)
    zero_where_equal_ = staticmethod(_zero_where_equal_)

    def copy_(self, dsts, srcs):
        """``d.copy_(s)``; a number is made a tensor first (``torch.as_tensor``: the default dtype),
        as torch's ASGD does with its new ``eta`` and ``mu``."""
        for d, s in zip(dsts, srcs):
            d.copy_(s if isinstance(s, Tensor) else torch.as_tensor(s))
        return dsts

    def rectified_update_(self, xs, exp_avgs, exp_avg_sqs, eps: Scalar, lr: Scalar, bias_corrections1: ScalarArg,
                          bias_corrections2: ScalarArg, rects: ScalarArg):
        """torch's for-loop RAdam: ``x.add_(m / b1 * lr * adaptive * r, alpha=-1)`` where ``r > 0``
        (``rho_t > 5``), ``x.add_(m / b1 * lr, alpha=-1)`` elsewhere; with tensor scalars (capturable)
        ``torch.where(r > 0, r * adaptive, 1)`` (see :meth:`Ops.rectified_update_`)."""
        for i, (x, m, v) in enumerate(zip(xs, exp_avgs, exp_avg_sqs)):
            r, bc1, bc2 = rects[i], bias_corrections1[i], bias_corrections2[i]
            corrected = m / bc1
            if isinstance(r, Tensor):
                x.add_(corrected * lr * torch.where(r > 0, r * _radam_adaptive_lr(v, bc2, eps), 1.0), alpha=-1.0)
            elif r > 0:
                x.add_(corrected * lr * _radam_adaptive_lr(v, bc2, eps) * r, alpha=-1.0)
            else:
                x.add_(corrected * lr, alpha=-1.0)
        return xs

    def decay_and_add_(self, xs, others, decay: Scalar, step_sizes):
        """Host scalars: the default; tensor ones: ``x.mul_(1 - decay s)``, ``x.addcmul_(o, s, value=-1)``."""
        if self.host_scalars:
            return super().decay_and_add_(xs, others, decay, step_sizes)
        xs = self.mul_(xs, [1 - decay * s for s in step_sizes])
        return self.addcmul_(xs, others, list(step_sizes), -1)

    def average_(self, axs, xs, weights):
        """``a.add_(x.sub(a).mul_(w))``, or ``a.copy_(x)`` where a host ``w`` is 1 (torch's for-loop)."""
        for a, x, w in zip(axs, xs, weights):
            if not self.host_scalars or w.item() != 1:
                a.add_(x.sub(a).mul_(w))
            else:
                a.copy_(x)
        return axs


#: whether this torch's ``_foreach_lerp_`` takes one number per tensor (the ``ScalarList``
#: overload, which torch's foreach Adafactor calls); without it, one ``lerp_`` per tensor
FOREACH_LERP_HAS_NUMBER_LIST = "ScalarList" in torch.ops.aten._foreach_lerp_.overloads()


def _is_tensor_list(scalar) -> bool:
    # (len, not bool(list): torch 2.11's Dynamo cannot trace bool of a list, and fell back to eager)
    return isinstance(scalar, (list, tuple)) and len(scalar) > 0 and isinstance(scalar[0], Tensor)


class ForeachOps(Ops):
    """In-place math over whole lists with ``torch._foreach_*`` (torch's foreach implementation).

    The lists handed to these methods must share one device and dtype (the compat layer groups
    them as torch does).
    """

    def __init__(self, host_scalars: bool = True):
        self.host_scalars = host_scalars

    def neg(self, xs):
        return list(torch._foreach_neg(xs))

    def add(self, xs, others, alpha: ScalarArg = 1):
        if isinstance(alpha, (list, tuple)) or isinstance(alpha, Tensor):
            return super().add(xs, others, alpha)
        return list(torch._foreach_add(xs, others, alpha=alpha))

    def add_scalar(self, xs, value: ScalarArg):
        if _is_tensor_list(value):
            return super().add_scalar(xs, value)
        return list(torch._foreach_add(xs, value))

    def square(self, xs):
        return list(torch._foreach_mul(xs, xs))

    def sqrt(self, xs):
        return list(torch._foreach_sqrt(xs))

    def increment_(self, steps):
        if steps and steps[0].is_cpu and not torch.compiler.is_compiling():
            # one wrapped CPU scalar instead of one per tensor (as torch does)
            torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
        else:
            torch._foreach_add_(steps, 1)
        return steps

    def add_(self, xs, other: ScalarArg | list, alpha: ScalarArg = 1):
        if isinstance(alpha, (list, tuple)) or isinstance(alpha, Tensor):
            other = torch._foreach_mul(other, alpha) if isinstance(other, (list, tuple)) else other * alpha
            alpha = 1
        if isinstance(other, (list, tuple)) and other and isinstance(other[0], Tensor) and other[0].dim() > 0:
            torch._foreach_add_(xs, other, alpha=alpha)
        elif alpha == 1:
            torch._foreach_add_(xs, other)
        else:
            torch._foreach_add_(xs, [o * alpha for o in other] if isinstance(other, (list, tuple)) else other * alpha)
        return xs

    def mul_(self, xs, scalar: ScalarArg):
        torch._foreach_mul_(xs, scalar)
        return xs

    def mul_tensors_(self, xs, others):
        torch._foreach_mul_(xs, others)
        return xs

    def div_(self, xs, scalar: ScalarArg):
        torch._foreach_div_(xs, scalar)
        return xs

    def div_tensors_(self, xs, others):
        torch._foreach_div_(xs, others)
        return xs

    def lerp_(self, xs, ends, weight: ScalarArg):
        if isinstance(weight, (list, tuple)):
            if _is_tensor_list(weight):
                weight = [w.to(x.dtype).expand_as(x) for w, x in zip(weight, xs)]
                torch._foreach_lerp_(xs, ends, weight)
            elif FOREACH_LERP_HAS_NUMBER_LIST:
                torch._foreach_lerp_(xs, ends, list(weight))
            else:
                for x, e, w in zip(xs, ends, weight):
                    x.lerp_(e, w)
        else:
            torch._foreach_lerp_(xs, ends, weight)
        return xs

    def addcmul(self, xs, t1s, t2s, value: ScalarArg = 1):
        if isinstance(value, (int, float)) and not torch.is_grad_enabled():  # torch's foreach code
            return list(torch._foreach_addcmul(xs, t1s, t2s, value))
        return super().addcmul(xs, t1s, t2s, value)

    def addcmul_(self, xs, t1s, t2s, value: ScalarArg = 1):
        if isinstance(value, Tensor) or _is_tensor_list(value):
            prod = torch._foreach_mul(t1s, value if isinstance(value, Tensor) else list(value))
            torch._foreach_addcmul_(xs, prod, t2s)
        else:
            torch._foreach_addcmul_(xs, t1s, t2s, value)
        return xs

    def addcdiv_(self, xs, t1s, t2s, value: ScalarArg = 1):
        if isinstance(value, Tensor) or _is_tensor_list(value):
            quotient = torch._foreach_div(t1s, t2s)
            torch._foreach_mul_(quotient, value if isinstance(value, Tensor) else list(value))
            torch._foreach_add_(xs, quotient)
        else:
            torch._foreach_addcdiv_(xs, t1s, t2s, value)
        return xs

    def maximum_(self, xs, others):
        torch._foreach_maximum_(xs, others)
        return xs

    def rsqrt_at_least_(self, xs, bound: Scalar):
        if isinstance(bound, Tensor):
            return super().rsqrt_at_least_(xs, bound)
        torch._foreach_clamp_min_(xs, bound)
        torch._foreach_rsqrt_(xs)
        return xs

    def sqrt_(self, xs):
        torch._foreach_sqrt_(xs)
        return xs

    def next_step_times(self, steps: Sequence[Scalar], factor: Scalar) -> list:
        """``t * factor + factor`` for tensor steps (torch's capturable foreach code), else the default."""
        if steps and isinstance(steps[0], Tensor):
            return [t * factor + factor for t in steps]
        return super().next_step_times(steps, factor)

    def add_scaled_quotients_(self, xs, terms: Sequence[tuple], denoms):
        """One ``_foreach_addcdiv_`` of ``sum_k v_k t_k`` for tensor step sizes, as torch's capturable
        foreach code builds its numerator (``_foreach_mul``, then ``_foreach_addcmul_``)."""
        if not all(_is_tensor_list(v) or isinstance(v, Tensor) for _, v in terms):
            return super().add_scaled_quotients_(xs, terms, denoms)
        per_tensor = lambda values: [_nth(values, i) for i in range(len(xs))]  # noqa: E731
        (first, first_values), *rest = terms
        numerators = torch._foreach_mul(per_tensor(first_values), first)
        for ts, values in rest:
            torch._foreach_addcmul_(numerators, per_tensor(values), ts)
        torch._foreach_addcdiv_(xs, numerators, denoms)
        return xs

    def neg_quotients(self, numerator: Scalar, denominators: Sequence[Scalar]) -> list:
        """``1 / (-d / n)`` for tensor ``d``, as torch's capturable foreach Adam computes its step
        sizes (``_foreach_div_``, ``_foreach_reciprocal_``); else the default ``-(n / d)``."""
        if not _is_tensor_list(denominators):
            return super().neg_quotients(numerator, denominators)
        quotients = torch._foreach_neg(denominators)
        torch._foreach_div_(quotients, numerator)
        torch._foreach_reciprocal_(quotients)
        return list(quotients)

    def addcdiv_sqrt_(self, xs, numerators, squares, root_divisors: ScalarArg, eps: Scalar, values: ScalarArg):
        """Without host scalars, ``x + n / ((sqrt(s) / r + eps) / v)`` as torch's capturable foreach
        Adam folds the step size into the denominator (see :meth:`Ops.addcdiv_sqrt_`)."""
        if self.host_scalars:
            return super().addcdiv_sqrt_(xs, numerators, squares, root_divisors, eps, values)
        denoms = torch._foreach_sqrt(squares)
        torch._foreach_div_(denoms, [_nth(root_divisors, i) for i in range(len(xs))])
        torch._foreach_add_(denoms, eps)
        torch._foreach_div_(denoms, [_nth(values, i) for i in range(len(xs))])
        torch._foreach_addcdiv_(xs, numerators, denoms)
        return xs

    def scale_and_add_(self, xs, others, scales: ScalarArg, scratch: bool = False):
        """``_foreach_mul_(others, s)`` (in place when ``scratch``), then ``_foreach_add_``, for one
        ``s`` per tensor or a tensor ``s``; ``_foreach_add_`` with ``alpha=s`` for a number (see
        :meth:`Ops.scale_and_add_`)."""
        if not (isinstance(scales, (list, tuple)) or isinstance(scales, Tensor)):
            torch._foreach_add_(xs, others, alpha=scales)
            return xs
        scales = list(scales) if isinstance(scales, (list, tuple)) else scales
        if scratch:
            torch._foreach_mul_(others, scales)
        else:
            others = torch._foreach_mul(others, scales)
        torch._foreach_add_(xs, others)
        return xs

    def scale_and_addcdiv_(self, xs, numerators, denoms, scales: ScalarArg, scratch: bool = False):
        """``_foreach_mul`` of the numerators by ``s`` (in place when ``scratch``), then
        ``_foreach_addcdiv_`` with value 1, as torch's foreach Adagrad (see :meth:`Ops.scale_and_addcdiv_`)."""
        scales = list(scales) if isinstance(scales, (list, tuple)) else scales
        if scratch:
            torch._foreach_mul_(numerators, scales)
        else:
            numerators = torch._foreach_mul(numerators, scales)
        torch._foreach_addcdiv_(xs, numerators, denoms)
        return xs

    def step_size_lr(self, lr: Scalar) -> Scalar:
        """A tensor ``lr`` read with ``.item()`` when ``host_scalars``, as torch's foreach NAdam does
        for its step sizes (see :meth:`Ops.step_size_lr`)."""
        if self.host_scalars and isinstance(lr, Tensor):
            return lr.item()
        return lr

    # RAdam, Adamax, ASGD, Rprop: torch's foreach order (see the Ops methods) -----------
    def abs(self, xs):
        return list(torch._foreach_abs(xs))

    def sign(self, xs):
        return list(torch._foreach_sign(xs))

    def mul(self, xs, other):
        return list(torch._foreach_mul(xs, list(other) if isinstance(other, tuple) else other))

    def sub(self, xs, others):
        return list(torch._foreach_sub(xs, others))

    def clamp_(self, xs, low: Scalar, high: Scalar):
        for x in xs:  # one tensor at a time, as torch's foreach Rprop clamps
            x.clamp_(low, high)
        return xs

    def sign_(self, xs):
        torch._foreach_sign_(xs)
        return xs

    rprop_factors_ = staticmethod(_fill_rprop_factors_)
    zero_where_equal_ = staticmethod(_zero_where_equal_)

    def copy_(self, dsts, srcs):
        """``_foreach_copy_``; numbers are made tensors on the destination's device first."""
        srcs = [s if isinstance(s, Tensor) else torch.as_tensor(s, device=d.device) for d, s in zip(dsts, srcs)]
        torch._foreach_copy_(dsts, srcs)
        return dsts

    def rectified_update_(self, xs, exp_avgs, exp_avg_sqs, eps: Scalar, lr: Scalar, bias_corrections1: ScalarArg,
                          bias_corrections2: ScalarArg, rects: ScalarArg):
        """torch's foreach RAdam: the rectified step size ``s_r = -sqrt(b2) lr r / b1`` and the plain
        one ``s_u = -lr [r == 0] / b1`` (as torch forms them, host numbers or 0-d tensors), then
        ``x += m * (1 / ((sqrt(v) + eps) / s_r) + s_u)`` (see :meth:`Ops.rectified_update_`)."""
        if _is_tensor_list(rects):
            plain = [torch.where(r > 0, 0.0, 1.0) for r in rects]
            torch._foreach_mul_(plain, lr)
            torch._foreach_div_(plain, bias_corrections1)
            torch._foreach_neg_(plain)
            rectified = torch._foreach_sqrt(bias_corrections2)
            torch._foreach_mul_(rectified, lr)
            torch._foreach_mul_(rectified, rects)
            torch._foreach_neg_(rectified)
            torch._foreach_div_(rectified, bias_corrections1)
        else:
            plain = [(lr * (0 if r > 0 else 1.0) / bc1) * -1 for r, bc1 in zip(rects, bias_corrections1)]
            rectified = [(bc2**0.5) * (lr * r / bc1) * -1
                         for r, bc1, bc2 in zip(rects, bias_corrections1, bias_corrections2)]
        factors = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(factors, eps)
        torch._foreach_div_(factors, rectified)
        torch._foreach_reciprocal_(factors)
        torch._foreach_add_(factors, plain)
        torch._foreach_addcmul_(xs, exp_avgs, factors)
        return xs

    def decay_and_add_(self, xs, others, decay: Scalar, step_sizes):
        """``x + (o + decay x) * s * -1``: ``_foreach_add``, ``_foreach_addcmul_`` with the tensors ``s``."""
        intermediate = torch._foreach_add(others, xs, alpha=decay)
        torch._foreach_addcmul_(xs, intermediate, list(step_sizes), value=-1)
        return xs

    def average_(self, axs, xs, weights):
        torch._foreach_addcmul_(axs, torch._foreach_sub(xs, axs), list(weights))
        return axs

    def power_schedule(self, steps: Sequence[Tensor], lr: Scalar, decay: Scalar, power: Scalar):
        """From the step tensors: ``lr / (1 + decay lr t)^power`` with host scalars, else torch's
        capturable foreach order (``t decay lr + 1``, ``pow``, ``reciprocal``, ``* lr``)."""
        if self.host_scalars:
            return [lr / ((1 + decay * lr * t) ** power) for t in steps]
        rates = torch._foreach_mul(list(steps), decay)
        torch._foreach_mul_(rates, lr)
        torch._foreach_add_(rates, 1)
        torch._foreach_pow_(rates, power)
        torch._foreach_reciprocal_(rates)
        torch._foreach_mul_(rates, lr)
        return list(rates)


PURE = PureOps()

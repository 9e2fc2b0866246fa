"""The pure math as whole-list operations for ``torch.compile``: what a compiled ``update`` runs.

:class:`~functional_optim._kernels.ops.PureOps` writes one tensor operation per parameter. Under
``torch.compile`` Inductor fuses each parameter's chain of operations into one kernel, but on a
GPU it launches one kernel per parameter and one more per parameter's scalar chain (the bias
corrections from its step count): the compiled Adam step on 27 tensors launched 58 Triton
kernels on an H200 for 0.19 ms of GPU work and took 1.37-1.75 ms, where torch's fused Adam took
0.31 ms (``benchmarks/results/cuda-nvidia-h200-profile.txt``).

:class:`CompiledOps` computes :class:`PureOps`' formulas, operation for operation, with torch's
out-of-place ``torch._foreach_*`` operations, and the per-parameter scalar math with
``torch._higher_order_ops.foreach_map``. Inductor lowers a foreach operation over many tensors
to one horizontally fused ("combo") kernel on GPUs, and fuses a chain of them (and the
per-tensor operations feeding them) into it, as it does for ``torch.compile`` of torch's own
foreach optimizer steps; ``foreach_map`` computes the per-parameter scalars in one such kernel
and stores them, so they are computed once, not once per element (the kernels route every
per-parameter scalar they use per element through :meth:`CompiledOps.per_param`).

On the CPU Inductor lowers a foreach operation to the same per-tensor loops as the per-tensor
operations (its C++ code fuses them either way), so the compiled step computes what it computed
with :class:`PureOps`, bit for bit (``tests/test_compiled_ops.py``). Where an operation's
foreach form would round differently (``torch._foreach_lerp`` is decomposed as
``x + w (e - x)``, which is not ``torch.lerp``; torch 2.11 decomposes the foreach ``addcmul`` and
``addcdiv``; a foreach operation over tensors of different dtypes promotes differently) the
per-tensor form is kept.

It is chosen under ``torch.compile`` where nothing needs the per-tensor form: plain tensors, no
input that requires grad (differentiating through a compiled update), no functorch transform
(see :func:`~functional_optim._kernels.eager.eager_ops_for`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .ops import PureOps, Scalar, ScalarArg

try:  # torch >= 2.7
    from torch._higher_order_ops.foreach_map import foreach_map as _foreach_map
except ImportError:  # pragma: no cover - older torch: per-parameter scalar math as PureOps does it
    _foreach_map = None

__all__ = ["CompiledOps", "COMPILED", "COMPILED_SCALARS_PER_PARAM", "FOREACH_FUSING_DEVICES"]

#: devices whose Inductor backend fuses foreach operations horizontally (and stores what
#: ``foreach_map`` computes); elsewhere (the CPU) the lowering is per tensor
FOREACH_FUSING_DEVICES = ("cuda", "xpu")


def _tensors(xs: Any) -> bool:
    """A non-empty list or tuple of tensors."""
    return isinstance(xs, (list, tuple)) and len(xs) > 0 and all(isinstance(x, Tensor) for x in xs)


def _alike(xs: Sequence[Tensor], *lists: Sequence[Any]) -> bool:
    """Whether ``xs`` is a list of tensors and each of ``lists`` holds, position by position,
    tensors of ``xs``' dtype and device: a foreach operation over them then computes what the
    per-tensor operations compute."""
    if not _tensors(xs):
        return False
    for others in lists:
        if not _tensors(others) or len(others) != len(xs):
            return False
        if any(o.dtype != x.dtype or o.device != x.device for x, o in zip(xs, others)):
            return False
    return True


def _number(x: Any) -> bool:
    """A Python number a foreach operation takes as its scalar (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _cast_scalars(scalar: ScalarArg, xs: Sequence[Tensor]):
    """A scalar argument as a foreach operation over the list of tensors ``xs`` takes it, each
    value cast to its tensor's dtype as :class:`PureOps` casts it: a number as it is, a 0-d tensor
    once (``xs`` of one dtype and device), one tensor per parameter (a list or a 1-D vector) each
    to its tensor's dtype; ``None`` where the foreach form would not compute the same (``xs`` not a
    list of tensors, numbers per parameter, other devices)."""
    if not _alike(xs):
        return None
    if _number(scalar):
        return scalar
    if isinstance(scalar, Tensor) and scalar.dim() == 1:
        scalar = list(scalar.unbind())
    if isinstance(scalar, Tensor):
        if scalar.dim() != 0 or any(x.dtype != xs[0].dtype or x.device != scalar.device for x in xs):
            return None
        return scalar if scalar.dtype == xs[0].dtype else scalar.to(xs[0].dtype)
    if not _tensors(scalar) or len(scalar) != len(xs):
        return None
    if any(s.dim() != 0 or s.device != x.device for s, x in zip(scalar, xs)):
        return None
    return [s if s.dtype == x.dtype else s.to(x.dtype) for s, x in zip(scalar, xs)]


_ADDC_ROUNDS_AS_PER_TENSOR: list = []


@torch._dynamo.assume_constant_result
def _foreach_addc_rounds_as_per_tensor() -> bool:
    """Whether Inductor computes ``torch._foreach_addcmul``/``_foreach_addcdiv`` with a number
    ``value`` as it computes ``torch.addcmul``/``torch.addcdiv`` (torch 2.13: one lowering for
    both). torch 2.11's Inductor decomposes the foreach forms into ``x + v (a * b)``, which rounds
    otherwise than its per-tensor ``addcmul`` (measured: Adam, RMSprop, NAdam ... an ulp apart);
    there the per-tensor form is kept. Asked once, outside the traced code (importing Inductor's
    decomposition table takes a second)."""
    if not _ADDC_ROUNDS_AS_PER_TENSOR:
        from torch._inductor.decomposition import decompositions

        aten = torch.ops.aten
        _ADDC_ROUNDS_AS_PER_TENSOR.append(aten._foreach_addcmul.Scalar not in decompositions
                                          and aten._foreach_addcdiv.Scalar not in decompositions)
    return _ADDC_ROUNDS_AS_PER_TENSOR[0]


def _is_one(x: Any) -> bool:
    return _number(x) and x == 1


class CompiledOps(PureOps):
    """:class:`PureOps`' formulas as ``torch._foreach_*`` operations over whole lists, and the
    per-parameter scalar math as one ``foreach_map`` (see the module docstring). Every method
    falls back to the per-tensor form where its foreach form would not compute the same.

    ``map_scalars=False`` keeps the per-parameter scalar math per parameter (:class:`PureOps`'):
    for tensor hyperparameters on another device than the parameters (``torch.tensor(1e-3)`` on
    the CPU with CUDA parameters), which the kernels' scalar functions capture and which a
    ``foreach_map`` over CUDA scalars would take into its subgraph, a case no test of this
    project has run on a GPU yet."""

    def __init__(self, map_scalars: bool = True) -> None:
        self.map_scalars = map_scalars

    # ------------------------------------------------------------------ scalars
    def per_param(self, fn: Callable[..., Any], *values: Any):
        """``fn`` over each parameter's scalars, as one ``foreach_map`` (one fused kernel, its
        results stored) where every argument is one tensor per parameter on
        :data:`FOREACH_FUSING_DEVICES`; elsewhere per parameter, as :class:`PureOps` does it.

        The arguments enter as copies (``clone``, which Inductor inlines): a higher-order op takes
        no inputs that alias each other, and per-parameter scalars may be views of one buffer
        (step counters made by an eager ``init`` on an accelerator, a state loaded from one)."""
        if (self.map_scalars and _foreach_map is not None and values and all(_tensors(v) for v in values)
                and len({len(v) for v in values}) == 1
                and all(x.device.type in FOREACH_FUSING_DEVICES for v in values for x in v)):
            return list(_foreach_map(fn, *([x.clone() for x in v] for v in values)))
        return super().per_param(fn, *values)

    def realize(self, scalars: list) -> list:
        """On :data:`FOREACH_FUSING_DEVICES` the scalars as they are: the kernels realize what
        :meth:`per_param` computed (Inductor stores a ``foreach_map``'s results), and what else
        they realize is a product or quotient of hyperparameters (Muon's step sizes), cheaper to
        recompute than to load. Elsewhere :meth:`PureOps.realize` (the CPU's Inductor inlines a
        ``foreach_map`` into its users, so it would recompute the scalars per element)."""
        if self.map_scalars and _tensors(scalars) and all(s.device.type in FOREACH_FUSING_DEVICES for s in scalars):
            return list(scalars)
        return super().realize(scalars)

    def neg_quotients(self, numerator: Scalar, denominators: Sequence[Scalar]):
        if _tensors(denominators):
            return self.per_param(lambda d: -(numerator / d), denominators)
        return super().neg_quotients(numerator, denominators)

    def next_step_times(self, steps: Sequence[Scalar], factor: Scalar):
        if _tensors(steps):
            return self.per_param(lambda t: (t + 1) * factor, steps)
        return super().next_step_times(steps, factor)

    def sqrt_div(self, xs, divisors: ScalarArg):
        if _tensors(divisors) and len(divisors) == len(xs):
            return self.div_(self.sqrt(xs), self.realize(self.per_param(lambda d: d**0.5, divisors)))
        return super().sqrt_div(xs, divisors)

    def increment_(self, steps):
        if _alike(steps):
            return list(torch._foreach_add(steps, 1))
        return super().increment_(steps)

    # ------------------------------------------------------------------ list math
    def _scaled(self, xs, scalar: ScalarArg):
        """``x * s`` over the list where the foreach form computes it, else ``None``."""
        cast = _cast_scalars(scalar, xs)
        return None if cast is None else list(torch._foreach_mul(xs, cast))

    def neg(self, xs):
        return list(torch._foreach_neg(xs)) if _alike(xs) else super().neg(xs)

    def add(self, xs, others, alpha: ScalarArg = 1):
        if _alike(xs, others):
            if _is_one(alpha):
                return list(torch._foreach_add(xs, others))
            scaled = self._scaled(others, alpha)
            if scaled is not None:
                return list(torch._foreach_add(xs, scaled))
        return super().add(xs, others, alpha)

    def add_(self, xs, other, alpha: ScalarArg = 1):
        if isinstance(other, (list, tuple)) and other and isinstance(other[0], Tensor) and other[0].dim() > 0:
            return self.add(xs, other, alpha)
        if _alike(xs) and _is_one(alpha):
            return self.add_scalar(xs, other)
        return super().add_(xs, other, alpha)

    def add_scalar(self, xs, value: ScalarArg):
        cast = _cast_scalars(value, xs)
        return super().add_scalar(xs, value) if cast is None else list(torch._foreach_add(xs, cast))

    def square(self, xs):
        return list(torch._foreach_mul(xs, xs)) if _alike(xs) else super().square(xs)

    def sqrt(self, xs):
        return list(torch._foreach_sqrt(xs)) if _alike(xs) else super().sqrt(xs)

    def sqrt_(self, xs):
        return self.sqrt(xs)

    def abs(self, xs):
        return list(torch._foreach_abs(xs)) if _alike(xs) else super().abs(xs)

    def sign(self, xs):
        return list(torch._foreach_sign(xs)) if _alike(xs) else super().sign(xs)

    def sign_(self, xs):
        return self.sign(xs)

    def mul_(self, xs, scalar: ScalarArg):
        scaled = self._scaled(xs, scalar)
        return super().mul_(xs, scalar) if scaled is None else scaled

    def mul(self, xs, other):
        # (PureOps multiplies by a tensor scalar without casting it: only lists of xs' dtypes here)
        if _alike(xs, other) or (_number(other) and _alike(xs)):
            return list(torch._foreach_mul(xs, list(other) if isinstance(other, tuple) else other))
        return super().mul(xs, other)

    def mul_tensors_(self, xs, others):
        return list(torch._foreach_mul(xs, others)) if _alike(xs, others) else super().mul_tensors_(xs, others)

    def div_(self, xs, scalar: ScalarArg):
        cast = _cast_scalars(scalar, xs)
        return super().div_(xs, scalar) if cast is None else list(torch._foreach_div(xs, cast))

    def div_tensors_(self, xs, others):
        return list(torch._foreach_div(xs, others)) if _alike(xs, others) else super().div_tensors_(xs, others)

    def sub(self, xs, others):
        return list(torch._foreach_sub(xs, others)) if _alike(xs, others) else super().sub(xs, others)

    def maximum_(self, xs, others):
        return list(torch._foreach_maximum(xs, others)) if _alike(xs, others) else super().maximum_(xs, others)

    def _addc(self, op: str, xs, t1s, t2s, value: ScalarArg):
        """``x + v (a * b)`` (``op="mul"``) or ``x + v (a / b)`` (``op="div"``) over the lists, as
        PureOps computes them (``torch.addcmul``/``torch.addcdiv`` for a number ``v``, the product
        with ``v`` last for a tensor ``v``); ``None`` where the foreach form would not compute that."""
        if not _alike(xs, t1s, t2s):
            return None
        if _number(value):
            if not _foreach_addc_rounds_as_per_tensor():
                return None
            return list(getattr(torch, f"_foreach_addc{op}")(xs, t1s, t2s, value))
        cast = _cast_scalars(value, xs)
        if cast is None:
            return None
        return list(torch._foreach_add(xs, torch._foreach_mul(getattr(torch, f"_foreach_{op}")(t1s, t2s), cast)))

    def addcmul_(self, xs, t1s, t2s, value: ScalarArg = 1):
        out = self._addc("mul", xs, t1s, t2s, value)
        return super().addcmul_(xs, t1s, t2s, value) if out is None else out

    def addcmul(self, xs, t1s, t2s, value: ScalarArg = 1):
        return self.addcmul_(xs, t1s, t2s, value)  # (out of place already)

    def addcdiv_(self, xs, t1s, t2s, value: ScalarArg = 1):
        out = self._addc("div", xs, t1s, t2s, value)
        return super().addcdiv_(xs, t1s, t2s, value) if out is None else out


COMPILED = CompiledOps()
#: :data:`COMPILED` with the per-parameter scalar math per parameter (hyperparameters elsewhere)
COMPILED_SCALARS_PER_PARAM = CompiledOps(map_scalars=False)

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

It is chosen only where it computes what :class:`PureOps` computes and nothing needs the
per-tensor form: eagerly, outside functorch transforms, with no input that requires grad (see
:func:`eager_ops_for`). Results agree with :class:`PureOps` to rounding: a few operations are
fused where torch fuses them (``addcdiv``, ``addcmul``, ``lerp``, ``add(alpha=)``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .ops import PURE, PureOps, Scalar, ScalarArg, lerp

__all__ = ["ForeachPureOps", "FOREACH_PURE", "eager_ops_for", "inside_functorch_transform"]

_REDUCED = (torch.float16, torch.bfloat16)


def _one_dtype(xs: Sequence[Tensor]) -> torch.dtype | None:
    """The dtype shared by every tensor of ``xs``, or ``None`` if they differ."""
    dtype = xs[0].dtype
    return dtype if all(x.dtype == dtype for x in xs) else None


class ForeachPureOps(PureOps):
    """Out-of-place ``torch._foreach_*`` math; per-parameter scalars as float64 vectors."""

    # ------------------------------------------------------------------ scalars
    def per_param(self, fn: Callable[..., Any], *values: Any) -> Any:
        """``fn`` applied to each parameter's scalars, computed once over the stacked vector."""
        if all(isinstance(v, Tensor) for v in values[0]) and len(values[0]) > 1:
            return fn(*(torch.stack(list(v)) for v in values))
        return super().per_param(fn, *values)

    def _scalars(self, scalar: ScalarArg, xs: Sequence[Tensor]) -> Any:
        """A scalar argument in the form foreach ops take: a number, a list of numbers, or a list
        of 0-d tensors in each tensor's dtype (a float64 vector is cast once and split into views)."""
        if isinstance(scalar, Tensor):
            if scalar.dim() == 0:
                scalar = [scalar] * len(xs)
            else:
                dtype = _one_dtype(xs)
                if dtype is not None:
                    return list(scalar.to(dtype).unbind())
                scalar = list(scalar.unbind())
        if isinstance(scalar, (list, tuple)):
            if scalar and isinstance(scalar[0], Tensor):
                return [s.to(x.dtype) if s.dtype != x.dtype else s for s, x in zip(scalar, xs)]
            return list(scalar)
        return scalar

    def step_values(self, steps: Sequence[Tensor]) -> Any:
        """The step counts as one float64 vector (``per_param`` does its math on it)."""
        return torch.stack(list(steps)).to(torch.float64) if len(steps) > 1 else super().step_values(steps)

    def scalar_values(self, scalars: Sequence[Tensor]) -> Any:
        return torch.stack(list(scalars)).to(torch.float64) if len(scalars) > 1 else super().scalar_values(scalars)

    def realize(self, scalars):
        return scalars

    # ------------------------------------------------------------------ list math
    def neg(self, xs):
        return list(torch._foreach_neg(xs))

    def add(self, xs, others, alpha: ScalarArg = 1):
        alpha = self._scalars(alpha, xs)
        if isinstance(alpha, list):
            return list(torch._foreach_add(xs, torch._foreach_mul(others, alpha)))
        return list(torch._foreach_add(xs, others, alpha=alpha))

    def add_scalar(self, xs, value: ScalarArg):
        value = self._scalars(value, xs)
        if isinstance(value, list) and value and isinstance(value[0], Tensor):
            return list(torch._foreach_add(xs, value))
        return list(torch._foreach_add(xs, value))

    def add_(self, xs, other, alpha: ScalarArg = 1):
        if isinstance(other, (list, tuple)) and any(isinstance(o, Tensor) and o.dim() > 0 for o in other):
            return self.add(xs, other, alpha)  # tensors (a 0-d parameter's among them), not scalars
        if isinstance(alpha, (int, float)) and alpha == 1:
            return self.add_scalar(xs, other)
        return self.add_scalar(xs, self.per_param(lambda o, a: o * a, *_as_lists(len(xs), other, alpha)))

    def square(self, xs):
        return list(torch._foreach_mul(xs, xs))

    def sqrt(self, xs):
        return list(torch._foreach_sqrt(xs))

    def sqrt_(self, xs):
        return self.sqrt(xs)

    def clone(self, xs):
        return [x.clone() for x in xs]

    def increment_(self, steps):
        return list(torch._foreach_add(steps, 1))

    def mul_(self, xs, scalar: ScalarArg):
        return list(torch._foreach_mul(xs, self._scalars(scalar, xs)))

    def mul_tensors_(self, xs, others):
        return list(torch._foreach_mul(xs, others))

    def div_(self, xs, scalar: ScalarArg):
        return list(torch._foreach_div(xs, self._scalars(scalar, xs)))

    def div_tensors_(self, xs, others):
        return list(torch._foreach_div(xs, others))

    def lerp_(self, xs, ends, weight: ScalarArg):
        if isinstance(weight, (int, float)):
            return list(torch._foreach_lerp(xs, ends, weight))
        dtype = _one_dtype(xs)
        if dtype is None or dtype in _REDUCED or isinstance(weight, (list, tuple)) and weight \
                and not isinstance(weight[0], Tensor):
            return super().lerp_(xs, ends, _unbound(weight))
        weights = self._scalars(weight, xs)
        return list(torch._foreach_lerp(xs, ends, weights))

    def addcmul_(self, xs, t1s, t2s, value: ScalarArg = 1):
        value = self._scalars(value, xs)
        if isinstance(value, list) and value and isinstance(value[0], Tensor):
            return list(torch._foreach_add(xs, torch._foreach_mul(torch._foreach_mul(t1s, t2s), value)))
        return list(torch._foreach_addcmul(xs, t1s, t2s, value))

    def addcdiv_(self, xs, t1s, t2s, value: ScalarArg = 1):
        value = self._scalars(value, xs)
        if isinstance(value, list) and value and isinstance(value[0], Tensor):
            return list(torch._foreach_add(xs, torch._foreach_mul(torch._foreach_div(t1s, t2s), value)))
        return list(torch._foreach_addcdiv(xs, t1s, t2s, value))

    def maximum_(self, xs, others):
        return list(torch._foreach_maximum(xs, others))

    def sub(self, xs, others):
        return list(torch._foreach_sub(xs, others))


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


FOREACH_PURE = ForeachPureOps()


def inside_functorch_transform() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp ...) is running."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def eager_ops_for(*leaf_lists: Sequence[Any]) -> PureOps:
    """The pure Ops for one update: :data:`FOREACH_PURE` eagerly, :data:`PURE` (per tensor) under
    ``torch.compile``, inside functorch transforms (vmap, grad) and when anything requires grad
    (autograd through the update), for sparse gradients and tensor subclasses (DTensor), and
    when the first list (the parameters to update) is empty."""
    if not leaf_lists[0] or torch.compiler.is_compiling() or inside_functorch_transform():
        return PURE
    for leaves in leaf_lists:
        for x in leaves:
            if isinstance(x, Tensor) and (x.requires_grad or x.is_sparse or type(x) is not Tensor):
                return PURE
    return FOREACH_PURE

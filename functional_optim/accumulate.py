"""Gradient accumulation: one optimizer step every ``k`` micro-batches (optax's ``MultiSteps``)."""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from .base import GradientTransformation
from .combine import map_updates, select_tree
from .tree import check_counters, check_state_like, check_state_type, flatten, unflatten

__all__ = ["MultiSteps", "MultiStepsState"]


class MultiStepsState(NamedTuple):
    """``mini_step``: micro-batches accumulated in the current window (0-d int32);
    ``gradient_step``: inner steps taken so far (0-d int32); ``inner_opt_state``: the wrapped
    optimizer's state; ``acc_grads``: the sum of this window's gradients, one tensor per leaf."""

    mini_step: Tensor
    gradient_step: Tensor
    inner_opt_state: Any
    acc_grads: Any


def _check_k(k: Any, gradient_step: Optional[Tensor] = None) -> Any:
    """``k`` (a step count from ``every_k_schedule``), refused unless it is an integer >= 1 or a 0-d
    integer tensor (whose value is not read: no host sync under compile or vmap)."""
    def where() -> str:  # (only for a message: reading the step is a host sync on a GPU)
        if gradient_step is None:
            return ""
        at = ""
        if not torch.compiler.is_compiling():  # from a callable: say at which step, when it can be read
            try:
                at = f" at gradient_step {int(gradient_step)}"
            except RuntimeError:  # a batched step under vmap
                pass
        return f" (returned by every_k_schedule(gradient_step){at})"

    expected = "MultiSteps: every_k_schedule must give an integer number of steps >= 1"
    if isinstance(k, Tensor):
        if k.dtype == torch.bool or k.dtype.is_floating_point or k.dtype.is_complex:
            raise TypeError(f"{expected} (or a 0-d integer tensor), got a {k.dtype} tensor{where()}")
        if k.dim() != 0:
            raise ValueError(f"{expected} (or a 0-d integer tensor), got a tensor of shape {tuple(k.shape)}{where()}")
        return k
    if isinstance(k, bool) or not isinstance(k, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{expected}, got {k!r} of type {type(k).__name__}{where()}")
    if k < 1:
        raise ValueError(f"{expected}, got {k}{where()}")
    return k


class MultiSteps:
    """Accumulate the gradients of ``every_k_schedule`` calls, then take one step of ``opt`` on their mean.

    Each call to :meth:`update` adds the gradient to ``acc_grads`` and returns zero updates,
    except every k-th call, which feeds ``sum / k`` (``sum`` with ``use_grad_mean=False``) to
    ``opt`` and returns its updates. With equal micro-batches whose losses are means, k calls
    give exactly the step ``opt`` would take on the whole batch, and the same as torch's
    accumulation of ``(loss / k).backward()`` before ``optimizer.step()``.

    ``every_k_schedule`` is an int, or a function of ``gradient_step`` (the number of inner
    steps taken) returning one, to grow the effective batch during training. It may also give a
    0-d integer tensor (a schedule of a tensor step does, under ``torch.compile``). A number is
    checked (an integer >= 1; ``bool`` and ``float`` are refused); a tensor's dtype and shape are
    checked, but not its value, which cannot be read without a host sync that would break the
    graph: a tensor ``k < 1`` applies ``opt`` on every call with ``sum / k``.

    Compiles with ``fullgraph=True``: the k-th call is chosen with ``torch.where`` on a 0-d
    flag, not with a Python ``if``. The price is that ``opt.update`` runs on every call (its
    result is discarded on the others); wrap only the optimizer, not the model.

    ``None`` gradients: a leaf whose gradient is ``None`` in a call adds nothing; if it is
    ``None`` on the k-th call, ``opt`` gets ``None`` for it (so its parameter and state are left
    alone, as torch leaves a parameter whose ``.grad`` is ``None``) and its sum is dropped.

    Differences from optax: no ``should_skip_update_fn`` (wrap the result in
    :func:`~functional_optim.apply_if_finite` instead), and ``update`` takes ``hparams`` for
    ``opt``.
    """

    def __init__(self, opt: GradientTransformation, every_k_schedule: Union[int, Callable[[Tensor], Any]],
                 use_grad_mean: bool = True):
        if not callable(every_k_schedule):
            _check_k(every_k_schedule)
        self.opt = opt
        self.every_k_schedule = every_k_schedule
        self.use_grad_mean = use_grad_mean

    def _k(self, gradient_step: Tensor):
        k = self.every_k_schedule
        return _check_k(k(gradient_step), gradient_step) if callable(k) else k

    def init(self, params: Any) -> MultiStepsState:
        device = next((p.device for p in flatten(params)[0] if isinstance(p, Tensor)), torch.device("cpu"))
        zero = torch.zeros((), dtype=torch.int32, device=device)
        return MultiStepsState(zero, zero.clone(), self.opt.init(params), map_updates(torch.zeros_like, params))

    def update(self, grads: Any, state: MultiStepsState, params: Any = None, hparams: Any = None):
        """Returns ``(updates, state)``: zeros until the k-th call, then the inner optimizer's step."""
        check_state_type(state, MultiStepsState, "MultiSteps")
        check_counters("MultiSteps", state, ("mini_step", "gradient_step"))
        check_state_like(grads, state.acc_grads, "MultiSteps: state.acc_grads")
        k = self._k(state.gradient_step)
        emit = state.mini_step + 1 >= k

        g_leaves, spec = flatten(grads)
        acc = [a if g is None else a + g for g, a in zip(g_leaves, flatten(state.acc_grads)[0])]
        inner_grads = [None if g is None else (a / k if self.use_grad_mean else a) for g, a in zip(g_leaves, acc)]
        inner_updates, inner_state = self.opt.update(unflatten(spec, inner_grads), state.inner_opt_state,
                                                     params, hparams)

        updates = map_updates(lambda u: torch.where(emit.to(u.device), u, torch.zeros_like(u)), inner_updates)
        new_acc = [torch.where(emit.to(a.device), torch.zeros_like(a), a) for a in acc]
        new_state = MultiStepsState(
            mini_step=torch.where(emit, torch.zeros_like(state.mini_step), state.mini_step + 1),
            gradient_step=state.gradient_step + emit.to(state.gradient_step.dtype),
            inner_opt_state=select_tree(emit, inner_state, state.inner_opt_state),
            acc_grads=unflatten(spec, new_acc),
        )
        return updates, new_state

    def has_updated(self, state: MultiStepsState) -> Tensor:
        """0-d bool tensor: the last :meth:`update` applied the inner optimizer."""
        return (state.mini_step == 0) & (state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulator as a :class:`GradientTransformation` (to put in a ``chain``)."""
        return GradientTransformation(self.init, self.update, self.opt.hparams)

"""L-BFGS as a functional optimizer (the step in :mod:`functional_optim._kernels.lbfgs`).

L-BFGS needs the objective, not only a gradient: its line search and its inner iterations
evaluate the loss at new points. As in optax (``update(..., value=..., grad=..., value_fn=...)``),
``update`` takes what it needs as keyword arguments; see :func:`lbfgs`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _validate
from ._definition import check_params
from ._kernels.lbfgs import flat_grad_of, lbfgs_step, param_steps
from .base import GradientTransformation
from .tree import check_leaves_match, check_state_type, flatten_like, flatten_plain, lazy_paths, unflatten

Number = Union[float, Tensor]

__all__ = ["lbfgs", "LBFGSHParams", "LBFGSStatic", "LBFGSState", "validate"]


class LBFGSHParams(NamedTuple):
    """L-BFGS's per-step settings (torch's defaults). ``lr`` may be a float or a 0-d tensor;
    ``max_eval=None`` means ``max_iter * 5 // 4``, as torch."""

    lr: Number = 1.0
    max_iter: int = 20
    max_eval: Optional[int] = None
    tolerance_grad: float = 1e-7
    tolerance_change: float = 1e-9


class LBFGSStatic(NamedTuple):
    """Choices fixed when the optimizer is made: the memory's length, the line search, and
    ``maximize`` (ascend the objective: torch >= 2.14)."""

    history_size: int = 100
    line_search_fn: Optional[str] = None
    maximize: bool = False


class LBFGSState(NamedTuple):
    """torch.optim.LBFGS's state (one for all parameters, torch keeps it under the first one),
    field for field and with torch's types; ``None`` where torch has no entry yet.

    ``func_evals``/``n_iter``: evaluations and iterations so far (ints); ``d``: the last direction
    and ``t`` its step length; ``old_dirs``/``old_stps``/``ro``: the memory of gradient changes
    ``y``, steps ``s`` and ``1 / y.s`` (lists of tensors, oldest first); ``H_diag``: the initial
    inverse-Hessian scale ``y.s / y.y``; ``prev_flat_grad``/``prev_loss``: the last iteration's
    gradient and loss; ``al``: the two-loop coefficients (a list of ``history_size``). The flat
    vectors concatenate the parameters in the order of their pytree leaves (complex ones as
    their real views), as torch concatenates its parameter list.
    """

    func_evals: int = 0
    n_iter: int = 0
    d: Optional[Tensor] = None
    t: Any = None
    old_dirs: Optional[list] = None
    old_stps: Optional[list] = None
    ro: Optional[list] = None
    H_diag: Any = None
    prev_flat_grad: Optional[Tensor] = None
    prev_loss: Optional[float] = None
    al: Optional[list] = None


LINE_SEARCH_ERROR = "only 'strong_wolfe' is supported"


def validate(lr: Any, line_search_fn: Optional[str] = None) -> None:
    """torch.optim.LBFGS's constructor check of ``lr`` (its only one); the functional optimizer also
    refuses an unknown ``line_search_fn`` when it is made, with the error torch raises at ``step``."""
    _validate.check_lr(lr)
    if line_search_fn is not None and line_search_fn != "strong_wolfe":
        raise RuntimeError(LINE_SEARCH_ERROR)


def _real_numel(leaves: list) -> int:
    return sum(2 * p.numel() if p.is_complex() else p.numel() for p in leaves)


class _TreeObjective:
    """The parameters of a pytree, moved out of place; evaluated by the caller's function."""

    in_place = False

    def __init__(self, leaves: list, spec, paths, grads: list, evaluate: Optional[Callable]):
        self.leaves, self._spec, self._paths = list(leaves), spec, paths
        self._grads, self._evaluate = grads, evaluate

    def flat_grad(self) -> Tensor:
        return flat_grad_of(self.leaves, self._grads, strict_view=False)

    def evaluate(self) -> tuple[float, Tensor]:
        params = unflatten(self._spec, self.leaves)
        with torch.enable_grad():  # as torch calls its closure
            value, grads = self._evaluate(params)
        g_leaves = flatten_like(self._spec, params, grads, "params", "the gradients of value_and_grad_fn")
        check_leaves_match(self.leaves, g_leaves, self._paths, "the gradients of value_and_grad_fn")
        self._grads = g_leaves
        return float(value), self.flat_grad()

    def move(self, t: Any, d: Tensor) -> None:
        moved = []
        for p, (real, step) in zip(self.leaves, param_steps(self.leaves, d)):
            new = torch.add(real, step, alpha=t).to(real.dtype)  # what torch's in-place add_ stores
            moved.append(torch.view_as_complex(new) if p.is_complex() else new)
        self.leaves = moved

    def snapshot(self) -> list:
        return self.leaves

    def restore(self, x: list) -> None:
        self.leaves = x


def _evaluator(value_fn: Optional[Callable], value_and_grad_fn: Optional[Callable]) -> Optional[Callable]:
    """``params -> (value, grads)`` from the keyword arguments of ``update``."""
    if value_fn is not None and value_and_grad_fn is not None:
        raise ValueError("lbfgs.update takes value_fn or value_and_grad_fn, not both")
    if value_and_grad_fn is not None:
        return value_and_grad_fn
    if value_fn is not None:
        grad_and_value = torch.func.grad_and_value(value_fn)
        return lambda params: tuple(reversed(grad_and_value(params)))
    return None


def _check_state(state: LBFGSState, numel: int) -> None:
    """The state's vectors must have the parameters' length (a state made for other params would
    otherwise fail deep inside the step or, worse, broadcast)."""
    for field in ("d", "prev_flat_grad"):
        value = getattr(state, field)
        if value is not None and (not isinstance(value, Tensor) or value.shape != (numel,)):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"lbfgs: state.{field} must be a tensor of shape ({numel},) (the params' total size), "
                             f"got {got}")
    for field in ("old_dirs", "old_stps"):
        for i, value in enumerate(getattr(state, field) or ()):
            if not isinstance(value, Tensor) or value.shape != (numel,):
                raise ValueError(f"lbfgs: state.{field}[{i}] must be a tensor of shape ({numel},)")


def lbfgs(
    lr: Number = 1,
    max_iter: int = 20,
    max_eval: Optional[int] = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: Optional[str] = None,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """L-BFGS (Nocedal 1980; Liu & Nocedal 1989) equal to ``torch.optim.LBFGS``: one ``update`` is
    one ``torch.optim.LBFGS.step(closure)`` (torch's arguments and defaults). ``maximize`` ascends
    the objective (minimises ``-value``), as torch >= 2.14's ``LBFGS(maximize=True)``; it works
    with any torch here.

    ``update(grads, state, params, hparams=None, *, value, value_fn=None, value_and_grad_fn=None)``:

    * ``grads``, ``value``: the gradient and the loss at ``params`` (what torch's first call of the
      closure computes);
    * ``value_and_grad_fn(params) -> (value, grads)`` or ``value_fn(params) -> value`` (gradients
      then by ``torch.func.grad_and_value``): the objective at new points, called with a pytree
      like ``params``. Needed when the step evaluates again: ``max_iter > 1`` or
      ``line_search_fn="strong_wolfe"`` (``ValueError`` otherwise, before anything runs). It is
      called with grad mode enabled, as torch calls its closure; the params it gets do not
      require grad (for ``torch.autograd.grad`` detach them and call ``requires_grad_()``);
    * ``hparams``: an :class:`LBFGSHParams` (``lr``, ``max_iter``, ``max_eval``,
      ``tolerance_grad``, ``tolerance_change``) for this call.

    Returns ``(updates, state)``: ``updates`` is ``new_params - params`` for every leaf (L-BFGS
    moves all parameters along one direction; a ``None`` gradient counts as zeros, as in torch)
    and ``state`` an :class:`LBFGSState`, torch's state field for field.

    Each iteration: the direction ``d = -H g`` from the two-loop recursion over the last
    ``history_size`` curvature pairs (``d = -g`` at the very first), the step ``t`` (first
    iteration ``min(1, 1 / ||g||_1) lr``, then ``lr``, or a strong-Wolfe line search), stopping
    after ``max_iter`` iterations or ``max_eval`` evaluations or when ``max |g| <=
    tolerance_grad``, ``g.d > -tolerance_change``, ``max |t d| <= tolerance_change`` or the loss
    changes by less than ``tolerance_change``.

    Eager only and not differentiable, like torch's step: the tests and the line search read
    values on the host (``float(loss)``, comparisons), so it neither compiles to one graph nor
    runs under ``vmap``; the step's arithmetic runs under ``torch.no_grad``. The result equals
    ``torch.optim.LBFGS`` bit for bit given the same losses and gradients (the same
    arithmetic in the same order; tested in float64 and float32, with and without the line
    search, up to the rounding of ``params + (new - params)`` in ``apply_updates``).
    """
    validate(lr, line_search_fn)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    defaults = _validate.scalar_hparams(LBFGSHParams(lr, max_iter, max_eval, tolerance_grad, tolerance_change), "lbfgs")
    static = LBFGSStatic(history_size, line_search_fn, bool(maximize))

    def init(params: Any) -> LBFGSState:
        leaves, _ = flatten_plain(params)
        check_params("lbfgs", leaves, lazy_paths(params))
        return LBFGSState()

    def update(grads: Any, state: LBFGSState, params: Any = None, hparams: Optional[LBFGSHParams] = None, *,
               value: Any, value_fn: Optional[Callable] = None, value_and_grad_fn: Optional[Callable] = None):
        hp = _validate.check_hparams_record("lbfgs", defaults, hparams)
        if hp.max_eval is None:
            hp = hp._replace(max_eval=hp.max_iter * 5 // 4)
        if params is None:
            raise ValueError("lbfgs.update needs params (its step moves them along a direction)")
        check_state_type(state, LBFGSState, "lbfgs")
        leaves, spec = flatten_plain(params)
        paths = lazy_paths(params)
        check_params("lbfgs", leaves, paths)
        g_leaves = flatten_like(spec, params, grads, "params", "grads")
        check_leaves_match(leaves, g_leaves, paths, "grads")
        _check_state(state, _real_numel(leaves))
        evaluate = _evaluator(value_fn, value_and_grad_fn)
        if evaluate is None and (hp.max_iter > 1 or static.line_search_fn is not None):
            raise ValueError(
                "lbfgs.update evaluates the objective again (max_iter > 1 or line_search_fn='strong_wolfe'): "
                "pass value_and_grad_fn=(params -> (value, grads)) or value_fn=(params -> value)"
            )
        torch_state = {k: v for k, v in zip(LBFGSState._fields, state) if v is not None}
        objective = _TreeObjective(leaves, spec, paths, g_leaves, evaluate)
        with torch.no_grad():
            lbfgs_step(objective, torch_state, hp, static, float(value))
            updates = [new - old for new, old in zip(objective.leaves, leaves)]
        return unflatten(spec, updates), LBFGSState(**{k: torch_state.get(k) for k in LBFGSState._fields})

    return GradientTransformation(init, update, defaults)

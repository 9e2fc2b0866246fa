"""L-BFGS over one flat vector: the step of ``torch.optim.LBFGS``, written once for both APIs.

Nocedal, "Updating Quasi-Newton Matrices with Limited Storage", Math. Comp. 35 (1980); Liu &
Nocedal, "On the limited memory BFGS method for large scale optimization", Math. Prog. 45 (1989);
the line search is the strong-Wolfe bracketing/zoom of Nocedal & Wright, *Numerical Optimization*
(2006), Alg. 3.5/3.6, with cubic interpolation, as in minFunc and torch7's ``lswolfe.lua``.

One step (``torch.optim.LBFGS.step``) runs up to ``max_iter`` iterations from the loss ``f`` and
flat gradient ``g`` at the current parameters ``x``:

    first iteration ever:  d = -g, no memory, H0 = 1,  t = min(1, 1 / ||g||_1) * lr
    later:                 y = g - g_prev, s = t d;  if y.s > 1e-10 keep (y, s, 1 / y.s) in a memory
                           of ``history_size`` pairs and set H0 = y.s / y.y;  d = -H g by the
                           two-loop recursion;  t = lr
    stop if g.d > -tolerance_change;  x <- x + t d  (t from the strong-Wolfe search, or fixed, then
    re-evaluate unless it is the last iteration);  stop at ``max_iter`` iterations, ``max_eval``
    evaluations, ``max |g| <= tolerance_grad``, ``max |t d| <= tolerance_change`` or
    ``|f - f_prev| < tolerance_change``.

The state is torch's ``state[p]`` dict for the first parameter (``func_evals``, ``n_iter``,
``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``,
``al``) with torch's types: Python ints and floats where torch has them, tensors elsewhere (``t``
and ``H_diag`` become tensors after the first iteration, as in torch). The arithmetic, its order
and the Python/tensor types of every scalar are torch's, so that every comparison of the line
search and the stopping tests decides as torch's does: both APIs equal torch bit for bit given
bitwise equal losses and gradients.

The parameters are reached through an :class:`Objective`: compat moves the real parameters in
place and calls the closure; the functional update moves a list of tensors out of place and calls
a value-and-gradient function. With ``objective.in_place`` false the step never mutates the
tensors or lists it was given (a new ``prev_flat_grad``, copied history lists), so the functional
update is pure.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from torch import Tensor

__all__ = ["Objective", "Negated", "lbfgs_step", "strong_wolfe", "cubic_interpolate", "flat_grad_of", "param_steps"]

#: the state keys written at the end of a step, in torch's order
STEP_KEYS = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss")


class Objective(Protocol):
    """Where the step evaluates and moves: the parameters as one flat vector (real views)."""

    in_place: bool  # whether ``move``/``restore`` write the tensors the caller holds

    def flat_grad(self) -> Tensor:
        """The flat gradient at the current parameters, from the last evaluation (the caller's
        first one, before the step: ``p.grad`` in compat, the given ``grads`` functionally)."""

    def evaluate(self) -> tuple[float, Tensor]:
        """Evaluate anew: the loss (a Python float) and the flat gradient at the current parameters."""

    def move(self, t: Any, d: Tensor) -> None:
        """``x <- x + t d`` (``t`` a number or a 0-d tensor)."""

    def snapshot(self) -> Any:
        """The current parameters, to :meth:`restore` after trial steps of the line search."""

    def restore(self, x: Any) -> None:
        """Set the parameters back to a :meth:`snapshot`."""


class Negated:
    """``objective`` with its loss and flat gradient negated, the parameters the same.

    ``maximize`` (torch >= 2.14's ``LBFGS(maximize=True)``) ascends ``f`` by minimising ``-f``:
    torch negates every loss and flat gradient its step reads, the first ones included, and returns
    the closure's own loss. Negation is exact, so this equals torch bit for bit.
    """

    def __init__(self, objective: Objective):
        self.objective = objective
        self.in_place = objective.in_place

    def flat_grad(self) -> Tensor:
        return self.objective.flat_grad().neg()

    def evaluate(self) -> tuple[float, Tensor]:
        loss, flat_grad = self.objective.evaluate()
        return -loss, flat_grad.neg()

    def move(self, t: Any, d: Tensor) -> None:
        self.objective.move(t, d)

    def snapshot(self) -> Any:
        return self.objective.snapshot()

    def restore(self, x: Any) -> None:
        self.objective.restore(x)


# ------------------------------------------------------------------ flat views
def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


def param_steps(params: Sequence[Tensor], d: Tensor):
    """``(real view of p, slice of d shaped like it)`` for each parameter, in order (complex
    parameters as their real views: two numbers per element, as torch counts them)."""
    offset = 0
    for p in params:
        real = _real(p)
        numel = real.numel()
        yield real, d[offset:offset + numel].view_as(real)
        offset += numel
    if offset != d.numel():
        raise AssertionError(f"Expected offset {offset} to equal {d.numel()}")


def flat_grad_of(params: Sequence[Tensor], grads: Sequence[Optional[Tensor]], strict_view: bool) -> Tensor:
    """The gradients as one vector: zeros for ``None``, densified sparse ones, complex ones as
    their real views. ``strict_view`` flattens with ``view(-1)`` as torch does (refusing a
    gradient whose strides do not allow it); otherwise with ``reshape(-1)``."""
    views = []
    for p, g in zip(params, grads):
        if g is None:
            view = p.new(p.numel()).zero_()
        else:
            g = g.to_dense() if g.is_sparse else g
            view = g.view(-1) if strict_view else g.reshape(-1)
        if torch.is_complex(view):
            view = torch.view_as_real(view).view(-1)
        views.append(view)
    return torch.cat(views, 0)


# ------------------------------------------------------------------ line search
def cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimiser of the cubic through ``(x1, f1)``, ``(x2, f2)`` with slopes ``g1``, ``g2``,
    clamped to ``bounds`` (default: the interval between the points); the interval's midpoint
    where the cubic has no minimiser. torch's arithmetic (minFunc's ``polyinterp``, two points)."""
    if bounds is not None:
        low, high = bounds
    else:
        low, high = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if not d2_square >= 0:
        return (low + high) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        minimiser = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        minimiser = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(minimiser, low), high)


def strong_wolfe(obj_func: Callable, x: Any, t, d: Tensor, f: float, g: Tensor, gtd: Tensor, c1: float = 1e-4,
                 c2: float = 0.9, tolerance_change: float = 1e-9, max_ls: int = 25):
    """A step ``t`` along ``d`` satisfying the strong Wolfe conditions
    ``f(x + t d) <= f + c1 t g.d`` and ``|g(x + t d).d| <= c2 |g.d|``: first bracket an interval
    (extrapolating by cubic interpolation within ``[t + 0.01 (t - t_prev), 10 t]``), then zoom
    into it (cubic interpolation, kept 10% of the interval away from its ends when progress is
    slow), with at most ``max_ls`` evaluations ``obj_func(x, t, d) -> (f, g)`` beyond the first.

    Returns ``(f_new, g_new, t, evaluations)``. The decisions and the arithmetic are torch's
    ``_strong_wolfe``, step for step (``max_ls < 0`` fails as torch's does).
    """
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)

    # bracketing: an interval holding a point that satisfies the conditions
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):  # not sufficiently lower
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:  # both conditions hold at t
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:  # the slope turned: the minimum lies behind t
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        # extrapolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        previous = t
        t = cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, gtd_prev = previous, f_new, gtd_new
        g_prev = g_new.clone(memory_format=torch.contiguous_format)
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:  # out of evaluations while extrapolating
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: shrink the bracket around a point satisfying the conditions
    insufficient_progress = False
    low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:  # the bracket is too small
            break
        t = cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # a trial point too close to an end of the bracket moves 10% of its length inside, if
        # progress was already insufficient last time or it lies at (or beyond) an end
        margin = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < margin:
            if insufficient_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - margin if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False

        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low]:
            # not sufficiently lower, or not below the low end: t becomes the high end
            bracket[high], bracket_f[high] = t, f_new
            bracket_g[high] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[high] = gtd_new
            low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True  # the strong Wolfe conditions hold
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                # the old low end becomes the high end
                bracket[high], bracket_f[high] = bracket[low], bracket_f[low]
                bracket_g[high], bracket_gtd[high] = bracket_g[low], bracket_gtd[low]
            # t becomes the low end
            bracket[low], bracket_f[low] = t, f_new
            bracket_g[low] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[low] = gtd_new

    return bracket_f[low], bracket_g[low], bracket[low], ls_func_evals


# ------------------------------------------------------------------ the step
def _remember(state: dict, flat_grad: Tensor, history_size: int) -> None:
    """Add the last step's curvature pair ``(y, s)`` to the memory (when ``y.s > 1e-10``, so that
    the inverse-Hessian estimate stays positive definite) and rescale ``H0``."""
    y = flat_grad.sub(state["prev_flat_grad"])
    s = state["d"].mul(state["t"])
    ys = y.dot(s)
    if ys > 1e-10:
        if len(state["old_dirs"]) == history_size:  # forget the oldest pair
            for key in ("old_dirs", "old_stps", "ro"):
                state[key].pop(0)
        state["old_dirs"].append(y)
        state["old_stps"].append(s)
        state["ro"].append(1.0 / ys)
        state["H_diag"] = ys / y.dot(y)


def _two_loop_direction(flat_grad: Tensor, state: dict) -> Tensor:
    """``-H g`` by the two-loop recursion over the memory (``al`` keeps the first loop's
    coefficients, in the state as torch keeps them); both loops update one fresh buffer."""
    old_dirs, old_stps, ro, al = state["old_dirs"], state["old_stps"], state["ro"], state["al"]
    q = flat_grad.neg()
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-al[i])
    r = torch.mul(q, state["H_diag"])
    for i in range(len(old_dirs)):
        be_i = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=al[i] - be_i)
    return r


def lbfgs_step(objective: Objective, state: dict, hparams: Any, static: Any, loss: float) -> None:
    """One ``torch.optim.LBFGS.step`` after its first evaluation (``loss`` as a float; the
    gradient from ``objective.flat_grad()``), updating ``state`` (torch's dict) and moving the
    parameters through ``objective``.

    ``hparams``: ``lr``, ``max_iter``, ``max_eval``, ``tolerance_grad``, ``tolerance_change``;
    ``static``: ``history_size``, ``line_search_fn``, ``maximize`` (the step then minimises the
    :class:`Negated` objective, from ``-loss``). With ``objective.in_place`` false the
    history lists and tensors found in ``state`` are never modified (new ones replace them).
    """
    lr, max_iter, max_eval = hparams.lr, hparams.max_iter, hparams.max_eval
    tolerance_grad, tolerance_change = hparams.tolerance_grad, hparams.tolerance_change
    history_size, line_search_fn = static.history_size, static.line_search_fn
    if static.maximize:
        objective, loss = Negated(objective), -loss

    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)
    current_evals = 1
    state["func_evals"] += 1
    flat_grad = objective.flat_grad()
    opt_cond = flat_grad.abs().max() <= tolerance_grad
    if opt_cond:  # already optimal
        return

    if not objective.in_place:  # a pure step works on copies of the history lists
        for key in ("old_dirs", "old_stps", "ro", "al"):
            if state.get(key) is not None:
                state[key] = list(state[key])
    work = {key: state.get(key) for key in STEP_KEYS}  # the step's variables, stored at its end

    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] += 1

        # the direction
        if state["n_iter"] == 1:
            work.update(d=flat_grad.neg(), old_dirs=[], old_stps=[], ro=[], H_diag=1)
        else:
            _remember(work, flat_grad, history_size)
            if "al" not in state:
                state["al"] = [None] * history_size
            work["d"] = _two_loop_direction(flat_grad, {**work, "al": state["al"]})
        if work["prev_flat_grad"] is None or not objective.in_place:
            work["prev_flat_grad"] = flat_grad.clone(memory_format=torch.contiguous_format)
        else:
            work["prev_flat_grad"].copy_(flat_grad)
        work["prev_loss"] = loss
        d = work["d"]

        # the step length
        t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
        gtd = flat_grad.dot(d)  # directional derivative
        if gtd > -tolerance_change:
            work["t"] = t
            break

        ls_func_evals = 0
        if line_search_fn is not None:
            if line_search_fn != "strong_wolfe":
                raise RuntimeError("only 'strong_wolfe' is supported")
            x_init = objective.snapshot()

            def obj_func(x, t, d):
                objective.move(t, d)
                value = objective.evaluate()
                objective.restore(x)
                return value

            loss, flat_grad, t, ls_func_evals = strong_wolfe(
                obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
            )
            objective.move(t, d)
            opt_cond = flat_grad.abs().max() <= tolerance_grad
        else:
            objective.move(t, d)  # a fixed step
            if n_iter != max_iter:  # re-evaluate, except after the last iteration
                loss, flat_grad = objective.evaluate()
                opt_cond = flat_grad.abs().max() <= tolerance_grad
                ls_func_evals = 1
        work["t"] = t
        current_evals += ls_func_evals
        state["func_evals"] += ls_func_evals

        # stopping tests
        if n_iter == max_iter or current_evals >= max_eval:
            break
        if opt_cond:
            break
        if d.mul(t).abs().max() <= tolerance_change:  # no progress in the parameters
            break
        if abs(loss - work["prev_loss"]) < tolerance_change:  # nor in the loss
            break

    for key in STEP_KEYS:
        state[key] = work[key]

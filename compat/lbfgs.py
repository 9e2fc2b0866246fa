"""``compat.LBFGS``: drop-in for ``torch.optim.LBFGS``.

L-BFGS is not an elementwise optimizer (one direction for all parameters, a closure evaluated
several times per step), so this class is a ``torch.optim.Optimizer`` of its own rather than a
:class:`~compat.optimizer.FunctionalOptimizer`; its step is the one ``fo.lbfgs`` runs
(:func:`functional_optim._kernels.lbfgs.lbfgs_step`), here moving the real parameters in place.
"""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

import copy
import inspect
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from functional_optim._kernels.lbfgs import flat_grad_of, lbfgs_step, param_steps
from functional_optim._validate import squeeze_scalar
from functional_optim.lbfgs import LBFGSHParams, LBFGSState, LBFGSStatic, lbfgs, validate
from functional_optim.tree import flatten, leaf_paths

__all__ = ["LBFGS"]

#: whether the installed torch's LBFGS has ``maximize`` (torch >= 2.14): its param group then
#: carries the key, and so does ours; on an older torch ours takes ``maximize`` too and records it
#: only when it is true, so that its state dicts keep that torch's keys
TORCH_HAS_MAXIMIZE = "maximize" in inspect.signature(torch.optim.LBFGS).parameters


class _ParamObjective:
    """The optimizer's parameters, moved in place; evaluated by the closure (torch's helpers)."""

    in_place = True

    def __init__(self, params: list, closure):
        self._params, self._closure = params, closure

    def flat_grad(self) -> Tensor:
        return flat_grad_of(self._params, [p.grad for p in self._params], strict_view=True)

    def evaluate(self) -> tuple[float, Tensor]:
        loss = float(self._closure())
        return loss, self.flat_grad()

    def move(self, t: Any, d: Tensor) -> None:
        for real, step in param_steps(self._params, d):
            real.add_(step, alpha=t)

    def snapshot(self) -> list:
        return [p.clone(memory_format=torch.contiguous_format) for p in self._params]

    def restore(self, x: list) -> None:
        for p, data in zip(self._params, x, strict=True):
            p.copy_(data)


class LBFGS(Optimizer):
    """L-BFGS with torch.optim.LBFGS's API; the step is ``functional_optim.lbfgs``'s.

    As torch: one parameter group, ``step(closure)`` required (the closure re-evaluates the model
    and returns the loss; it runs with grad enabled), up to ``max_iter`` iterations per step,
    ``line_search_fn`` ``None`` or ``"strong_wolfe"`` (anything else raises at ``step``), the
    state of all parameters kept under the first one, torch's errors. ``maximize`` ascends the
    objective (torch >= 2.14's keyword, also here on an older torch). With no parameters, ``step``
    only evaluates the closure and returns its loss (torch >= 2.14). ``to_functional`` /
    ``load_functional`` move the run to :func:`functional_optim.lbfgs` and back.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
        *,
        maximize: bool = False,
    ) -> None:
        validate(lr)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = {
            "lr": lr,
            "max_iter": max_iter,
            "max_eval": max_eval,
            "tolerance_grad": tolerance_grad,
            "tolerance_change": tolerance_change,
            "history_size": history_size,
            "line_search_fn": line_search_fn,
        }
        if TORCH_HAS_MAXIMIZE or maximize:
            defaults["maximize"] = maximize
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        self._numel_cache = None

    def _config(self) -> tuple[LBFGSHParams, LBFGSStatic]:
        group = self.param_groups[0]
        hparams = LBFGSHParams(squeeze_scalar(group["lr"]), group["max_iter"], group["max_eval"],
                               group["tolerance_grad"], group["tolerance_change"])
        # (a group without the key: a state dict of torch < 2.14, or made by one; torch reads it so too)
        return hparams, LBFGSStatic(group["history_size"], group["line_search_fn"], group.get("maximize", False))

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """Perform a single optimization step.

        Args:
            closure (Callable): A closure that reevaluates the model
                and returns the loss.
        """
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got {len(self.param_groups)}")
        closure = torch.enable_grad()(closure)
        if not self._params:  # nothing to move (and no first parameter to keep the state under)
            return closure()
        hparams, static = self._config()
        # LBFGS has one state for all parameters; like torch, it lives under the first one
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        orig_loss = closure()
        lbfgs_step(_ParamObjective(self._params, closure), state, hparams, static, float(orig_loss))
        return orig_loss

    # ------------------------------------------------------------------ the functional API
    def _check_leaves(self, params: Any) -> list:
        leaves = flatten(params)[0]
        if len(leaves) != len(self._params) or any(a is not b for a, b in zip(leaves, self._params)):
            paths = leaf_paths(params)
            for i, (path, p) in enumerate(zip(paths, leaves)):
                if i >= len(self._params) or p is not self._params[i]:
                    raise ValueError(f"params at {path} is not parameter {i} of this optimizer: L-BFGS needs the "
                                     f"optimizer's parameters, all of them, in its order")
            raise ValueError(f"params has {len(leaves)} leaves, this optimizer {len(self._params)} parameters")
        return leaves

    def to_functional(self, params: Any):
        """``(fo.lbfgs(...), LBFGSState)``: this optimizer as the functional one, for a pytree whose
        leaves are the optimizer's parameters in its order (the flat vectors follow that order).
        The state is copied; continuing either API gives the same numbers."""
        self._check_leaves(params)
        hparams, static = self._config()
        transformation = lbfgs(hparams.lr, hparams.max_iter, hparams.max_eval, hparams.tolerance_grad,
                               hparams.tolerance_change, static.history_size, static.line_search_fn,
                               maximize=static.maximize)
        entry = copy.deepcopy(dict(self.state.get(self._params[0], {})))
        return transformation, LBFGSState(**{k: entry.get(k, LBFGSState._field_defaults[k]) for k in LBFGSState._fields})

    def load_functional(self, params: Any, state: LBFGSState) -> None:
        """Continue from a functional :class:`~functional_optim.lbfgs.LBFGSState` (copied; the keys in
        the order torch's step creates them with this optimizer's ``max_iter``)."""
        self._check_leaves(params)
        if not isinstance(state, LBFGSState):
            raise TypeError(f"expected an LBFGSState, got {type(state).__name__}")
        entry = {k: copy.deepcopy(v) for k, v in zip(LBFGSState._fields, state) if v is not None}
        if "al" in entry and self.param_groups[0]["max_iter"] > 1:  # where torch's first step puts it
            entry = {"func_evals": entry.pop("func_evals"), "n_iter": entry.pop("n_iter"), "al": entry.pop("al"), **entry}
        self.state[self._params[0]] = entry

"""``compat.SophiaH``: ``pytorch_optimizer.SophiaH``'s constructor and ``step`` over ``fo.sophia_h``."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.optim.optimizer import ParamsT

from functional_optim._moments import check_betas_range, check_non_negative
from functional_optim.sophia import (
    check_hutchinson_args,
    combine_hutchinson_samples,
    hutchinson_probes,
    sophia_h,
    sophia_set_hessian,
)

from ._reference import ReferenceLayout, ReferenceOptimizer, check_lr
from .optimizer import check_grad_shapes
from .transformation import _layout

__all__ = ["SophiaH"]


def _not_pending(p: torch.Tensor, has_state: bool) -> torch.Tensor:
    return torch.zeros((), dtype=torch.bool, device=p.device)


# the shared "sophia.hessian_pending" flag is always false between steps: not written out, false on load
_LAYOUT = ReferenceLayout("sophia.count", {"sophia.momentum": "momentum", "sophia.hessian_moment": "hessian_moment",
                                           "sophia.hessian": "hessian"},
                          derived={"sophia.hessian_pending": _not_pending})


def _translate(group: dict) -> dict:
    b1, b2 = group["betas"]
    return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "weight_decay": group["weight_decay"],
            "clip_threshold": group["p"]}


class SophiaH(ReferenceOptimizer):
    """SophiaH (Liu et al., 2023) with ``pytorch_optimizer.SophiaH``'s signature, defaults and ``step``.

    The update is :func:`functional_optim.sophia_h`. At step ``t`` with ``(t - 1) %
    update_period == 0`` (``t`` counted as the reference, from the first param group), or
    whenever ``step(hessian=[...])`` is given estimates (one tensor per parameter, all groups in
    order), the Hessian diagonal is estimated first and handed to each group's state with
    :func:`functional_optim.sophia_set_hessian`. The estimate is the reference's Hutchinson
    estimate on the parameters that have a gradient (all groups together):
    ``num_samples`` probes drawn with ``torch.randn_like`` / ``torch.randint_like`` from the
    global generator in the reference's order (the same seed gives the same probes), and
    ``torch.autograd.grad(grads, params, grad_outputs=z)``, so at those steps the gradients must
    carry a graph: ``loss.backward(create_graph=True)`` (or ``p.grad =
    torch.autograd.grad(loss, p, create_graph=True)``); without one this raises before anything
    changes.

    ``lr``, ``betas``, ``weight_decay``, ``p`` and ``eps`` may differ per group;
    ``weight_decouple`` / ``fixed_decay`` are fixed at construction; ``update_period``,
    ``num_samples``, ``hessian_distribution`` and ``maximize`` are the optimizer's (as in the
    reference); ``foreach`` is accepted and ignored, other keyword arguments are ignored (as the
    reference does). Sparse gradients and complex parameters are refused.

    Differences from the reference: a bad hyperparameter raises ``ValueError``, a sparse
    gradient or a complex parameter ``RuntimeError`` at ``step`` (before anything changes), with
    the reference's messages but not its own exception classes (``NegativeLRError`` ... are
    plain ``Exception`` subclasses there; this package does not depend on ``pytorch_optimizer``);
    ``.grad`` is not modified (the reference negates it in place with ``maximize`` and adds the
    decay to it); ``state_dict()`` has ``hessian`` (zeros) also for a parameter that has not had
    an estimate yet, where the reference has no entry (the buffer is overwritten before it is
    read, so either loads into the other); a group without any gradient at an estimate step
    keeps its previous ``hessian`` where the reference stores given estimates it never reads.
    """

    def __init__(self, params: ParamsT, lr: float = 6e-2, betas: tuple = (0.96, 0.99), weight_decay: float = 0.0,
                 weight_decouple: bool = True, fixed_decay: bool = False, p: float = 1e-2, update_period: int = 10,
                 num_samples: int = 1, hessian_distribution: str = "gaussian", eps: float = 1e-12,
                 maximize: bool = False, foreach: Optional[bool] = None, **kwargs) -> None:
        check_lr(lr)
        check_betas_range(betas, ("beta1", "beta2"))
        check_non_negative(weight_decay, "weight_decay")
        check_non_negative(p, "p (gradient clip)")
        if update_period < 1:
            raise ValueError(f"update_period must be positive. ({update_period} > 0)")
        check_hutchinson_args(num_samples, hessian_distribution)
        check_non_negative(eps, "eps")
        self.update_period = update_period
        self.num_samples = num_samples
        self.distribution = hessian_distribution
        self.maximize = maximize
        self.foreach = foreach
        tx = sophia_h(lr, betas[0], betas[1], weight_decay, p, eps, weight_decouple=weight_decouple,
                      fixed_decay=fixed_decay, maximize=maximize)
        defaults = {"lr": lr, "foreach": foreach, "betas": betas, "weight_decay": weight_decay,
                    "weight_decouple": weight_decouple, "fixed_decay": fixed_decay, "p": p, "eps": eps}
        super().__init__(params, tx, defaults, _translate, static_keys=("weight_decouple", "fixed_decay"),
                         layout=_LAYOUT)

    def __str__(self) -> str:
        return "SophiaH"

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None, hessian: Optional[list] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
            hessian (list of Tensors, optional): Hessian-diagonal estimates, one per parameter
                (all param groups, in order), used instead of the Hutchinson estimate.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check_grad_shapes(self)
        self._check_grads()
        if hessian is not None:
            estimates = self._given_estimates(hessian)
        elif self._current_step() % self.update_period == 0:  # the reference's (step - 1) % update_period
            estimates = self._hutchinson_estimates()
        else:
            estimates = None
        if estimates is not None and any(e is not None for e in estimates):
            self._hand_over(estimates)
        self._step_groups()
        return loss

    # ------------------------------------------------------------------ the Hessian estimate
    def _check_grads(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SophiaH does not support sparse gradient.")
                if torch.is_complex(p):
                    raise RuntimeError("SophiaH does not support complex parameter.")

    def _current_step(self) -> int:
        """The reference's ``param_groups[0]["step"]``: steps taken (every group counts each step)."""
        for group in self.param_groups:
            if group["params"]:
                value = self.state.get(group["params"][0], {}).get(self._ref_layout.count)
                return 0 if value is None else int(value)
        return 0

    def _hutchinson_estimates(self) -> list:
        """Per parameter (all groups, in order): its estimate as ``compute_hutchinson_hessian``'s, or
        ``None`` without a gradient. A list, not a dict keyed by the parameters: the estimate comes
        after a graph break (``autograd.grad``), and Dynamo's frame resumed there guarded the
        dict's keys' ``.grad`` by identity, so every new gradient recompiled it."""
        everyone = [p for group in self.param_groups for p in group["params"]]
        chosen = [i for i, p in enumerate(everyone) if p.requires_grad and p.grad is not None]
        params = [everyone[i] for i in chosen]
        estimates = [None] * len(everyone)
        if not params:
            return estimates
        grads = [p.grad for p in params]
        for i, g in enumerate(grads):
            if not g.requires_grad:
                raise RuntimeError(
                    f"SophiaH: the gradient of parameter {i} (among those with a gradient) has no graph, but this "
                    f"step estimates the Hessian (every update_period={self.update_period} steps): compute the "
                    f"gradients with loss.backward(create_graph=True), or pass step(hessian=...)")
        probes = hutchinson_probes(params, self.num_samples, self.distribution)
        last = len(probes) - 1
        hvps = [list(torch.autograd.grad(grads, params, grad_outputs=z, retain_graph=i < last))
                for i, z in enumerate(probes)]
        for i, estimate in zip(chosen, combine_hutchinson_samples(hvps, probes)):
            estimates[i] = estimate
        return estimates

    def _given_estimates(self, hessian: list) -> list:
        params = [p for group in self.param_groups for p in group["params"]]
        if len(hessian) != len(params):
            raise ValueError(f"SophiaH: {len(hessian)} hessian tensors for {len(params)} parameters")
        for p, h in zip(params, hessian):
            if not isinstance(h, torch.Tensor):
                raise TypeError(f"SophiaH: a hessian entry must be a Tensor, got {type(h).__name__}")
            if p.size() != h.size():
                raise ValueError(f"the shape of parameter and hessian does not match. {p.size()} vs {h.size()}")
            if h.dtype != p.dtype or h.device != p.device:
                raise ValueError(f"SophiaH: a hessian entry is {h.dtype} on {h.device}, its parameter {p.dtype} "
                                 f"on {p.device}")
        return list(hessian)

    def _hand_over(self, estimates: list) -> None:
        """Each group that steps now gets its estimates (one per parameter, all groups in order)
        pending in its state (``sophia_set_hessian``).

        A group without any gradient is not updated at this step, so it gets none (the reference
        stores them but never reads them: the next estimate replaces them first)."""
        new_states = []
        start = 0
        for index, group in enumerate(self.param_groups):
            params = list(group["params"])
            group_estimates = estimates[start:start + len(params)]
            start += len(params)
            if not params or all(p.grad is None for p in params):
                continue
            if self.state.get(params[0]):
                layout = self._group_layout(index, params)
                state = self._read(params, layout)
            else:
                state = self.transformation.init(params)
                layout = _layout(state, len(params))
            new_states.append((index, params, layout,
                               sophia_set_hessian(state, group_estimates)))
        for index, params, layout, state in new_states:  # written once every group's estimate is checked
            self._layouts[index] = layout
            self._write(params, layout, state)

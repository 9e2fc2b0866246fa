"""``compat.ASGD``: a drop-in for ``torch.optim.ASGD``."""

# No ``from __future__ import annotations``: the constructor's signature, annotations included,
# is torch's own (``inspect.signature`` compares equal).

import numbers

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _get_scalar_dtype

from functional_optim import _validate
from functional_optim._kernels.ops import nonzero
from functional_optim.asgd import ASGD as ASGD_DEFINITION

from .optimizer import FunctionalOptimizer
from ._rules import check_step, default_foreach, upgrade_state

__all__ = ["ASGD"]


class ASGD(FunctionalOptimizer):
    """ASGD (Polyak & Juditsky, 1992) with torch.optim.ASGD's API; math in ``functional_optim.asgd``.

    See :func:`functional_optim.asgd` for the formula. Every argument means what it means in
    ``torch.optim.ASGD`` (``foreach`` picks the implementation, ``capturable`` keeps ``eta`` and
    ``mu`` from being read on the host, ``differentiable`` lets autograd through ``step``). As in
    torch, ``step``, ``eta`` and ``mu`` live on the parameter's device. torch has no fused ASGD, so
    neither does this class.
    """

    definition = ASGD_DEFINITION

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        _validate.check_lr(lr)
        _validate.check_weight_decay(weight_decay)
        defaults = {
            "lr": lr,
            "lambd": lambd,
            "alpha": alpha,
            "t0": t0,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        upgrade_state(self, {"foreach": None, "maximize": False, "differentiable": False, "capturable": False},
                      scalar_keys=("step", "eta", "mu"), on_param_device=True)

    def _step_tensor(self, p: Tensor, group: dict) -> Tensor:
        # torch's ASGD keeps step on the parameter's device, capturable or not
        return torch.zeros((), device=p.device, dtype=_get_scalar_dtype())

    def _host_scalars(self, group: dict) -> bool:
        # torch's ASGD reads eta, mu and step with .item() also when differentiable (not when capturable)
        return not group["capturable"]

    def _loop_chunks(self, params: list, state: dict, hparams, static, host_scalars: bool) -> list:
        """The whole group as one chunk while torch's for-loop allocates nothing per tensor: host
        scalars, no ``maximize`` or ``weight_decay`` (each makes a new gradient) and every ``mu``
        1 (``ax`` is copied, not averaged through a temporary; ``mu`` stays 1 until step ``t0``).
        Then cache-sized chunks keep nothing in cache that one chunk would not, and each chunk
        would only add the kernel's per-call cost (transformer, CPU: 1.07x torch's for-loop with
        a chunk per tensor, 0.97x as one chunk)."""
        ids = {id(p) for p in params}
        if (host_scalars and not static.maximize and not nonzero(hparams.weight_decay)
                and len(ids) == len(params) and all(mu.item() == 1 for mu in state["mu"])):
            return [list(range(len(params)))]
        return super()._loop_chunks(params, state, hparams, static, host_scalars)

    def _use_foreach(self, group: dict, params: list) -> bool:
        return default_foreach(group, params)

    def _check_group(self, group: dict, params: list, state_steps: list) -> None:
        foreach = self._use_foreach(group, params)
        states = [self.state[p] for p in params]
        check_step(group, params, [[s["mu"] for s in states], [s["eta"] for s in states], state_steps],
                   "params, mus, etas, and state_steps", foreach, supports_xla=not foreach)

    def _validate_state_dict(self, state_dict: dict) -> None:
        """As for every compat class, with torch's older layout accepted: ``eta`` and ``mu`` stored as
        numbers (``__setstate__`` makes them tensors, as torch's does)."""
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict):
            state_dict = dict(state_dict, state={
                pid: _numbers_as_tensors(entry) if isinstance(entry, dict) else entry
                for pid, entry in state_dict["state"].items()})
        super()._validate_state_dict(state_dict)


def _numbers_as_tensors(entry: dict) -> dict:
    """``entry`` with a number in ``eta`` or ``mu`` seen as the 0-d tensor it will become (for the checks)."""
    return {k: torch.tensor(float(v)) if k in ("eta", "mu") and isinstance(v, numbers.Real) else v
            for k, v in entry.items()}

"""``compat.MuonWithAdamW``: Muon for the 2-D parameters, AdamW for the others, as one torch optimizer."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from functional_optim._kernels.muon import NS_COEFFICIENTS, NS_EPS, NS_STEPS
from functional_optim.muon import MuonHParams, validate

from .adam import AdamW
from .muon import Muon
from .optimizer import check_grad_shapes

__all__ = ["MuonWithAdamW"]

_MUON_KEYS = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")
#: the AdamW keys a user group may set: ``adamw_<name>`` -> the AdamW group's ``<name>``
_ADAMW_KEYS = {"adamw_lr": "lr", "adamw_betas": "betas", "adamw_eps": "eps", "adamw_weight_decay": "weight_decay"}


class MuonWithAdamW(Optimizer):
    """Muon (``torch.optim.Muon``'s math) on the matrices, AdamW (``torch.optim.AdamW``'s) on the rest.

    The split the Muon authors and ``torch.optim.Muon``'s documentation recommend, as one
    optimizer (one ``step``, ``zero_grad``, ``state_dict`` and scheduler)::

        opt = compat.MuonWithAdamW(model.parameters(), lr=0.02, weight_decay=0.0,
                                   adamw_lr=3e-4, adamw_betas=(0.9, 0.95), adamw_weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)  # drives both lrs

    Args: the Muon part's are ``torch.optim.Muon``'s (``lr``, ``weight_decay``, ``momentum``,
    ``nesterov``, ``ns_coefficients``, ``eps``, ``ns_steps``, ``adjust_lr_fn``, same defaults); the
    keyword-only ``adamw_lr`` (``None``: ``lr``), ``adamw_betas``, ``adamw_eps``,
    ``adamw_weight_decay`` are ``torch.optim.AdamW``'s ``lr``, ``betas``, ``eps``,
    ``weight_decay`` (AdamW's defaults). A param group (dict) may set any of these names.

    Routing: each given param group is split in two ``param_groups`` entries, its 2-D parameters
    (``use_muon=True``: keys named as ``torch.optim.Muon``'s group) and its other parameters
    (``use_muon=False``: keys named as ``torch.optim.AdamW``'s group, so ``lr`` is the AdamW lr);
    an empty half is left out. A group with ``use_muon=True`` or ``use_muon=False`` is not
    split (all its parameters go to that side; Muon ones must be 2-D), as the Muon reference
    code's ``MuonWithAuxAdam(param_groups)``: there ``lr``, ``betas``, ``eps``, ``weight_decay`` of
    a ``use_muon=False`` group are AdamW's (the ``adamw_*`` names work too), so e.g. a 2-D
    embedding or head can be given to AdamW. So an LR scheduler, which scales each group's ``"lr"``, drives
    both learning rates, each from its own initial value. The math runs in ``compat.Muon`` and
    ``compat.AdamW`` over those same group dicts and the shared ``state``: per parameter
    ``{"momentum_buffer"}`` (Muon) or ``{"step", "exp_avg", "exp_avg_sq"}`` (AdamW), torch's
    layout, so each half equals its torch optimizer step by step. ``load_state_dict`` checks the
    groups' routing and each half's state before changing anything; ``copy.deepcopy`` and pickle
    keep the two halves linked.
    Functional form: :func:`functional_optim.muon_adamw`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = NS_EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: Optional[str] = None,
        *,
        adamw_lr: Optional[float] = None,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 1e-2,
    ) -> None:
        validate(MuonHParams(lr, weight_decay, momentum, eps), adjust_lr_fn)
        defaults = {
            "lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
            "ns_coefficients": ns_coefficients, "eps": eps, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn,
            "adamw_lr": adamw_lr, "adamw_betas": adamw_betas, "adamw_eps": adamw_eps,
            "adamw_weight_decay": adamw_weight_decay,
        }
        self._muon: Optional[Muon] = None
        self._adamw: Optional[AdamW] = None
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ routing
    def _split(self, group: dict) -> tuple[Optional[dict], Optional[dict]]:
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        use_muon = group.get("use_muon")
        if use_muon is not None and not isinstance(use_muon, bool):
            raise TypeError(f"MuonWithAdamW: use_muon must be True, False or absent, got {use_muon!r}")
        allowed = {"params", "use_muon", *_MUON_KEYS, *_ADAMW_KEYS}
        if use_muon is False:  # MuonWithAuxAdam's AdamW group: AdamW's own names
            allowed |= set(_ADAMW_KEYS.values())
        unknown = set(group) - allowed
        if unknown:
            raise ValueError(f"MuonWithAdamW: unknown param group keys {sorted(unknown)}")
        given = {k: v for k, v in group.items() if k not in ("params", "use_muon")}
        if use_muon is False:  # "lr", "betas", "eps", "weight_decay" are AdamW's here
            given = {k: v for k, v in given.items() if k in _ADAMW_KEYS}
            given.update({f"adamw_{k}": group[k] for k in _ADAMW_KEYS.values() if k in group})
            if "adamw_lr" not in given and self.defaults["adamw_lr"] is None:
                given["adamw_lr"] = self.defaults["lr"]
        value = {**self.defaults, **given}
        if value["adamw_lr"] is None:
            value["adamw_lr"] = value["lr"]
        if use_muon is None:  # route by shape
            matrices, others = [p for p in params if p.ndim == 2], [p for p in params if p.ndim != 2]
        else:
            matrices, others = (params, []) if use_muon else ([], params)
        muon = {"params": matrices, **{k: value[k] for k in _MUON_KEYS}} if matrices else None
        adamw = {"params": others, **{v: value[k] for k, v in _ADAMW_KEYS.items()}} if others else None
        return muon, adamw

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (split into its Muon and AdamW halves, see the class docstring)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        muon, adamw = self._split(param_group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for part in (muon, adamw):
            if part is not None and any(id(p) in seen for p in part["params"]):
                raise ValueError("some parameters appear in more than one parameter group")
        for part, use_muon in ((muon, True), (adamw, False)):
            if part is None:
                continue
            inner = self._muon if use_muon else self._adamw
            if inner is None:
                inner = Muon([part]) if use_muon else AdamW([part])
                inner.state = self.state
                if use_muon:
                    self._muon = inner
                else:
                    self._adamw = inner
            else:
                inner.add_param_group(part)
            added = inner.param_groups[-1]
            added["use_muon"] = use_muon
            self.param_groups.append(added)

    def _link(self) -> None:
        """Point the two halves at this optimizer's group dicts and state (after a load)."""
        for inner, use_muon in ((self._muon, True), (self._adamw, False)):
            if inner is not None:
                inner.param_groups = [g for g in self.param_groups if g["use_muon"] == use_muon]
                inner.state = self.state

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step (Muon on the 2-D parameters, AdamW on the others).

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check_grad_shapes(self)
        for inner in (self._muon, self._adamw):
            if inner is not None:
                inner.step()
        return loss

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict saved by this class; a mismatched one raises ``ValueError`` and changes nothing."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("optimizer state dict must be a dict with 'state' and 'param_groups' keys")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) == len(self.param_groups):
            for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
                if saved.get("use_muon") != group["use_muon"]:
                    raise ValueError(f"param group {i} is a {'Muon' if group['use_muon'] else 'AdamW'} group here "
                                     f"but not in the state dict (use_muon={saved.get('use_muon')!r})")
            for inner, use_muon in ((self._muon, True), (self._adamw, False)):
                if inner is not None:
                    part = [s for s in saved_groups if s["use_muon"] == use_muon]
                    ids = {pid for s in part for pid in s["params"]}
                    inner._validate_state_dict({"state": {pid: v for pid, v in state_dict["state"].items()
                                                          if pid in ids}, "param_groups": part})
        super().load_state_dict(state_dict)  # torch's checks (group and parameter counts) and loading
        self._link()

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_muon": self._muon, "_adamw": self._adamw}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "_muon" in self.__dict__:
            self._link()

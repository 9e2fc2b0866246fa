"""``compat.SOAP``: ``pytorch_optimizer.SOAP``'s constructor over :func:`functional_optim.soap`."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from functional_optim._moments import check_betas_range, check_non_negative
from functional_optim.soap import factor_sizes, soap

from ._reference import ReferenceLayout, ReferenceOptimizer, check_lr

__all__ = ["SOAP"]

_STATIC = ("max_precondition_dim", "merge_dims", "precondition_1d", "correct_bias", "normalize_gradient")
_STARTED = "soap.started"
_LAYOUT = ReferenceLayout("soap.count", {"soap.mu": "exp_avg", "soap.nu": "exp_avg_sq"},
                          keep=lambda ours: bool(ours[_STARTED]))  # the reference has state once a grad came


def _factor_key(kind: str, k: int) -> str:
    return f"soap.{kind}.{k}"


def _translate(group: dict) -> dict:
    b1, b2 = group["betas"]
    return {"lr": group["lr"], "b1": b1, "b2": b2, "shampoo_beta": group["shampoo_beta"], "eps": group["eps"],
            "weight_decay": group["weight_decay"], "precondition_frequency": group["precondition_frequency"]}


def _check_positive(x: Any, name: str) -> None:
    if x <= 0:
        raise ValueError(f"{name} must be positive")


class SOAP(ReferenceOptimizer):
    """SOAP (Vyas et al., 2024, https://arxiv.org/abs/2409.11321) with ``pytorch_optimizer.SOAP``'s
    signature, defaults and checks.

    The step is :func:`functional_optim.soap` (``scale_by_soap``, the learning rate, then the
    reference's decoupled decay of the stepped parameters). ``lr``, ``betas``, ``shampoo_beta``,
    ``eps``, ``weight_decay`` and ``precondition_frequency`` may differ per group and follow
    schedulers; ``max_precondition_dim``, ``merge_dims``, ``precondition_1d``, ``correct_bias``
    and ``normalize_gradient`` are fixed at construction (a group setting another value is
    refused), ``data_format`` and ``maximize`` too, as in the reference. Extra keyword
    arguments are accepted and ignored, as the reference does.

    ``state_dict()`` is in the reference's layout: per parameter ``exp_avg``, ``exp_avg_sq``,
    ``GG`` and ``Q`` (lists over the merged dimensions, ``[]`` where one is not rotated),
    ``precondition_frequency`` and ``shampoo_beta``; ``group["step"]``. Checkpoints load both
    ways. The reference keeps ``shampoo_beta``/``precondition_frequency`` per parameter from its
    first gradient; here the group's values are used at every step (and written out), and the
    values in a loaded checkpoint are not read. See :func:`functional_optim.scale_by_soap` for
    the other differences (shapes ``merge_dims`` merges into one dimension; complex parameters
    and sparse gradients raise ``RuntimeError``; an unknown ``data_format`` raises ``ValueError``).
    """

    def __init__(self, params: ParamsT, lr: float = 3e-3, betas: tuple = (0.95, 0.95),
                 shampoo_beta: Optional[float] = None, weight_decay: float = 1e-2, precondition_frequency: int = 10,
                 max_precondition_dim: int = 10000, merge_dims: bool = False, precondition_1d: bool = False,
                 correct_bias: bool = True, normalize_gradient: bool = False, data_format: str = "channels_first",
                 eps: float = 1e-8, maximize: bool = False, **kwargs) -> None:
        check_lr(lr)
        check_betas_range(betas, ("beta1", "beta2"))
        check_non_negative(shampoo_beta, "shampoo_beta")
        check_non_negative(weight_decay, "weight_decay")
        _check_positive(precondition_frequency, "precondition_frequency")
        _check_positive(max_precondition_dim, "max_precondition_dim")
        check_non_negative(eps, "eps")
        self.data_format = data_format
        self.maximize = maximize
        self._layout_flags = {"max_precondition_dim": max_precondition_dim, "merge_dims": merge_dims,
                              "precondition_1d": precondition_1d, "data_format": data_format}
        tx = soap(lr, betas[0], betas[1], shampoo_beta, weight_decay, precondition_frequency, eps,
                  max_precondition_dim=max_precondition_dim, merge_dims=merge_dims, precondition_1d=precondition_1d,
                  correct_bias=correct_bias, normalize_gradient=normalize_gradient, data_format=data_format,
                  maximize=maximize)
        defaults = {"lr": lr, "betas": betas, "shampoo_beta": shampoo_beta, "weight_decay": weight_decay,
                    "precondition_frequency": precondition_frequency, "max_precondition_dim": max_precondition_dim,
                    "merge_dims": merge_dims, "precondition_1d": precondition_1d, "correct_bias": correct_bias,
                    "normalize_gradient": normalize_gradient, "eps": eps}
        super().__init__(params, tx, defaults, _translate, static_keys=_STATIC, layout=_LAYOUT)

    def __str__(self) -> str:
        return "SOAP"

    def _factor_layout(self, p: Tensor) -> list:
        """Per (merged) dimension of ``p``: its factor's size if it is rotated, else ``None``."""
        return factor_sizes(p.shape, **self._layout_flags)

    # ------------------------------------------------------------------ the reference's GG / Q lists
    def state_dict(self) -> dict:
        sd = super().state_dict()
        for saved, group in zip(sd["param_groups"], self.param_groups):
            shampoo = group["shampoo_beta"] if group["shampoo_beta"] is not None else group["betas"][1]
            for pid, p in zip(saved["params"], group["params"]):
                entry = sd["state"].get(pid)
                if entry is None:
                    continue
                live = self.state[p]
                sizes = self._factor_layout(p)
                entry["GG"] = [[] if n is None else live[_factor_key("gg", k)] for k, n in enumerate(sizes)]
                entry["Q"] = [[] if not n else live[_factor_key("q", k)] for k, n in enumerate(sizes)]
                entry["precondition_frequency"] = group["precondition_frequency"]
                entry["shampoo_beta"] = shampoo
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of this class or of ``pytorch_optimizer.SOAP`` (its ``GG``/``Q`` lists are
        checked against this optimizer's shapes first: ``ValueError`` naming the parameter)."""
        if (isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict)
                and isinstance(state_dict.get("param_groups"), list)
                and len(state_dict["param_groups"]) == len(self.param_groups)
                and not any(_LAYOUT.count in v for v in state_dict["state"].values() if isinstance(v, dict))):
            state_dict = dict(state_dict, state=self._factors_from_reference(state_dict))
        super().load_state_dict(state_dict)

    def _factors_from_reference(self, state_dict: dict) -> dict:
        state = dict(state_dict["state"])
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            ids = list(saved["params"])
            if "step" not in saved or len(ids) != len(group["params"]):
                continue
            for pid, p in zip(ids, group["params"]):
                got = state.get(pid)
                sizes = self._factor_layout(p)
                ours = {} if got is None else {k: v for k, v in got.items()
                                               if k not in ("GG", "Q", "precondition_frequency", "shampoo_beta")}
                ours[_STARTED] = torch.tensor(got is not None, device=p.device)
                gg = got.get("GG") if got is not None else [[] for _ in sizes]
                q = got.get("Q") if got is not None else [[] for _ in sizes]
                if not isinstance(gg, (list, tuple)) or not isinstance(q, (list, tuple)) or \
                        len(gg) != len(sizes) or len(q) != len(sizes):
                    raise ValueError(f"state of parameter {pid}: GG and Q must be lists of {len(sizes)} entries "
                                     f"(one per merged dimension of its shape {tuple(p.shape)})")
                for k, n in enumerate(sizes):
                    for kind, entries in (("gg", gg), ("q", q)):
                        value = entries[k]
                        if n is None:
                            if isinstance(value, Tensor) and value.numel() > 0:
                                raise ValueError(f"state of parameter {pid}: {kind.upper()}[{k}] must be [] "
                                                 f"(dimension {k} is not rotated)")
                            continue
                        if got is None or (not isinstance(value, Tensor) and n == 0):
                            value = torch.zeros(n, n, dtype=p.dtype, device=p.device)
                        elif not isinstance(value, Tensor):
                            raise ValueError(f"state of parameter {pid}: {kind.upper()}[{k}] must be a "
                                             f"({n}, {n}) tensor, got {type(value).__name__}")
                        ours[_factor_key(kind, k)] = value
                state[pid] = ours
        return state

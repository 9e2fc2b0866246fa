"""``compat.AdamWScheduleFree`` / ``compat.SGDScheduleFree``: ``schedulefree``'s classes over
:func:`functional_optim.schedule_free_adamw` / :func:`functional_optim.schedule_free_sgd`."""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch.optim.optimizer import ParamsT

from functional_optim.schedule_free import schedule_free_adamw, schedule_free_sgd

from .transformation import TransformationOptimizer

__all__ = ["AdamWScheduleFree", "SGDScheduleFree"]

_NOT_TRAIN = ("Optimizer was not in train mode when step is called. Please insert .train() and .eval() calls on the "
              "optimizer. See documentation for details.")


class _ScheduleFree(TransformationOptimizer):
    """The train/eval switch of ``schedulefree``: ``train()`` moves the params from ``x`` to
    ``y = lerp(x, z, 1 - b1)``, ``eval()`` back with ``x = lerp(y, z, 1 - 1/b1)``; ``step``
    refuses to run in eval mode. Optimizers start in eval mode, as the reference's. A param group
    without any gradient still counts the step, as in the reference."""

    _b1_key: str

    def _setup(self, foreach) -> None:
        for group in self.param_groups:
            group.setdefault("train_mode", False)
            group.setdefault("foreach", foreach)
        self.defaults["train_mode"] = False
        self.defaults["foreach"] = foreach

    def _b1(self, group):
        return group["betas"][0] if self._b1_key == "betas" else group["momentum"]

    def _switch(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            b1 = self._b1(group)
            weight = 1 - b1 if to_train else 1 - 1 / b1
            for p in group["params"]:
                state = self.state[p]
                if "z" in state:
                    p.lerp_(end=state["z"].to(p.device), weight=weight)
            group["train_mode"] = to_train

    # ------------------------------------------------------------------ checkpoints in schedulefree's layout
    _NU, _REF_NU = "base_state.0.nu", "exp_avg_sq"

    def state_dict(self) -> dict:
        """torch's format in ``schedulefree``'s layout: each parameter's ``z`` (and ``exp_avg_sq``
        for AdamW), each group's ``k``, ``weight_sum`` and ``lr_max`` as numbers in the group, so
        a checkpoint loads into ``schedulefree``'s class and back."""
        sd = super().state_dict()
        state = {pid: dict(st) for pid, st in sd["state"].items()}
        for group in sd["param_groups"]:
            first = state.get(group["params"][0], {})
            if "count" in first:
                group["k"] = int(first.pop("count"))
                group["weight_sum"] = float(first.pop("weight_sum"))
                group["lr_max"] = float(first.pop("lr_max"))
                first.pop("b1")
                first.pop("base_state.0.count", None)
            else:
                group.update(k=0, weight_sum=0.0, lr_max=-1.0)
            for pid in group["params"]:
                st = state.get(pid)
                if st is not None and self._NU in st:
                    st[self._REF_NU] = st.pop(self._NU)
        sd["state"] = state
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of this class or of the ``schedulefree`` class it mirrors. A parameter
        without state there (it never had a gradient) gets ``z`` = its current value, as the
        reference would create it at its first gradient."""
        if not (isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict)
                and isinstance(state_dict.get("param_groups"), list)
                and len(state_dict["param_groups"]) == len(self.param_groups)
                and all("k" in g for g in state_dict["param_groups"])):
            return super().load_state_dict(state_dict)
        adam = self._b1_key == "betas"
        state = {pid: dict(st) for pid, st in state_dict["state"].items()}
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            ids = list(saved["params"])
            if len(ids) != len(group["params"]) or not any(pid in state for pid in ids):
                continue
            for pid, p in zip(ids, group["params"]):
                st = state.setdefault(pid, {})
                if "z" not in st:
                    st["z"] = p.detach().clone()
                    if adam:
                        st[self._REF_NU] = torch.zeros_like(p)
                if adam:
                    st[self._NU] = st.pop(self._REF_NU)
            first = state[ids[0]]
            dev = first["z"].device
            count = torch.tensor(int(saved["k"]), dtype=torch.int32, device=dev)
            first.update(count=count, weight_sum=torch.tensor(float(saved["weight_sum"]), dtype=torch.float64, device=dev),
                         lr_max=torch.tensor(float(saved["lr_max"]), dtype=torch.float64, device=dev),
                         b1=torch.tensor(float(saved["betas"][0] if adam else saved["momentum"]), dtype=torch.float64,
                                         device=dev))
            if adam:
                first["base_state.0.count"] = count.clone()
        super().load_state_dict(dict(state_dict, state=state))
        for group in self.param_groups:
            for key in ("k", "weight_sum", "lr_max", "scheduled_lr"):
                group.pop(key, None)

    @torch.no_grad()
    def eval(self) -> None:
        """Set the params to the evaluation point ``x`` (call before evaluating or saving)."""
        self._switch(False)

    @torch.no_grad()
    def train(self) -> None:
        """Set the params to the training point ``y`` (call before training steps)."""
        self._switch(True)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step (in train mode).

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        if not self.param_groups[0]["train_mode"]:
            raise Exception(_NOT_TRAIN)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # a group whose grads are all None still counts the step (its k, weight sum and lr_max
        # move on), as the reference's
        self._update_then_write(skip_without_grads=False)
        return loss


class AdamWScheduleFree(_ScheduleFree):
    """Schedule-Free AdamW (Defazio et al., 2024, https://arxiv.org/abs/2405.15682) with
    ``schedulefree.AdamWScheduleFree``'s signature, defaults and ``train()``/``eval()`` switch.

    Each step is :func:`functional_optim.schedule_free_adamw`; the params equal the reference's
    up to rounding. ``foreach`` is accepted and kept in the groups; the math is the same.
    In ``self.state`` each parameter holds ``z`` and ``base_state.0.nu``, and the group's first
    parameter the step count, weight sum and ``lr_max``; ``state_dict()`` writes them in the
    reference's layout (``exp_avg_sq``; ``k``, ``weight_sum``, ``lr_max`` in the param group), so
    checkpoints load both ways between this class and ``schedulefree.AdamWScheduleFree``.
    """

    _b1_key = "betas"

    def __init__(self, params: ParamsT, lr: Union[float, torch.Tensor] = 0.0025,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0,
                 foreach: Optional[bool] = hasattr(torch, "_foreach_mul_")) -> None:
        tx = schedule_free_adamw(lr, tuple(betas), eps, weight_decay, warmup_steps, r, weight_lr_power)
        super().__init__(params, tx, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)
        self._setup(foreach)


class SGDScheduleFree(_ScheduleFree):
    """Schedule-Free SGD (Defazio et al., 2024, https://arxiv.org/abs/2405.15682) with
    ``schedulefree.SGDScheduleFree``'s signature, defaults, checks and ``train()``/``eval()`` switch.

    Each step is :func:`functional_optim.schedule_free_sgd`; the params equal the reference's up
    to rounding. ``foreach`` is accepted and kept in the groups.
    """

    _b1_key = "momentum"

    def __init__(self, params: ParamsT, lr: Union[float, torch.Tensor] = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2,
                 foreach: Optional[bool] = hasattr(torch, "_foreach_mul_")) -> None:
        tx = schedule_free_sgd(lr, momentum, weight_decay, warmup_steps, r, weight_lr_power)
        super().__init__(params, tx, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power)
        self._setup(foreach)

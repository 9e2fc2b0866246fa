"""``compat.Lion``: ``lion_pytorch.Lion``'s constructor over :func:`functional_optim.lion`."""

from __future__ import annotations

from typing import Any, Tuple

from torch.optim.optimizer import ParamsT

from functional_optim.lion import lion

from .transformation import TransformationOptimizer

__all__ = ["Lion"]

_OURS, _THEIRS = "0.mu", "exp_avg"  # the chain's first part's ScaleByLionState.mu <-> lion_pytorch's key


def _renamed(state: Any, old: str, new: str) -> Any:
    if not isinstance(state, dict) or old not in state:
        return state
    return {(new if k == old else k): v for k, v in state.items()}


class Lion(TransformationOptimizer):
    """Lion (Chen et al., 2023, https://arxiv.org/abs/2302.06675) with ``lion_pytorch.Lion``'s signature.

    ``Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, use_triton=False,
    decoupled_weight_decay=False)``; param groups hold ``lr``, ``betas`` and ``weight_decay``
    as in ``lion_pytorch``. Each step is :func:`functional_optim.lion` (a composition of
    ``scale_by_lion``, ``add_decayed_weights`` and ``scale_by_learning_rate``), equal to
    ``lion_pytorch.Lion`` up to rounding (a few ulps per step).

    ``decoupled_weight_decay=True`` divides every group's ``weight_decay`` by the ``lr`` given
    to the constructor, as ``lion_pytorch`` does (so ``p <- p * (1 - lr / lr_0 * wd)``).
    ``use_triton`` is accepted and ignored: ``lion_pytorch``'s Triton kernel computes the same
    step, and ours runs on any device. Invalid values raise ``ValueError`` where
    ``lion_pytorch`` asserts. ``state_dict()`` stores the momentum as ``"exp_avg"``, so
    checkpoints load both ways between this class and ``lion_pytorch.Lion``.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-4, betas: Tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, use_triton: bool = False, decoupled_weight_decay: bool = False) -> None:
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not all(0.0 <= beta <= 1.0 for beta in betas):
            raise ValueError(f"Invalid betas: {betas}")
        self._init_lr = lr
        self.decoupled_wd = decoupled_weight_decay
        super().__init__(params, lion(lr, tuple(betas), weight_decay), lr=lr, betas=tuple(betas),
                         weight_decay=weight_decay)

    def state_dict(self) -> dict:
        """torch's format with ``lion_pytorch``'s key: each parameter's momentum is ``"exp_avg"``."""
        sd = super().state_dict()
        sd["state"] = {k: _renamed(v, _OURS, _THEIRS) for k, v in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of this class or of ``lion_pytorch.Lion`` (the same layout)."""
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict):
            state_dict = dict(state_dict, state={k: _renamed(v, _THEIRS, _OURS) for k, v in state_dict["state"].items()})
        super().load_state_dict(state_dict)

    def _hparams(self, group: dict) -> Any:
        hp = super()._hparams(group)
        if not self.decoupled_wd:
            return hp
        lion_hp, wd_hp, lr_hp = hp
        return (lion_hp, wd_hp._replace(weight_decay=wd_hp.weight_decay / self._init_lr), lr_hp)

"""Reference optimizers the benchmark builds from torch.optim itself (no package has them).

:class:`MuonAndAdamW` is ``compat.MuonWithAdamW``'s reference: ``torch.optim.Muon`` on the 2-D
parameters and ``torch.optim.AdamW`` on the others, two torch optimizers stepped together, the
way the split is used without a combined class.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["MuonAndAdamW"]


class MuonAndAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` (matrices) and ``torch.optim.AdamW`` (the rest) behind one ``step``.

    Takes ``compat.MuonWithAdamW``'s arguments and defaults: ``lr``, ``weight_decay``,
    ``momentum``, ``nesterov``, ``ns_coefficients``, ``eps``, ``ns_steps``, ``adjust_lr_fn`` are
    Muon's (``torch.optim.Muon``'s defaults where the keyword is not given); ``adamw_lr``
    (``None``: ``lr``), ``adamw_betas``, ``adamw_eps``, ``adamw_weight_decay`` are AdamW's. Each
    part runs torch's default implementation. ``param_groups`` lists both parts' groups (so an LR
    scheduler drives both) and ``state`` is shared by both.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, *, adamw_lr: Optional[float] = None,
                 adamw_betas: tuple = (0.9, 0.999), adamw_eps: float = 1e-8, adamw_weight_decay: float = 1e-2,
                 **muon_kwargs) -> None:
        params = list(params)
        matrices = [p for p in params if p.dim() == 2]
        others = [p for p in params if p.dim() != 2]
        self.parts = []
        if matrices:
            self.parts.append(torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, **muon_kwargs))
        if others:
            self.parts.append(torch.optim.AdamW(others, lr=lr if adamw_lr is None else adamw_lr, betas=adamw_betas,
                                                eps=adamw_eps, weight_decay=adamw_weight_decay))
        super().__init__(params, {})
        self.param_groups = [group for part in self.parts for group in part.param_groups]
        for part in self.parts:
            part.state = self.state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss

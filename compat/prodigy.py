"""``compat.Prodigy``: ``prodigyopt.Prodigy``'s class over the math of :func:`functional_optim.prodigy`."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.optim.optimizer import Optimizer, ParamsT

from functional_optim import _validate
from functional_optim.prodigy import _LeafHP, _prodigy_math, _sliced, check_prodigy_args

__all__ = ["Prodigy"]


class Prodigy(Optimizer):
    """Prodigy (Mishchenko & Defazio, 2023, https://arxiv.org/abs/2306.06101) with
    ``prodigyopt.Prodigy``'s signature, defaults, checks, param-group keys and state layout.

    As the reference, one estimate ``d`` spans all param groups: ``betas``, ``beta3``,
    ``use_bias_correction``, ``decouple``, ``d_coef`` and ``growth_rate`` are read from the
    first group, the learning rate is the largest group ``lr`` (other groups may only use 0,
    else ``RuntimeError``), ``weight_decay``, ``eps``, ``d0``, ``safeguard_warmup`` and
    ``slice_p`` are per group. ``d``, ``d_max``, ``d_numerator``, ``k`` (and ``d_denom``,
    ``d_hat``) are written to every group after each step as Python numbers, as the reference
    (one host read per step). The step itself is :func:`functional_optim.prodigy`'s kernel.

    Differences: gradients are not modified in place (the reference adds the coupled weight
    decay into ``p.grad``); ``p0`` is always a copy of the (sliced) parameter (the reference
    stores a 0-d zero for an all-zero parameter; such a checkpoint loads and steps the same);
    ``fsdp_in_use=True`` (an all-reduce of the two sums) is not implemented and raises.
    """

    def __init__(self, params: ParamsT, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0,
                 decouple=True, use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0,
                 growth_rate=float('inf'), fsdp_in_use=False, slice_p=1):
        check_prodigy_args(lr, betas, eps, d0)
        if fsdp_in_use:
            raise NotImplementedError("Prodigy(fsdp_in_use=True) is not implemented")
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, d=d0, d0=d0,
                        d_max=d0, d_numerator=0.0, d_coef=d_coef, k=0, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=decouple,
                        safeguard_warmup=safeguard_warmup, fsdp_in_use=fsdp_in_use, slice_p=slice_p)
        self.d0 = d0
        super().__init__(params, defaults)

    @property
    def supports_memory_efficient_fp16(self):
        return False

    @property
    def supports_flat_params(self):
        return True

    @torch.compiler.disable
    def _check_and_make_states(self) -> None:
        """prodigyopt's checks at ``step`` (one nonzero ``lr``, no sparse gradient), then the state
        of each parameter at its first gradient: ``step``, ``s``, ``p0``, ``exp_avg``,
        ``exp_avg_sq``; nothing is made before every check passed.

        Run eagerly under torch.compile, first thing in every step: the step's graph breaks here
        only, before it reads any hyperparameter, so the math after it compiles once. Traced, the
        state's creation compiled 8 graphs more in the first step; a break in the middle of the
        step, after the float ``lr`` was read, made Dynamo specialize ``lr`` (a graph per value).
        """
        lr = max(group["lr"] for group in self.param_groups)
        for group in self.param_groups:
            if group["lr"] not in [lr, 0.0]:
                raise RuntimeError("Setting different lr values in different parameter groups is only supported "
                                   "for values of 0")
        with_grad = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for _, p in with_grad):
            raise RuntimeError("Prodigy does not support sparse gradients")
        has_exp_avg = self.param_groups[0]["betas"][0] > 0
        for group, p in with_grad:
            state = self.state[p]
            if "step" in state:
                continue
            state["step"] = 0
            state["s"] = torch.zeros_like(_sliced(p, group["slice_p"]))
            state["p0"] = _sliced(p, group["slice_p"]).clone()
            if has_exp_avg:
                state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_and_make_states()
        first = self.param_groups[0]
        lr = max(group["lr"] for group in self.param_groups)
        has_exp_avg = first["betas"][0] > 0
        params, grads, hps = [], [], []
        for group in self.param_groups:
            leaf = _LeafHP(group["weight_decay"], group["eps"], group["d0"], group["safeguard_warmup"],
                           group["lr"] > 0.0, group["slice_p"])
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                    grads.append(p.grad)
                    hps.append(leaf)
        if not params:
            return loss
        dev = params[0].device
        f64 = lambda x: _validate.float64_scalar(x, dev)  # noqa: E731
        st = [self.state[p] for p in params]
        out = _prodigy_math(
            grads, params, [x["exp_avg"] for x in st] if has_exp_avg else None, [x["exp_avg_sq"] for x in st],
            [x["s"] for x in st], [x["p0"] for x in st], torch.tensor(first["k"], dtype=torch.int32, device=dev),
            f64(first["d"]), f64(first["d_max"]), f64(first["d_numerator"]), lr=lr, betas=first["betas"],
            beta3=first["beta3"], d_coef=first["d_coef"], growth_rate=first["growth_rate"],
            d0_last=self.param_groups[-1]["d0"], decouple=first["decouple"],
            use_bias_correction=first["use_bias_correction"], has_exp_avg=has_exp_avg, leaf_hps=hps)
        for i, x in enumerate(st):
            if has_exp_avg:
                x["exp_avg"] = out.exp_avg[i]
            x["exp_avg_sq"], x["s"] = out.exp_avg_sq[i], out.s[i]
        applied, k_, d_, d_max_, num_, d_denom, d_hat = (float(t) for t in torch.stack(
            [out.applied.double(), out.count.double(), out.d, out.d_max, out.d_numerator, out.d_denom,
             out.d_hat]).cpu())
        if not applied:
            return loss
        for p, x, new in zip(params, st, out.new_params):
            p.copy_(new)
            x["step"] += 1
        for group in self.param_groups:
            group.update(d_numerator=num_, d_denom=d_denom, d=d_, d_max=d_max_, d_hat=d_hat, k=int(k_))
        return loss

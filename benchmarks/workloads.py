"""Parameter sets to optimise: shapes only (the step's cost does not depend on the model's forward).

* ``transformer`` — a small transformer's parameters: 3 blocks of attention (4 x 512x512) and MLP
  (2048x512, 512x2048 and their biases), a 32000x128 embedding and a final norm: 27 tensors,
  13.5M parameters. Bandwidth-bound: the step's cost is mostly moving bytes.
* ``many-small`` — 1000 small tensors (500 of 32x64 and 500 of 512), 1.28M parameters.
  Overhead-bound: the step's cost is mostly per-tensor dispatch / Python.
* ``large`` — 8 blocks at width 1024 plus a 32000x1024 embedding: 134M parameters in 67 tensors
  (for GPUs; ``--large``).

Optimizers that cannot take a workload as it is run on a workload derived from it (the
:attr:`~benchmarks.registry.OptimizerSpec.workload` of their spec): :func:`matrices` (Muon: the
2-D parameters only), :func:`sparse_rows` (SparseAdam: embedding-style sparse gradients),
:func:`with_objective` (L-BFGS: a loss to evaluate, :class:`Quadratic`) and :func:`with_hessian`
(SophiaH: a Hessian-diagonal estimate given to every step).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["Workload", "WORKLOADS", "make", "describe", "matrices", "sparse_rows", "Quadratic", "with_objective",
           "with_hessian"]


def _blocks(n_blocks: int, width: int) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for _ in range(n_blocks):
        shapes += [(width, width)] * 4  # q, k, v, out projections
        shapes += [(4 * width, width), (width, 4 * width), (4 * width,), (width,)]  # MLP weights and biases
    return shapes


_SHAPES = {
    "transformer": _blocks(3, 512) + [(32000, 128), (512,), (512,)],
    "many-small": [(32, 64), (512,)] * 500,
    "large": _blocks(8, 1024) + [(32000, 1024), (1024,), (1024,)],
}


@dataclasses.dataclass
class Workload:
    name: str
    params: list  # float32 tensors (templates: every candidate clones them)
    grads: list
    derived: str = ""  # how this was derived from workload ``name`` ("" for the workload itself)
    objective: Optional[Callable] = None  # params -> (loss, grads), for optimizers whose step evaluates the loss
    # extra per-parameter inputs of every step, by keyword (``{"hessian": [tensor per param]}``): passed
    # to ``optimizer.step(**step_inputs)`` and to the functional ``update(..., **step_inputs)``
    step_inputs: dict = dataclasses.field(default_factory=dict)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def describe(self) -> str:
        return describe(self.name)


WORKLOADS = tuple(_SHAPES)


def describe(name: str) -> str:
    """``"<name>: <tensors> tensors, <params>M params"``."""
    shapes = _SHAPES[name]
    numel = sum(math.prod(s) for s in shapes)
    return f"{name}: {len(shapes)} tensors, {numel / 1e6:.2f}M params"


def make(name: str, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0) -> Workload:
    """Random parameters and (fixed) gradients with the shapes of workload ``name``."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype).to(device) for s in _SHAPES[name]]
    grads = [torch.randn(s, generator=gen, dtype=dtype).mul_(1e-2).to(device) for s in _SHAPES[name]]
    return Workload(name, params, grads)


def matrices(work: Workload) -> Workload:
    """The 2-D parameters of ``work`` and their gradients (what Muon optimizes)."""
    keep = [i for i, p in enumerate(work.params) if p.dim() == 2]
    numel = sum(work.params[i].numel() for i in keep)
    return dataclasses.replace(work, params=[work.params[i] for i in keep], grads=[work.grads[i] for i in keep],
                               derived=f"2-D tensors only: {len(keep)} tensors, {numel / 1e6:.2f}M params")


SPARSE_FRACTION = 0.1  # rows of each parameter a sparse gradient holds


def sparse_rows(work: Workload, fraction: float = SPARSE_FRACTION, seed: int = 1) -> Workload:
    """``work`` with embedding-style sparse gradients (what SparseAdam takes).

    Each gradient is a coalesced COO tensor holding the dense gradient's values on a fixed random
    ``fraction`` of its rows (of its entries for a vector), like ``nn.Embedding(sparse=True)``'s
    gradient for a batch that looks up those rows; the other rows get no update.
    """
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for g in work.grads:
        k = max(1, round(fraction * g.shape[0]))
        rows = torch.randperm(g.shape[0], generator=gen)[:k].sort().values.to(g.device)
        grads.append(torch.sparse_coo_tensor(rows.unsqueeze(0), g[rows], g.shape, check_invariants=True).coalesce())
    return dataclasses.replace(work, grads=grads, derived=f"sparse COO gradients on a fixed {fraction:.0%} of each "
                                                           f"tensor's rows")


class Quadratic:
    """``f(params) = sum_i sum(scale_i * (p_i - target_i)^2)``: a deterministic objective over a
    workload's tensors, with its gradient ``2 scale_i (p_i - target_i)`` computed directly.

    ``target_i`` is standard normal and ``scale_i`` log-uniform in ``[1e-3, 1]`` (fixed by
    ``seed``): ill-conditioned enough that L-BFGS does not converge (and stop early on its
    tolerances) within a benchmark's steps. Calling it on a list of tensors returns ``(loss,
    grads)``, the ``value_and_grad_fn`` of ``fo.lbfgs``; the same arithmetic for every caller, so
    equal parameters get bitwise equal losses and gradients.
    """

    def __init__(self, params: list, seed: int = 2) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.targets = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
        self.scales = [torch.empty(p.shape, dtype=p.dtype).uniform_(math.log(1e-3), 0.0, generator=gen).exp_()
                       .to(p.device) for p in params]

    def __call__(self, params: list) -> tuple[Tensor, list]:
        losses, grads = [], []
        for p, t, s in zip(params, self.targets, self.scales):
            d = p - t
            sd = s * d
            losses.append((sd * d).sum())
            grads.append(sd + sd)
        return torch.stack(losses).sum(), grads


def with_objective(work: Workload) -> Workload:
    """``work`` with a :class:`Quadratic` objective (what L-BFGS's ``step(closure)`` evaluates)."""
    return dataclasses.replace(work, objective=Quadratic(work.params),
                               derived="step(closure) on a separable quadratic objective")


def with_hessian(work: Workload, seed: int = 3) -> Workload:
    """``work`` with a fixed Hessian-diagonal estimate per parameter (what SophiaH's
    ``step(hessian=...)`` takes instead of computing a Hutchinson estimate through autograd).

    The estimate is ``(0.1 z)^2`` for standard-normal ``z``: positive, of the gradients' order.
    Given to every step, it refreshes the Hessian moment at every step (the reference's
    ``update_period`` steps only apply when it estimates the Hessian itself), the most work a step does.
    """
    gen = torch.Generator().manual_seed(seed)
    hessian = [torch.randn(p.shape, generator=gen, dtype=p.dtype).mul_(0.1).square_().to(p.device)
               for p in work.params]
    return dataclasses.replace(work, step_inputs={"hessian": hessian},
                               derived="a fixed Hessian-diagonal estimate given to every step")

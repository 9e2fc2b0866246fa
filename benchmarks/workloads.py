"""Parameter sets to optimise: shapes only (the step's cost does not depend on the model's forward).

* ``transformer`` — a small transformer's parameters: 3 blocks of attention (4 x 512x512) and MLP
  (2048x512, 512x2048 and their biases), a 32000x128 embedding and a final norm: 27 tensors,
  13.5M parameters. Bandwidth-bound: the step's cost is mostly moving bytes.
* ``many-small`` — 1000 small tensors (500 of 32x64 and 500 of 512), 1.28M parameters.
  Overhead-bound: the step's cost is mostly per-tensor dispatch / Python.
* ``large`` — 8 blocks at width 1024 plus a 32000x1024 embedding: 134M parameters in 67 tensors
  (for GPUs; ``--large``).
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["Workload", "WORKLOADS", "make", "describe"]


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

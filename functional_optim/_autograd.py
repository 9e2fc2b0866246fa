"""Making an accidental autograd chain across training steps visible.

The pure ``update`` is differentiable: when its inputs require grad, autograd records it, which
is what meta-learning wants (hypergradients through unrolled steps). In a plain training loop
the same recording is a leak: with params that require grad (``dict(model.named_parameters())``
instead of ``{k: p.detach() ...}``), every step's new params hang on the previous step's graph,
and memory grows with the number of steps (+367 MB after 400 steps of a 17k-parameter MLP).

The two cases differ in what requires grad. Differentiating through updates needs a gradient
path through the step itself: gradients made with ``create_graph=True`` or tensor
hyperparameters that require grad. A leak has neither: only the params carry history. That
case gets an :class:`AutogradChainWarning` (shown once per call site by Python's default
filter); nothing is changed, so differentiation keeps working wherever it was intended.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ._kernels.eager import inside_functorch_transform
from .tree import flatten

__all__ = ["AutogradChainWarning", "warn_if_chaining_graphs"]


class AutogradChainWarning(UserWarning):
    """An eager functional update extends the autograd graph of the previous step's params."""


def warn_if_chaining_graphs(name: str, params: list, grads: list, hparams: Any) -> None:
    """Warn when ``params`` carry autograd history but neither ``grads`` nor ``hparams`` require
    grad: the update would chain this step onto every earlier one (see the module docstring)."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return
    if not any(isinstance(p, Tensor) and p.grad_fn is not None for p in params):
        return
    if any(isinstance(g, Tensor) and g.requires_grad for g in grads):
        return
    if any(isinstance(h, Tensor) and h.requires_grad for h in flatten(hparams)[0]):
        return
    if inside_functorch_transform():
        return
    warnings.warn(
        f"{name}.update: the params carry autograd history (they were produced by an earlier "
        "update of params that require grad), so this step is recorded on top of every earlier "
        "one and memory grows each step. In a training loop pass detached params "
        "(`{k: p.detach() for k, p in model.named_parameters()}`) or run the update under "
        "torch.no_grad(). To differentiate through updates on purpose, compute the grads with "
        "create_graph=True or give tensor hyperparameters that require grad (then no warning).",
        AutogradChainWarning,
        stacklevel=3,
    )

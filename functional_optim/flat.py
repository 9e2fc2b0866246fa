"""Flat storage: a pytree of tensors as one 1-D buffer per (device, dtype).

Compiling an optimizer step over a model with 1000 parameter tensors traces every operation 1000
times; graph size and compile time grow with the number of tensors (over ten minutes for 1000
tensors on two CPU cores, for ``torch.compile(torch.optim.Adam(...).step)`` as for a per-leaf
functional step). With a :class:`FlatLayout`, the training loop keeps its parameters as a few flat
buffers: the model sees zero-copy views (``layout.unpack``), autograd delivers the gradient already
flat, and the optimizer's graph has a fixed size whatever the number of tensors.

For elementwise optimizers (Adam, AdamW, Adagrad, Adadelta, NAdam) every element sees the same
arithmetic as per leaf, so results are bitwise equal, provided every leaf gets a gradient each
step (the flat buffer has one ``step`` count per group). Adafactor needs each matrix's shape for
its factored moments and must stay per leaf.
"""

from __future__ import annotations

from typing import Any

import optree
import torch

from .tree import flatten, unflatten

__all__ = ["FlatLayout"]


class FlatLayout:
    """How the leaves of a pytree of tensors map onto flat buffers, one per (device, dtype)."""

    def __init__(self, tree: Any):
        leaves, self.spec = flatten(tree)
        self.shapes = [leaf.shape for leaf in leaves]
        groups: dict = {}
        for i, leaf in enumerate(leaves):
            groups.setdefault((leaf.device, leaf.dtype), []).append(i)
        self.groups = list(groups.values())
        self.num_leaves = len(leaves)
        # A flat dict (named parameters) or a list/tuple is rebuilt directly, which also works
        # inside torch.compile; other trees go through their treespec (eager only).
        self._dict_keys = None
        if isinstance(tree, dict) and all(isinstance(v, torch.Tensor) for v in tree.values()):
            self._dict_keys = [path[0] for path in optree.tree_paths(tree, none_is_leaf=True)]
        self._sequence_type = type(tree) if type(tree) in (list, tuple) else None

    def pack(self, tree: Any) -> tuple[torch.Tensor, ...]:
        """New flat buffers holding the leaves of ``tree`` (a copy), in this layout."""
        leaves, _ = flatten(tree)
        return tuple(torch.cat([leaves[i].reshape(-1) for i in idx]) for idx in self.groups)

    def unpack(self, flat: tuple[torch.Tensor, ...]) -> Any:
        """The tree of views into ``flat`` (no copy; differentiable)."""
        leaves: list = [None] * self.num_leaves
        for idx, buffer in zip(self.groups, flat):
            pieces = torch.split(buffer, [self.shapes[i].numel() for i in idx])
            for i, piece in zip(idx, pieces):
                leaves[i] = piece.view(self.shapes[i])
        if self._dict_keys is not None:
            return dict(zip(self._dict_keys, leaves))
        if self._sequence_type is not None:
            return self._sequence_type(leaves)
        return unflatten(self.spec, leaves)

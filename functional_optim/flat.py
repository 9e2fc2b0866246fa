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

from typing import Any, NamedTuple, Sequence

import optree
import torch

from .tree import check_leaves_match, flatten, flatten_like, leaf_paths, unflatten

__all__ = ["FlatLayout"]


class _Expected(NamedTuple):
    """The shape, dtype and device a leaf or buffer must have (what ``check_leaves_match`` reads)."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def _check_tensors(what: str, values: Sequence[Any], expected: Sequence[_Expected], paths: Sequence[str]) -> None:
    """Each of ``values`` is a dense tensor with its ``expected`` shape, dtype and device, else
    ``TypeError``/``ValueError`` naming ``what`` and the path. Only metadata is compared, so the
    checks resolve while torch.compile traces."""
    for i, value in enumerate(values):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{what} at {paths[i]} must be a Tensor, got {type(value).__name__}")
        if value.layout != torch.strided:
            raise ValueError(f"{what} at {paths[i]} has layout {value.layout}, expected torch.strided")
    check_leaves_match(expected, values, paths, what)


class FlatLayout:
    """How the leaves of a pytree of tensors map onto flat buffers, one per (device, dtype)."""

    def __init__(self, tree: Any):
        leaves, self.spec = flatten(tree)
        # the tree's structure with None leaves, which pack's input is checked against (the
        # layout keeps no reference to the tensors)
        self._skeleton = optree.tree_unflatten(self.spec, [None] * len(leaves))
        # computed here, as optree cannot build a dict's paths while torch.compile traces
        self._paths = leaf_paths(self._skeleton)
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, torch.Tensor):
                raise TypeError(f"FlatLayout: tree at {self._paths[i]} must be a Tensor, got {type(leaf).__name__}")
        self.shapes = [leaf.shape for leaf in leaves]
        self._leaves = [_Expected(leaf.shape, leaf.dtype, leaf.device) for leaf in leaves]
        groups: dict = {}
        for i, leaf in enumerate(leaves):
            groups.setdefault((leaf.device, leaf.dtype), []).append(i)
        self.groups = list(groups.values())
        self._buffers = [_Expected(torch.Size([sum(self.shapes[i].numel() for i in idx)]), dtype, device)
                         for (device, dtype), idx in groups.items()]
        self._buffer_paths = [f"[{k}]" for k in range(len(self.groups))]
        self.num_leaves = len(leaves)
        # A flat dict (named parameters) or a list/tuple is rebuilt directly, which also works
        # inside torch.compile; other trees go through their treespec (eager only).
        self._dict_keys = None
        if isinstance(tree, dict) and all(isinstance(v, torch.Tensor) for v in tree.values()):
            self._dict_keys = [path[0] for path in optree.tree_paths(tree, none_is_leaf=True)]
        self._sequence_type = type(tree) if type(tree) in (list, tuple) else None

    def pack(self, tree: Any) -> tuple[torch.Tensor, ...]:
        """New flat buffers holding the leaves of ``tree`` (a copy), in this layout.

        ``tree`` must have the layout's structure and, at every leaf, a dense tensor of the shape,
        dtype and device the layout was built with (``ValueError``/``TypeError`` naming the path
        otherwise; nothing is cast, reshaped or dropped)."""
        leaves = flatten_like(self.spec, self._skeleton, tree, "the layout", "FlatLayout.pack: tree")
        _check_tensors("FlatLayout.pack: tree", leaves, self._leaves, self._paths)
        return tuple(torch.cat([leaves[i].reshape(-1) for i in idx]) for idx in self.groups)

    def unpack(self, flat: tuple[torch.Tensor, ...]) -> Any:
        """The tree of views into ``flat`` (no copy; differentiable).

        ``flat`` must be a tuple (or list) of one 1-D buffer per (device, dtype) group, as
        :meth:`pack` returns: each of the group's length, dtype and device (``ValueError`` naming
        the buffer otherwise)."""
        if not isinstance(flat, (tuple, list)):
            raise TypeError(f"FlatLayout.unpack: expected a tuple of buffers (as pack returns), got {type(flat).__name__}")
        if len(flat) != len(self.groups):
            n = len(self.groups)
            raise ValueError(f"FlatLayout.unpack: expected {n} buffer{'s' * (n != 1)} (one per (device, dtype) "
                             f"group), got {len(flat)}")
        _check_tensors("FlatLayout.unpack: flat", flat, self._buffers, self._buffer_paths)
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

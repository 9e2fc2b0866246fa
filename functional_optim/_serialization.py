"""Functional states load with ``torch.load(weights_only=True)``.

A functional state is a tree of this library's NamedTuples (``AdamState``, ``EMPTY``,
``MaskedNode``, ``InjectHyperparamsState`` ...) around tensors. ``torch.load`` with
``weights_only=True`` (its default since torch 2.6) refuses any class it has not been told is
safe, so importing :mod:`functional_optim` registers every NamedTuple the library defines with
``torch.serialization.add_safe_globals``. They hold only data (tensors, numbers, containers), so
allowing them runs no code beyond building the tuple. A state of your own NamedTuple types needs
``torch.serialization.add_safe_globals([MyState])`` in the same way.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

__all__ = ["library_record_types", "register_safe_globals"]


def _is_namedtuple_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def library_record_types(package: str = "functional_optim") -> list[type]:
    """Every NamedTuple class defined in a loaded module of ``package`` (states, hparams, markers;
    not ``GradientTransformation``, which holds functions)."""
    found: dict[str, type] = {}
    for name, module in list(sys.modules.items()):
        if not isinstance(module, ModuleType) or not (name == package or name.startswith(package + ".")):
            continue
        for obj in vars(module).values():
            if _is_namedtuple_class(obj) and obj.__module__.startswith(package) and obj.__name__ != "GradientTransformation":
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def register_safe_globals() -> list[type]:
    """Allow the library's NamedTuples in ``torch.load(weights_only=True)``; returns them."""
    types = library_record_types()
    torch.serialization.add_safe_globals(types)
    return types

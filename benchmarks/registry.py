"""The optimizers under test, and discovery of which of them this checkout provides.

Each :class:`OptimizerSpec` names the ``torch.optim`` reference class, the ``compat`` class and
the ``functional_optim`` factory of one optimizer. :func:`discover` imports what exists and returns
a note for what does not, so the suite runs on a partial checkout and picks optimizers up as they
land.

Most optimizers take every workload as it is. Three do not, and their spec says so: Muon
optimizes matrices (``workload=workloads.matrices``), SparseAdam takes sparse gradients
(``workloads.sparse_rows``), L-BFGS's step evaluates a loss (``workloads.with_objective``); none
of the three has a foreach or fused implementation in torch (``foreach=False``), and the last two
do not compile (``compilable=False``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Callable, Optional

import torch
from torch import Tensor

from . import workloads


def _elementwise(slots: int) -> Callable[[Tensor, Tensor], int]:
    """Bytes a step must touch when it keeps ``slots`` full-size state tensors per parameter.

    Read param, grad and every slot; write param and every slot: ``(3 + 2 * slots) * nbytes``.
    """
    return lambda p, g: (3 + 2 * slots) * p.numel() * p.element_size()


def _sparse_adam_bytes(p: Tensor, g: Tensor) -> int:
    """SparseAdam touches only the rows its sparse gradient holds: read param, gradient values,
    both moments and write param and moments there (7 x their bytes), plus the row indices."""
    values, indices = g._values(), g._indices()
    return 7 * values.numel() * values.element_size() + indices.numel() * indices.element_size()


def _adafactor_bytes(p: Tensor, g: Tensor) -> int:
    """Adafactor keeps row/column statistics for matrices (negligible bytes): read p and g, write p.

    Vectors keep a full second moment, like an elementwise optimizer with one slot.
    """
    if p.dim() >= 2:
        return 3 * p.numel() * p.element_size()
    return _elementwise(1)(p, g)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str  # torch.optim / compat class name
    factory: str  # functional_optim factory name
    module: str  # module of compat / functional_optim that defines it
    torch_cls: Callable
    has_fused: bool  # torch has a fused (CPU and CUDA) kernel for it
    # lower bound on memory traffic of one step, per (param, grad of the workload it runs on);
    # None: no floor (the step's traffic depends on the objective it evaluates)
    bytes_touched: Optional[Callable[[Tensor, Tensor], int]]
    elementwise: bool = True  # its math is elementwise (so flattening params does not change it)
    kwargs: dict = dataclasses.field(default_factory=dict)  # constructor kwargs (torch's defaults otherwise)
    variants: tuple = ()  # extra flag sets for the bitwise foreach-vs-for-loop check
    foreach: bool = True  # torch has foreach=; False: one implementation (a for-loop) and no flags to pass
    compilable: bool = True  # its functional step compiles (so compiled candidates are built when compiling)
    # the workload it runs on, derived from each benchmark workload (None: the workload itself)
    workload: Optional[Callable[[workloads.Workload], workloads.Workload]] = None


_COMMON = ({"weight_decay": 0.1}, {"maximize": True})


SPECS = (
    OptimizerSpec("Adam", "adam", "adam", torch.optim.Adam, True, _elementwise(2),
                  variants=_COMMON + ({"amsgrad": True, "weight_decay": 0.1},)),
    OptimizerSpec("AdamW", "adamw", "adam", torch.optim.AdamW, True, _elementwise(2),
                  variants=_COMMON + ({"amsgrad": True},)),
    OptimizerSpec("Adagrad", "adagrad", "adagrad", torch.optim.Adagrad, True, _elementwise(1),
                  variants=_COMMON + ({"lr_decay": 0.01, "initial_accumulator_value": 0.1},)),
    OptimizerSpec("Adadelta", "adadelta", "adadelta", torch.optim.Adadelta, False, _elementwise(2),
                  variants=_COMMON + ({"rho": 0.5, "lr": 0.5},)),
    OptimizerSpec("NAdam", "nadam", "nadam", torch.optim.NAdam, False, _elementwise(2),
                  variants=_COMMON + ({"weight_decay": 0.1, "decoupled_weight_decay": True},)),
    OptimizerSpec("Adafactor", "adafactor", "adafactor", torch.optim.Adafactor, False, _adafactor_bytes,
                  elementwise=False, variants=_COMMON + ({"beta2_decay": -0.5, "d": 2.0},)),
    OptimizerSpec("SGD", "sgd", "sgd", torch.optim.SGD, True, _elementwise(1), kwargs={"momentum": 0.9},
                  variants=_COMMON + ({"momentum": 0.9, "nesterov": True}, {"momentum": 0.9, "dampening": 0.1})),
    OptimizerSpec("RMSprop", "rmsprop", "rmsprop", torch.optim.RMSprop, False, _elementwise(1),
                  variants=_COMMON + ({"momentum": 0.9, "centered": True},)),
    OptimizerSpec("RAdam", "radam", "radam", torch.optim.RAdam, False, _elementwise(2),
                  variants=_COMMON + ({"weight_decay": 0.1, "decoupled_weight_decay": True},)),
    OptimizerSpec("Adamax", "adamax", "adamax", torch.optim.Adamax, False, _elementwise(2), variants=_COMMON),
    OptimizerSpec("ASGD", "asgd", "asgd", torch.optim.ASGD, False, _elementwise(1),  # ax (eta, mu are 0-d)
                  variants=_COMMON + ({"t0": 2.0, "lambd": 0.01},)),
    OptimizerSpec("Rprop", "rprop", "rprop", torch.optim.Rprop, False, _elementwise(2),
                  variants=({"maximize": True}, {"etas": (0.3, 1.5), "step_sizes": (1e-4, 1.0)})),
    # one momentum slot; Newton-Schulz's matmuls come on top (compute, not traffic)
    OptimizerSpec("Muon", "muon", "muon", torch.optim.Muon, False, _elementwise(1), elementwise=False,
                  foreach=False, workload=workloads.matrices),
    OptimizerSpec("SparseAdam", "sparse_adam", "sparse_adam", torch.optim.SparseAdam, False, _sparse_adam_bytes,
                  elementwise=False, foreach=False, compilable=False, workload=workloads.sparse_rows),
    # max_iter=2 (torch's max_eval = max_iter * 5 // 4 = 2): a step evaluates the objective, makes
    # one iteration (memory update, two-loop recursion, move) and evaluates it again; a short memory
    # (2 x history_size vectors of all parameters) is full, and the step's cost constant, from the 5th step
    OptimizerSpec("LBFGS", "lbfgs", "lbfgs", torch.optim.LBFGS, False, None, elementwise=False,
                  kwargs={"max_iter": 2, "history_size": 4}, foreach=False, compilable=False,
                  workload=workloads.with_objective),
)


@dataclasses.dataclass(frozen=True)
class Available:
    spec: OptimizerSpec
    compat_cls: Optional[type]
    functional: Optional[Callable]  # factory: functional_optim.<factory>(**kwargs) -> GradientTransformation

    @property
    def name(self) -> str:
        return self.spec.name


def _lookup(package: str, module: str, attr: str) -> tuple[Optional[object], Optional[str]]:
    """``package.attr`` if exported, else ``package.module.attr``; (None, reason) if neither imports."""
    try:
        found = getattr(importlib.import_module(package), attr, None)
        if found is None or inspect.ismodule(found):  # ``functional_optim.adagrad`` may be the submodule
            found = getattr(importlib.import_module(f"{package}.{module}"), attr, None)
        if found is None or inspect.ismodule(found):
            return None, f"{package}.{module} has no {attr}"
        return found, None
    except Exception as exc:  # a module another contributor has not finished (or broke) must not stop the suite
        return None, f"{package}.{module}.{attr} not importable ({type(exc).__name__}: {exc})"


def discover(names: Optional[list[str]] = None) -> tuple[list[Available], list[str]]:
    """The optimizers to benchmark (all of :data:`SPECS`, or ``names``) and notes on what is missing."""
    wanted = {n.lower() for n in names} if names else None
    found, notes = [], []
    for spec in SPECS:
        if wanted is not None and spec.name.lower() not in wanted:
            continue
        compat_cls, compat_note = _lookup("compat", spec.module, spec.name)
        functional, functional_note = _lookup("functional_optim", spec.module, spec.factory)
        notes += [n for n in (compat_note, functional_note) if n]
        if compat_cls is None and functional is None:
            notes.append(f"{spec.name}: skipped (neither compat nor functional_optim provides it yet)")
            continue
        found.append(Available(spec, compat_cls, functional))
    if wanted is not None:
        unknown = wanted - {s.name.lower() for s in SPECS}
        if unknown:
            raise SystemExit(f"unknown optimizer(s): {sorted(unknown)}; known: {[s.name for s in SPECS]}")
    return found, notes

"""The optimizers under test, and discovery of which of them this checkout provides.

Each :class:`OptimizerSpec` names the reference of one optimizer, its ``compat`` class and its
``functional_optim`` factory. The reference is ``torch.optim``'s class (:data:`SPECS`, ratios
against torch) or, for the optimizers torch does not have (:data:`BEYOND_TORCH`), a class of a
reference package (:class:`Reference`: ``pytorch_optimizer.Lamb``, ``lion_pytorch.Lion`` ...;
ratios against it). :func:`discover` imports what exists and returns a note for what does not
(a compat class or factory not written yet, a reference package not installed), so the suite
runs on a partial checkout and picks optimizers up as they land.

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


def _elementwise(slots: int, read_only: int = 0) -> Callable[[Tensor, Tensor], int]:
    """Bytes a step must touch when it keeps ``slots`` full-size state tensors per parameter.

    Read param, grad and every slot; write param and every slot: ``(3 + 2 * slots) * nbytes``;
    plus ``read_only`` full-size tensors only read (Prodigy's initial parameters ``p0``).
    """
    return lambda p, g: (3 + 2 * slots + read_only) * p.numel() * p.element_size()


def _muon_adamw_bytes(p: Tensor, g: Tensor) -> int:
    """Muon (one momentum slot) on the matrices, AdamW (two moments) on the other tensors."""
    return _elementwise(1 if p.dim() == 2 else 2)(p, g)


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
class Reference:
    """A reference implementation outside torch.optim: ``path`` is ``"package.Class"``, imported
    when the suite runs (a package that is not installed skips the reference rows with a note)."""

    path: str
    label: str = ""  # how the report names it (default: ``path``)
    # called on every instance of the reference and of the compat class before its first step
    # (Schedule-Free: ``.train()``, the mode in which the optimizers step)
    prepare: Optional[Callable] = None

    @property
    def name(self) -> str:
        return self.label or self.path


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str  # torch.optim / compat class name
    factory: str  # functional_optim factory name
    module: str  # module of compat / functional_optim that defines it
    torch_cls: Optional[Callable]  # None: torch has no such optimizer (``reference`` is the reference)
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
    reference: Optional[Reference] = None  # the reference outside torch.optim (then ``torch_cls`` is None)
    # how the functional step takes the workload's ``step_inputs``: ``(state, inputs) -> state``
    # before ``update`` (None: as keyword arguments of ``update``)
    functional_inputs: Optional[Callable] = None

    @property
    def beyond_torch(self) -> bool:
        """torch.optim has no such optimizer: its reference is :attr:`reference`."""
        return self.reference is not None


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


def _train(optimizer) -> None:
    optimizer.train()


def _sophia_hand_over(state, inputs: dict):
    """SophiaH's functional form takes a Hessian estimate into its state before ``update``."""
    from functional_optim import sophia_set_hessian

    return sophia_set_hessian(state, inputs["hessian"])


def _beyond(name: str, factory: str, module: str, reference: Reference, bytes_touched, **kw) -> OptimizerSpec:
    """The spec of an optimizer torch does not have: one implementation (compat's, with its
    defaults), no torch rows, no bitwise foreach check; ``reference`` is the reference."""
    return OptimizerSpec(name, factory, module, None, False, bytes_touched, foreach=False, reference=reference, **kw)


_PO = "pytorch_optimizer."

#: The optimizers beyond torch.optim, each with its reference package's class and that class's
#: defaults (the compat classes take the reference's signature and defaults; the functional
#: factories default to the same values, so none takes kwargs here: the classes' and the
#: factories' argument names differ, ``betas`` against ``b1, b2``). ``fo.lamb`` / ``fo.lars``
#: are optax's LAMB / LARS, whose math differs from ``pytorch_optimizer``'s (see their
#: docstrings); ``compat.Lamb`` / ``compat.Lars`` compute pytorch_optimizer's.
BEYOND_TORCH = (
    _beyond("Lion", "lion", "lion", Reference("lion_pytorch.Lion"), _elementwise(1)),
    _beyond("Lamb", "lamb", "lamb", Reference(_PO + "Lamb"), _elementwise(2), elementwise=False),
    _beyond("Lars", "lars", "lars", Reference(_PO + "LARS"), _elementwise(1), elementwise=False),
    _beyond("AdaBelief", "adabelief", "adabelief", Reference(_PO + "AdaBelief"), _elementwise(2)),
    # exp_avg, exp_avg_diff, exp_avg_sq and the previous gradient
    _beyond("Adan", "adan", "adan", Reference(_PO + "Adan"), _elementwise(4)),
    _beyond("ADOPT", "adopt", "adopt", Reference(_PO + "ADOPT"), _elementwise(2)),
    _beyond("AdEMAMix", "ademamix", "ademamix", Reference(_PO + "AdEMAMix"), _elementwise(3)),
    # z and the second moment (x, the evaluation point, is not stored: y is the parameter)
    _beyond("AdamWScheduleFree", "schedule_free_adamw", "schedule_free",
            Reference("schedulefree.AdamWScheduleFree", prepare=_train), _elementwise(2)),
    _beyond("SGDScheduleFree", "schedule_free_sgd", "schedule_free",
            Reference("schedulefree.SGDScheduleFree", prepare=_train), _elementwise(1)),
    # both moments and s written, the initial parameters p0 read; d is one estimate over all tensors
    _beyond("Prodigy", "prodigy", "prodigy", Reference("prodigyopt.Prodigy"), _elementwise(3, read_only=1),
            elementwise=False),
    _beyond("MuonWithAdamW", "muon_adamw", "muon_adamw",
            Reference("benchmarks.references.MuonAndAdamW", label="torch.optim.Muon+AdamW"), _muon_adamw_bytes,
            elementwise=False),
    # both moments; the eigenbases' matmuls and eigendecompositions come on top (compute, not traffic)
    _beyond("SOAP", "soap", "soap", Reference(_PO + "SOAP"), _elementwise(2), elementwise=False),
    # momentum and Hessian moment, the given Hessian estimate read (``workloads.with_hessian``)
    _beyond("SophiaH", "sophia_h", "sophia", Reference(_PO + "SophiaH"), _elementwise(2, read_only=1),
            workload=workloads.with_hessian, functional_inputs=_sophia_hand_over),
)

ALL_SPECS = SPECS + BEYOND_TORCH


@dataclasses.dataclass(frozen=True)
class Available:
    spec: OptimizerSpec
    compat_cls: Optional[type]
    functional: Optional[Callable]  # factory: functional_optim.<factory>(**kwargs) -> GradientTransformation
    reference_cls: Optional[type] = None  # the spec's reference class (None: none, or its package is missing)

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


def _reference_class(ref: Reference) -> tuple[Optional[type], Optional[str]]:
    """The class ``ref.path`` names; (None, reason) when its package is not installed or lacks it."""
    module, _, attr = ref.path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr, None)
    except ImportError as exc:
        return None, f"package {module!r} not installed ({exc})"
    except Exception as exc:  # a broken install must not stop the suite either
        return None, f"{module} not importable ({type(exc).__name__}: {exc})"
    return (cls, None) if cls is not None else (None, f"{module} has no {attr}")


GROUPS = ("all", "torch", "beyond-torch")


def discover(names: Optional[list[str]] = None, group: str = "all") -> tuple[list[Available], list[str]]:
    """The optimizers to benchmark and notes on what is missing.

    ``group``: ``"torch"`` (:data:`SPECS`, those torch.optim has), ``"beyond-torch"``
    (:data:`BEYOND_TORCH`) or ``"all"``; ``names`` (case-insensitive) narrows it further.
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    specs = {"all": ALL_SPECS, "torch": SPECS, "beyond-torch": BEYOND_TORCH}[group]
    wanted = {n.strip().lower() for n in names if n.strip()} if names else None
    if wanted is not None:
        unknown = [n.strip() for n in names if n.strip() and n.strip().lower() not in {s.name.lower() for s in specs}]
        if unknown:
            raise SystemExit(f"unknown optimizer(s) {unknown} in group {group!r}; known: {[s.name for s in specs]}")
    found, notes = [], []
    for spec in specs:
        if wanted is not None and spec.name.lower() not in wanted:
            continue
        compat_cls, compat_note = _lookup("compat", spec.module, spec.name)
        functional, functional_note = _lookup("functional_optim", spec.module, spec.factory)
        if compat_cls is None and functional is None:
            notes.append(f"{spec.name}: skipped (neither compat nor functional_optim provides it yet)")
            continue
        notes += [n for n in (compat_note, functional_note) if n]
        reference_cls = None
        if spec.reference is not None:
            reference_cls, why = _reference_class(spec.reference)
            if why:
                notes.append(f"{spec.name}: reference/{spec.reference.name} rows skipped: {why}")
        found.append(Available(spec, compat_cls, functional, reference_cls))
    return found, notes

"""The implementations that are timed against each other: one object per (family, implementation).

Every candidate owns its own copy of the workload's parameters, gradients and optimizer state,
and exposes ``step()`` (one optimizer step, parameters updated), ``params()`` (current values),
``state_bytes()`` (bytes of persistent optimizer state) and, for compiled ones, ``compile_info``.

Given an ``objective`` (``params -> (loss, grads)``, :class:`benchmarks.workloads.Quadratic`), a
step evaluates it instead of using fixed gradients: ``optimizer.step(closure)`` with a closure that
sets ``p.grad``, or the functional ``update(..., value=, value_and_grad_fn=objective)`` (L-BFGS).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional

import optree
import torch
from torch import Tensor

import functional_optim

__all__ = ["Candidate", "OptimCandidate", "FunctionalCandidate", "CompileInfo", "compile_recording", "optim_for",
           "functional_for", "compare_params"]


class CompileInfo:
    """What a recording backend saw: graphs compiled, FX nodes in them and time spent in Inductor."""

    def __init__(self) -> None:
        self.graphs = 0
        self.nodes = 0
        self.inductor_s = 0.0

    def as_dict(self) -> dict:
        return {"graphs": self.graphs, "fx_nodes": self.nodes, "inductor_s": self.inductor_s}


@contextlib.contextmanager
def fresh_dynamo():
    """Compile as a fresh process would: Dynamo's caches reset, and its file-based profile-guided
    state (``automatic_dynamic_local_pgo``, on by default) off. That state survives ``reset()``
    and is keyed by code object: every compat class shares ``FunctionalOptimizer.step``, so after
    other classes' compiles it made compat.Rprop's step compile a third, dynamic-shape graph in a
    probe (3 graphs with it, 2 without). Two double compiles remain with it off, both restarts of
    Dynamo's float-tensorify pass, not recompiles (see the README): compat.Rprop's second compile
    (a dynamic float ``lr`` its step does not use) and, with a cold Inductor cache, the hparams
    probe's first call with a 0-d CPU tensor ``lr``."""
    torch._dynamo.reset()
    pgo = torch._dynamo.config.automatic_dynamic_local_pgo
    torch._dynamo.config.automatic_dynamic_local_pgo = False
    try:
        yield
    finally:
        torch._dynamo.config.automatic_dynamic_local_pgo = pgo


def compile_recording(fn: Callable, info: CompileInfo, fullgraph: bool = True) -> Callable:
    """``torch.compile(fn)`` with Inductor, recording graph count, FX node count and Inductor time.

    Dynamo's tracing time is then the first call's time minus ``info.inductor_s``.
    """
    from torch._inductor.compile_fx import compile_fx

    def backend(gm: torch.fx.GraphModule, example_inputs):
        info.graphs += 1
        info.nodes += len(gm.graph.nodes)
        start = time.perf_counter()
        compiled = compile_fx(gm, example_inputs)
        info.inductor_s += time.perf_counter() - start
        return compiled

    return torch.compile(fn, backend=backend, fullgraph=fullgraph)


def _tensor_bytes(tree) -> int:
    leaves = optree.tree_leaves(tree, none_is_leaf=False)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, Tensor))


class Candidate:
    family: str  # "torch" | "compat" | "functional"
    impl: str  # "for-loop" | "foreach" | "fused" | "eager" | "compiled" | "compiled-step"
    compile_info: Optional[CompileInfo] = None

    @property
    def label(self) -> str:
        return f"{self.family}/{self.impl}"

    def step(self) -> None:
        raise NotImplementedError

    def before_step(self) -> None:
        """Untimed work before each step (an optimizer that overwrites its gradients gets them back)."""

    def params(self) -> list:
        raise NotImplementedError

    def state_bytes(self) -> int:
        raise NotImplementedError


class OptimCandidate(Candidate):
    """A ``torch.optim.Optimizer`` (torch's own, a compat class or a reference package's) with one
    implementation flag.

    ``impl``: ``for-loop`` (``foreach=False``), ``foreach`` (``foreach=True``), ``fused``
    (``fused=True``), or ``compiled-step``: ``torch.compile(optimizer.step)`` with the default
    implementation and a float ``lr`` that a ``StepLR`` scheduler changes after every step (so
    ``compile_info.graphs`` shows whether a changed learning rate recompiles).
    ``impl_flags=False``: the class has one implementation and takes no flags (``impl`` only
    names it: ``for-loop``, ``default``, a reference's name). ``prepare(optimizer)`` runs once
    after construction (Schedule-Free's ``.train()``); ``step_inputs`` are keyword arguments of
    every ``step`` (SophiaH's ``hessian=``), copied like the gradients. ``scheduled``: the same
    ``StepLR`` as ``compiled-step`` without compiling (its eager twin). ``restore_grads``: before
    each step (untimed, :meth:`before_step`) the gradients get their original values back, for
    classes that overwrite ``p.grad`` (``schedulefree`` divides it in place), so every step sees
    the workload's gradients.
    """

    _FLAGS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True},
              "compiled-step": {}}

    def __init__(self, family: str, cls: type, impl: str, params: list, grads: list, kwargs: dict,
                 impl_flags: bool = True, objective: Optional[Callable] = None,
                 prepare: Optional[Callable] = None, step_inputs: Optional[dict] = None,
                 restore_grads: bool = False, scheduled: bool = False) -> None:
        self.family, self.impl = family, impl
        self._params = [torch.nn.Parameter(p.clone()) for p in params]
        for p, g in zip(self._params, grads):
            p.grad = g.clone()
        self._original_grads = [g.clone() for g in grads] if restore_grads and objective is None else None
        self.optimizer = cls(self._params, **kwargs, **(self._FLAGS[impl] if impl_flags else {}))
        if prepare is not None:
            prepare(self.optimizer)
        inputs = {k: [t.clone() for t in v] for k, v in (step_inputs or {}).items()}
        self._scheduler = None
        if impl == "compiled-step" or scheduled:  # the scheduler first: it wraps optimizer.step to see it called
            self._scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.999)
        step = self.optimizer.step
        if impl == "compiled-step":
            self.compile_info = CompileInfo()
            step = compile_recording(self.optimizer.step, self.compile_info, fullgraph=False)
        self._step = lambda: step(**inputs)
        if objective is not None:
            def closure():  # the loss at the current parameters, their gradients into p.grad
                loss, grads = objective([p.detach() for p in self._params])
                for p, g in zip(self._params, grads):
                    p.grad = g
                return loss

            self._step = lambda: step(closure, **inputs)

    def step(self) -> None:
        self._step()
        if self._scheduler is not None:
            self._scheduler.step()

    def before_step(self) -> None:
        if self._original_grads is not None:
            with torch.no_grad():
                for p, g in zip(self._params, self._original_grads):
                    p.grad.copy_(g)

    def params(self) -> list:
        return [p.detach() for p in self._params]

    def state_bytes(self) -> int:
        return _tensor_bytes([dict(s) for s in self.optimizer.state.values()])


class FunctionalCandidate(Candidate):
    """``functional_optim``: ``update`` then ``apply_updates``, eagerly or under ``torch.compile``.

    With an ``objective`` (eager only), the step first evaluates it at the parameters and calls
    ``update(grads, state, params, value=loss, value_and_grad_fn=objective)``. ``step_inputs``
    are inputs of every step (of the compiled step too): ``take_inputs(state, inputs) -> state``
    hands them to the state before ``update`` (SophiaH's Hessian estimate), or without it they are
    keyword arguments of ``update``.
    """

    def __init__(self, factory: Callable, compiled: bool, params: list, grads: list, kwargs: dict,
                 inplace: bool = False, objective: Optional[Callable] = None,
                 step_inputs: Optional[dict] = None, take_inputs: Optional[Callable] = None) -> None:
        self.family = "functional"
        self.impl = ("compiled" if compiled else "eager") + ("-inplace" if inplace else "")
        transform = factory(**kwargs)
        self._params = [p.clone() for p in params]
        self._grads = [g.clone() for g in grads]
        self._inputs = {k: [t.clone() for t in v] for k, v in (step_inputs or {}).items()}
        self._state = transform.init(self._params)

        def step(params, grads, state, inputs):
            if take_inputs is not None:
                state, inputs = take_inputs(state, inputs), {}
            if inplace:  # functional_optim.step_: the same math written into the tensors
                functional_optim.step_(transform, grads, state, params, **inputs)
                return params, state
            if objective is not None:
                loss, grads = objective(params)
                updates, state = transform.update(grads, state, params, value=loss, value_and_grad_fn=objective)
            else:
                updates, state = transform.update(grads, state, params, **inputs)
            return functional_optim.apply_updates(params, updates), state

        self._fn = step
        if compiled:
            self.compile_info = CompileInfo()
            self._fn = compile_recording(step, self.compile_info)

    def step(self) -> None:
        self._params, self._state = self._fn(self._params, self._grads, self._state, self._inputs)

    def params(self) -> list:
        return self._params

    def state_bytes(self) -> int:
        return _tensor_bytes(self._state)


def optim_for(opt, work, family: str, impl: str, scheduled: bool = False) -> OptimCandidate:
    """``opt``'s class of ``family`` on ``work``: ``"torch"`` (``spec.torch_cls``), ``"compat"`` or
    ``"reference"`` (``opt.reference_cls``, a reference package's class), with implementation ``impl``.

    ``opt`` is a :class:`benchmarks.registry.Available`. An optimizer beyond torch.optim has one
    implementation per class (constructed with its defaults, ``impl`` only names it: ``default``,
    the reference's name, or ``compiled-step``), its spec's ``reference.prepare`` runs on the
    compat and the reference instance (Schedule-Free's ``.train()``), and both get their gradients
    back before every step (untimed; a reference package's class may overwrite them).
    ``scheduled``: with ``compiled-step``'s ``StepLR`` (see :class:`OptimCandidate`).
    """
    spec = opt.spec
    cls = {"torch": spec.torch_cls, "compat": opt.compat_cls, "reference": opt.reference_cls}[family]
    if cls is None:
        raise ValueError(f"{spec.name} has no {family} class in this checkout")
    prepare = spec.reference.prepare if spec.beyond_torch and family != "torch" else None
    return OptimCandidate(family, cls, impl, work.params, work.grads, spec.kwargs,
                          impl_flags=spec.foreach and not spec.beyond_torch, objective=work.objective,
                          prepare=prepare, step_inputs=work.step_inputs, restore_grads=spec.beyond_torch,
                          scheduled=scheduled)


def functional_for(opt, work, compiled: bool, inplace: bool = False) -> FunctionalCandidate:
    """``opt``'s functional factory on ``work``: eager, compiled, or compiled in place (``step_``)."""
    return FunctionalCandidate(opt.functional, compiled, work.params, work.grads, opt.spec.kwargs,
                               inplace=inplace, objective=work.objective, step_inputs=work.step_inputs,
                               take_inputs=opt.spec.functional_inputs)


def compare_params(c: Candidate, ref: Candidate) -> dict:
    """Parameters of ``c`` against ``ref`` after the same number of steps: bitwise equal, max |diff|."""
    pairs = list(zip(c.params(), ref.params()))
    equal = all(torch.equal(a, b) for a, b in pairs)
    diff = 0.0 if equal else max(float((a.double() - b.double()).abs().max()) for a, b in pairs)
    return {"bitwise": equal, "max_abs_diff": diff}

"""Compiled functional step with Python-float and with tensor hyperparameters: cost and recompiles.

The step ``update + apply_updates`` is compiled once per kind; each call gets a new learning rate
(a schedule), as a Python float or as a 0-d tensor. Reported per kind: the graphs Inductor
compiled over all calls, how many of them the first call compiled, the recompiles (graphs compiled
by the calls after the first: 0 means changing the value never recompiled), the first call's time,
and the median step time of the calls after it.

The first call may compile twice without a recompile: with a cold Inductor cache, Dynamo (torch
2.13) restarts its analysis once for a 0-d CPU tensor input (it gives the tensor's ``item()`` a
symbol, which its float-tensorify pass then specializes: "Restarting analysis due to
_tensorify_python_scalars.py"), so the tensor kind counts 2 graphs, both at the first call.
"""

from __future__ import annotations

import statistics

import torch

import functional_optim

from .candidates import CompileInfo, compile_recording, fresh_dynamo
from .measure import _timed

__all__ = ["measure"]


def _compiled_step(tx):
    def step(params, grads, state, hparams):
        updates, state = tx.update(grads, state, params, hparams)
        return functional_optim.apply_updates(params, updates), state

    info = CompileInfo()
    return compile_recording(step, info), info


def measure(factory, work, device: torch.device, reps: int, kwargs: dict) -> dict:
    """``{"float": {...}, "tensor": {...}}`` for the optimizer made by ``factory(**kwargs)``.

    The kinds run one after the other, each compiled as in a fresh process (:func:`fresh_dynamo`):
    compiled together, the second would start from the first's cache entries (one code object).
    """
    tx = factory(**kwargs)
    base_lr = float(tx.hparams.lr)
    kinds = {"tensor": lambda lr: torch.tensor(lr, dtype=torch.float64, device=device), "float": lambda lr: lr}
    out = {}
    for kind, as_hparam in kinds.items():
        with fresh_dynamo():
            out[kind] = _measure_kind(tx, base_lr, work, device, reps, as_hparam)
    torch._dynamo.reset()
    return out


def _measure_kind(tx, base_lr: float, work, device: torch.device, reps: int, as_hparam) -> dict:
    """One kind: a new learning rate (``as_hparam(value)``) at every call of the compiled step."""
    fn, info = _compiled_step(tx)
    params = [p.clone() for p in work.params]
    run = {"params": params, "state": tx.init(params)}
    grads = [g.clone() for g in work.grads]
    times = []
    for step in range(reps + 2):
        hparams = tx.hparams._replace(lr=as_hparam(base_lr / (1 + step)))  # a new value every call

        def call(hparams=hparams):
            run["params"], run["state"] = fn(run["params"], grads, run["state"], hparams)

        seconds = _timed(call, device)
        if step == 0:
            first_call_s, first_call_graphs = seconds, info.graphs
        elif step >= 2:  # the second call is where a recompile on a changed value would happen
            times.append(seconds)
    return {"graphs": info.graphs, "first_call_graphs": first_call_graphs,
            "recompiles": info.graphs - first_call_graphs, "first_call_s": first_call_s,
            "median_ms": 1e3 * statistics.median(times)}

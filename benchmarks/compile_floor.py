"""The compile-time floor of a step over many leaves: a graph whose math is all in opaque ops.

Target 4 of issue 10 asks for the first call of the compiled functional step on "many-small"
(1000 tensors) within 60 s on 2 CPU cores. Most of that time is Inductor's work per tensor, and
an obvious way out is to keep the per-tensor work out of the graph: one custom op (opaque to
Inductor, which only calls it) that runs the eager step over lists. This study measures what such
a graph still costs to compile, before any optimizer code is traced: its only work is SGD with
momentum (``m' = m + 0.1 g``, ``u = -lr m'``, ``p' = p + u``) in two custom ops over lists of
tensors, called once per chunk of ``--chunk`` leaves (``--chunk 0``: one call over all leaves).
``--lists 2 --counters`` gives it Adam's inputs and outputs: two moments and a 0-d step counter
per leaf (5 inputs and 4 outputs per leaf).
The mode ``traced`` writes the same math as per-leaf tensor ops for Inductor to compile.

    .venv/bin/python -m benchmarks.compile_floor --leaves 1000 --chunk 100 --lists 2 --counters

Cold figures need a fresh ``TORCHINDUCTOR_CACHE_DIR``: ``main`` makes one when the variable is unset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import List

import torch
from torch import Tensor

from . import workloads

__all__ = ["measure", "main"]


@torch.library.custom_op("fo_bench::moments_lists", mutates_args=())
def moments_lists(grads: List[Tensor], state: List[Tensor], lr: Tensor, lists: int) -> List[Tensor]:
    """``state`` holds ``lists`` lists of moments (one after the other), then optionally a list of
    0-d step counters; returns the new state in that order, then the updates (one list: a custom
    op's outputs may not alias each other)."""
    n = len(grads)
    new = [torch._foreach_add(state[j * n:(j + 1) * n], grads, alpha=0.1) for j in range(lists)]
    counters = [torch._foreach_add(state[lists * n:], 1.0)] if len(state) > lists * n else []
    return [t for part in new + counters for t in part] + list(torch._foreach_mul(new[-1], -lr.item()))


@moments_lists.register_fake
def _(grads, state, lr, lists):
    return [torch.empty_like(t) for t in state] + [torch.empty_like(g) for g in grads]


@torch.library.custom_op("fo_bench::add_lists", mutates_args=())
def add_lists(params: List[Tensor], updates: List[Tensor]) -> List[Tensor]:
    return list(torch._foreach_add(params, updates))


@add_lists.register_fake
def _(params, updates):
    return [torch.empty_like(p) for p in params]


def _opaque_step(chunk: int, lists: int):
    def step(params, grads, state, lr):
        n, size = len(params), chunk or len(params)
        per_list = [state[j * n:(j + 1) * n] for j in range(len(state) // n)]
        new_params, new_state = [], [[] for _ in per_list]
        for start in range(0, n, size):
            part = slice(start, start + size)
            k = len(params[part])
            out = moments_lists(grads[part], [t for ts in per_list for t in ts[part]], lr, lists)
            new_params += add_lists(params[part], out[len(per_list) * k:])
            for j, ts in enumerate(new_state):
                ts += out[j * k:(j + 1) * k]
        return new_params, [t for ts in new_state for t in ts]
    return step


def _traced_step(lists: int):
    def step(params, grads, state, lr):
        n = len(params)
        new = [[m + 0.1 * g for m, g in zip(state[j * n:(j + 1) * n], grads)] for j in range(lists)]
        counters = [[c + 1.0 for c in state[lists * n:]]] if len(state) > lists * n else []
        return [p - lr * m for p, m in zip(params, new[-1])], [t for ts in new + counters for t in ts]
    return step


def measure(leaves: int, chunk: int, mode: str = "opaque", reps: int = 10, lists: int = 1,
            counters: bool = False) -> dict:
    """First-call seconds and median step milliseconds of the compiled step (``fullgraph=True``),
    and its largest difference from the eager step."""
    shapes = (workloads.make("many-small", torch.device("cpu")).params * (leaves // 1000 + 1))[:leaves]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(p.shape, generator=gen) for p in shapes]
    grads = [torch.randn(p.shape, generator=gen) for p in shapes]
    state = [torch.zeros_like(p) for _ in range(lists) for p in shapes]
    state += [torch.zeros(()) for _ in shapes] if counters else []
    lr = torch.tensor(0.01)
    step = _traced_step(lists) if mode == "traced" else _opaque_step(chunk, lists)
    compiled = torch.compile(step, fullgraph=True)
    start = time.perf_counter()
    out = compiled(params, grads, state, lr)
    first = time.perf_counter() - start
    expected = _traced_step(lists)(params, grads, state, lr)
    diff = max(float((a - b).abs().max()) for a, b in zip(out[0] + out[1], expected[0] + expected[1]))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        compiled(params, grads, state, lr)
        times.append(time.perf_counter() - start)
    return {"leaves": leaves, "chunk": chunk, "mode": mode, "state_lists": lists, "counters": counters,
            "graph_inputs": len(params) + len(grads) + len(state) + 1, "first_call_s": round(first, 1),
            "step_ms": round(statistics.median(times) * 1e3, 2), "max_abs_diff": diff}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=100, help="leaves per custom-op call (0: all in one)")
    parser.add_argument("--mode", choices=("opaque", "traced"), default="opaque")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--lists", type=int, default=1, help="full-size state lists (2: Adam's moments)")
    parser.add_argument("--counters", action="store_true", help="add a 0-d step counter per leaf (as Adam's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fo_floor_inductor_"))
    print(json.dumps(measure(args.leaves, args.chunk, args.mode, args.reps, args.lists, args.counters)))


if __name__ == "__main__":
    main()

"""The eager (or compiled) functional step of another checkout against this one, interleaved in one process.

    git worktree add /tmp/before <commit>
    .venv/bin/python -m benchmarks.ab_eager --before /tmp/before --optimizers sgd,adam --reps 41
    .venv/bin/python -m benchmarks.ab_eager --before /tmp/before --compiled --workloads transformer

Copies ``<before>/functional_optim`` into a temporary directory under another package name and
imports both, so the two versions of ``update`` + ``apply_updates`` step the same parameters and
gradients (``benchmarks.workloads``) turn about, in one process on one CPU state. Prints, per
workload and optimizer, both medians, their ratio (after / before) and whether the parameters are
bitwise equal after the run: a change meant to be faster only. With ``--compiled`` each version's
step is ``torch.compile(fullgraph=True)``'d first (both compiled in this process, before the timed
steps) and the first call's time is printed too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

import functional_optim

from . import workloads

#: the benchmark's keyword arguments per functional factory (SGD with momentum)
KWARGS = {"sgd": {"momentum": 0.9}}


def load_before(checkout: str):
    """``<checkout>/functional_optim`` imported as a package of another name."""
    root = tempfile.mkdtemp(prefix="fo_before_")
    shutil.copytree(os.path.join(checkout, "functional_optim"), os.path.join(root, "fo_before"))
    sys.path.insert(0, root)
    return importlib.import_module("fo_before")


def _step_of(module, transform, compiled: bool):
    def step(params, grads, state):
        updates, state = transform.update(grads, state, params)
        return module.apply_updates(params, updates), state

    return torch.compile(step, fullgraph=True) if compiled else step


def compare(before, name: str, workload: str, reps: int, warmup: int = 3, compiled: bool = False) -> str:
    work = workloads.make(workload, torch.device("cpu"))
    torch._dynamo.reset()  # (every compare compiles the same ``step`` code object twice)
    runs = {}
    for tag, module in (("before", before), ("after", functional_optim)):
        transform = getattr(module, name)(**KWARGS.get(name, {}))
        params = {f"p{i}": p.clone() for i, p in enumerate(work.params)}
        grads = {f"p{i}": g for i, g in enumerate(work.grads)}
        runs[tag] = {"step": _step_of(module, transform, compiled), "params": params, "grads": grads,
                     "state": transform.init(params), "times": []}
    first = {}
    for rep in range(reps + warmup):
        for tag in ("before", "after") if rep % 2 else ("after", "before"):
            r = runs[tag]
            t0 = time.perf_counter()
            r["params"], r["state"] = r["step"](r["params"], r["grads"], r["state"])
            if rep >= warmup:
                r["times"].append(time.perf_counter() - t0)
            elif rep == 0:
                first[tag] = time.perf_counter() - t0
    same = all(torch.equal(runs["before"]["params"][k], runs["after"]["params"][k]) for k in runs["after"]["params"])
    b, a = (statistics.median(runs[t]["times"]) for t in ("before", "after"))
    firsts = f"  first call before {first['before']:.1f} s after {first['after']:.1f} s" if compiled else ""
    return (f"{workload:12s} {name:10s} before {b * 1e3:8.2f} ms  after {a * 1e3:8.2f} ms  "
            f"after/before {a / b:.3f}  bitwise {same}{firsts}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a checkout (e.g. a git worktree) of the code to compare with")
    parser.add_argument("--optimizers", default="sgd,adam,rmsprop,nadam,radam", help="functional factory names")
    parser.add_argument("--workloads", default="many-small,transformer")
    parser.add_argument("--reps", type=int, default=41)
    parser.add_argument("--compiled", action="store_true", help="time the torch.compile'd steps")
    args = parser.parse_args(argv)
    before = load_before(args.before)
    for workload in args.workloads.split(","):
        for name in args.optimizers.split(","):
            print(compare(before, name, workload, args.reps, compiled=args.compiled), flush=True)


if __name__ == "__main__":
    main()

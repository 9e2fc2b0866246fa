"""The eager functional step of another checkout against this one, interleaved in one process.

    git worktree add /tmp/before <commit>
    .venv/bin/python -m benchmarks.ab_eager --before /tmp/before --optimizers sgd,adam --reps 41

Copies ``<before>/functional_optim`` into a temporary directory under another package name and
imports both, so the two versions of ``update`` + ``apply_updates`` step the same parameters and
gradients (``benchmarks.workloads``) turn about, in one process on one CPU state. Prints, per
workload and optimizer, both medians, their ratio (after / before) and whether the parameters are
bitwise equal after the run: a change meant to be faster only.
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


def compare(before, name: str, workload: str, reps: int, warmup: int = 3) -> str:
    work = workloads.make(workload, torch.device("cpu"))
    runs = {}
    for tag, module in (("before", before), ("after", functional_optim)):
        transform = getattr(module, name)(**KWARGS.get(name, {}))
        params = {f"p{i}": p.clone() for i, p in enumerate(work.params)}
        grads = {f"p{i}": g for i, g in enumerate(work.grads)}
        runs[tag] = {"module": module, "tx": transform, "params": params, "grads": grads,
                     "state": transform.init(params), "times": []}
    for rep in range(reps + warmup):
        for tag in ("before", "after") if rep % 2 else ("after", "before"):
            r = runs[tag]
            t0 = time.perf_counter()
            updates, r["state"] = r["tx"].update(r["grads"], r["state"], r["params"])
            r["params"] = r["module"].apply_updates(r["params"], updates)
            if rep >= warmup:
                r["times"].append(time.perf_counter() - t0)
    same = all(torch.equal(runs["before"]["params"][k], runs["after"]["params"][k]) for k in runs["after"]["params"])
    b, a = (statistics.median(runs[t]["times"]) for t in ("before", "after"))
    return (f"{workload:12s} {name:10s} before {b * 1e3:8.2f} ms  after {a * 1e3:8.2f} ms  "
            f"after/before {a / b:.3f}  bitwise {same}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a checkout (e.g. a git worktree) of the code to compare with")
    parser.add_argument("--optimizers", default="sgd,adam,rmsprop,nadam,radam", help="functional factory names")
    parser.add_argument("--workloads", default="many-small,transformer")
    parser.add_argument("--reps", type=int, default=41)
    args = parser.parse_args(argv)
    before = load_before(args.before)
    for workload in args.workloads.split(","):
        for name in args.optimizers.split(","):
            print(compare(before, name, workload, args.reps), flush=True)


if __name__ == "__main__":
    main()

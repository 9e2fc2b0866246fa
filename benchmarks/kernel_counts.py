"""The kernels one eager functional step would launch on CUDA, counted on the CPU with ``meta`` tensors.

    .venv/bin/python -m benchmarks.kernel_counts                      # every optimizer, transformer and many-small
    .venv/bin/python -m benchmarks.kernel_counts --optimizers adam,radam --steps 9

A ``meta`` tensor's device is not the CPU, so the update takes the path it takes on an accelerator,
and every ATen op it dispatches is seen here without data. Views and bare allocations launch no
kernel; a ``torch._foreach_*`` op whose tensor lists differ in shape (0-d tensors, one per
parameter, against the parameters) leaves the foreach kernels' fast path and launches one kernel
per tensor; every other op is counted as one (a foreach op's chunks of tensors as one). It prints,
per optimizer and workload, the count for the last of ``--steps`` steps from ``init``. Counts, not
times: ops on ``meta`` run Python decompositions, so their time says nothing about CUDA's.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import functional_optim as fo

from . import workloads

#: ops that allocate without launching a kernel
ALLOCATIONS = {"empty", "empty_like", "empty_strided"}

#: functional factory -> keyword arguments (the benchmark's: SGD with momentum)
OPTIMIZERS = {"adam": {}, "adamw": {}, "adagrad": {}, "adadelta": {}, "nadam": {}, "sgd": {"momentum": 0.9},
              "rmsprop": {}, "radam": {}, "adamax": {}, "asgd": {}, "rprop": {}, "adafactor": {}}


def launches(name: str, args: tuple) -> int:
    """The kernels the op ``name`` called with ``args`` would launch on CUDA (see the module docstring)."""
    if name.startswith("_foreach_") and args and isinstance(args[0], (list, tuple)):
        shapes = [t.shape for t in args[0]]
        for a in args[1:]:
            if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor) and [t.shape for t in a] != shapes:
                return len(shapes)
    return 1


class Kernels(TorchDispatchMode):
    """Counts, per op name, the kernels the ATen ops dispatched under it would launch on CUDA."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in ALLOCATIONS:
            self.ops[name] += launches(name, args)
        return func(*args, **(kwargs or {}))


def kernels_per_step(transform: fo.GradientTransformation, params: dict, steps: int) -> collections.Counter:
    """The kernels of the last of ``steps`` eager ``update`` + ``apply_updates`` calls from ``init``
    (``params``: meta tensors; gradients of ones)."""
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    state = transform.init(params)
    counted = Kernels()
    for _ in range(steps):
        counted = Kernels()
        with counted:
            updates, state = transform.update(grads, state, params)
            params = fo.apply_updates(params, updates)
    return counted.ops


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="functional factory names")
    parser.add_argument("--workloads", default="transformer,many-small")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    names = [w.strip() for w in args.workloads.split(",")]
    print("optimizer " + " ".join(f"{w:>12}" for w in names))
    for name in args.optimizers.split(","):
        counts = []
        for w in names:
            params = {f"p{i}": torch.zeros(s, device="meta") for i, s in enumerate(workloads._SHAPES[w])}
            counts.append(sum(kernels_per_step(getattr(fo, name)(**OPTIMIZERS[name]), params, args.steps).values()))
        print(f"{name:9s} " + " ".join(f"{c:>12}" for c in counts), flush=True)


if __name__ == "__main__":
    main()

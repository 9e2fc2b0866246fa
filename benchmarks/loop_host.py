"""The host's cost per parameter of compat's for-loop step against torch's, on the CPU.

On a GPU a for-loop step is host-bound: the kernels run asynchronously, and the step takes what
the host spends per parameter (Python, dispatch, launch). The H200 run measured compat's for-loop
at 1.14-1.74x torch's on "transformer" and "large". This reproduces that cost on the CPU with
tensors too small for their arithmetic to matter (``--params`` of 4x4), timed interleaved in one
process (medians over ``--reps`` steps, microseconds per parameter):

* ``torch`` -- ``torch.optim.X(foreach=False)``;
* ``compat, a chunk per tensor`` -- ``compat.X(foreach=False)`` with every tensor its own chunk of
  the for-loop (``compat.optimizer.LOOP_CHUNK_NUMEL = 1``), which is how the CPU path steps large
  tensors and how the accelerator path stepped every tensor larger than 65,536 elements;
* ``compat, one chunk`` -- the same with the group as one chunk, which is how the accelerator
  path steps up to ``ACCELERATOR_LOOP_CHUNK_NUMEL`` elements at a time.

Run::

    .venv/bin/python -m benchmarks.loop_host
    .venv/bin/python -m benchmarks.loop_host --optimizers Adam,SGD --params 200 --reps 401
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import compat
import compat.optimizer as compat_optimizer

OPTIMIZERS = "Adam,AdamW,Adagrad,Adadelta,NAdam,SGD,RMSprop,RAdam,Adamax,ASGD,Rprop"
#: candidate -> (library, the for-loop chunk size it steps with)
CANDIDATES = {
    "torch": (torch.optim, None),
    "compat, a chunk per tensor": (compat, 1),
    "compat, one chunk": (compat, compat_optimizer.ACCELERATOR_LOOP_CHUNK_NUMEL),
}


def _optimizer(library, name: str, n_params: int) -> torch.optim.Optimizer:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 4, generator=gen)) for _ in range(n_params)]
    for p in params:
        p.grad = torch.randn(4, 4, generator=gen)
    return getattr(library, name)(params, lr=1e-3, foreach=False)


def compare(name: str, n_params: int, reps: int, warmup: int = 3) -> tuple[dict, bool]:
    """Median microseconds per parameter of each candidate's step, turn about, and whether the
    candidates' parameters are bitwise equal after the same steps."""
    default_chunk = compat_optimizer.LOOP_CHUNK_NUMEL
    runs = {label: (_optimizer(library, name, n_params), chunk, []) for label, (library, chunk) in CANDIDATES.items()}
    try:
        for rep in range(warmup + reps):
            order = list(runs.items())
            for label, (opt, chunk, times) in order[rep % len(order):] + order[:rep % len(order)]:
                compat_optimizer.LOOP_CHUNK_NUMEL = chunk if chunk is not None else default_chunk
                start = time.perf_counter()
                opt.step()
                elapsed = time.perf_counter() - start
                if rep >= warmup:
                    times.append(elapsed)
    finally:
        compat_optimizer.LOOP_CHUNK_NUMEL = default_chunk
    params = [[p.detach() for group in opt.param_groups for p in group["params"]] for opt, _, _ in runs.values()]
    bitwise = all(torch.equal(a, b) for other in params[1:] for a, b in zip(params[0], other))
    return {label: statistics.median(times) * 1e6 / n_params for label, (_, _, times) in runs.items()}, bitwise


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default=OPTIMIZERS)
    parser.add_argument("--params", type=int, default=27, help="tensors of 4x4 in the group")
    parser.add_argument("--reps", type=int, default=201)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (one thread: no intra-op parallelism to hide the host's cost)
    try:
        _print_table(args)
    finally:
        torch.set_num_threads(threads)


def _print_table(args) -> None:
    print(f"torch {torch.__version__}; {args.params} parameters of 4x4; median of {args.reps} steps; us per parameter")
    print(f"{'optimizer':10s}" + "".join(f"{label:>30s}" for label in CANDIDATES) + f"{'ratios to torch':>22s}  bitwise")
    for name in args.optimizers.split(","):
        us, bitwise = compare(name, args.params, args.reps)
        ratios = " / ".join(f"{us[label] / us['torch']:.2f}" for label in CANDIDATES if label != "torch")
        print(f"{name:10s}" + "".join(f"{us[label]:30.1f}" for label in CANDIDATES) + f"{ratios:>22s}  {bitwise}",
              flush=True)


if __name__ == "__main__":
    main()

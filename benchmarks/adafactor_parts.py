"""Where a compiled Adafactor step spends its time: each pass over the matrices compiled alone.

The compiled step (``fo.adafactor``, Inductor) reads each matrix in five passes: the parameter's
RMS, the row sums and the column sums of ``g²``, the update's RMS, and the update itself (new
parameters written). This times each pass as its own compiled function on the transformer
workload's matrices, interleaved with ``torch._fused_adam_`` on the same tensors, and the
update passes with and without the division and square roots of the variance estimate:

    .venv/bin/python -m benchmarks.adafactor_parts            # 31 interleaved reps
    .venv/bin/python -m benchmarks.adafactor_parts --reps 61

Prints the median and minimum milliseconds of each.
"""

from __future__ import annotations

import argparse
from typing import Callable, NamedTuple

import torch

from benchmarks import workloads
from benchmarks.measure import stats_ms, time_interleaved, untimed_steps

EPS1_SQUARED = 1e-14
LR = 1e-2


def _nothing() -> None:
    """No setup before a timed call."""


class Pass(NamedTuple):
    """One timed function, in the shape :func:`benchmarks.measure.time_interleaved` takes."""

    label: str
    step: Callable[[], object]
    before_step: Callable[[], None] = _nothing


def row_sums(grads):
    return [torch.norm(g, dim=-1, keepdim=True) for g in grads]


def column_sums(grads):
    return [torch.norm(g, dim=-2, keepdim=True) for g in grads]


def parameter_norms(params):
    return [p.norm(2) for p in params]


def _scale(r, c):
    """``1 / sqrt(max(r c / mean(r), eps1²))``: the variance estimate's factor, torch's formula."""
    return torch.rsqrt(torch.clamp((r * c) / r.mean(), min=EPS1_SQUARED))


def update_norms(grads, rows, cols):
    return [(_scale(r, c) * g).norm(2) for g, r, c in zip(grads, rows, cols)]


def update_norms_without_division(grads, rows, cols):
    return [((r * c) * g).norm(2) for g, r, c in zip(grads, rows, cols)]


def new_params(params, grads, rows, cols):
    return [p - LR * _scale(r, c) * g for p, g, r, c in zip(params, grads, rows, cols)]


def new_params_without_division(params, grads, rows, cols):
    return [p - LR * (r * c) * g for p, g, r, c in zip(params, grads, rows, cols)]


def scaled_copy(params):
    return [p * 1.0001 for p in params]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=31)
    args = parser.parse_args(argv)
    work = workloads.matrices(workloads.make("transformer", torch.device("cpu")))
    params, grads = work.params, work.grads
    shapes = [p.shape for p in params]
    gen = torch.Generator().manual_seed(0)
    rows = [torch.rand(s[0], 1, generator=gen) for s in shapes]
    cols = [torch.rand(1, s[1], generator=gen) for s in shapes]
    exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(1.0) for _ in params]

    def fused_adam():
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=1e-3, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

    passes = {
        "parameter RMS": (parameter_norms, (params,)),
        "row sums of g²": (row_sums, (grads,)),
        "column sums of g²": (column_sums, (grads,)),
        "update RMS": (update_norms, (grads, rows, cols)),
        "update RMS, no division": (update_norms_without_division, (grads, rows, cols)),
        "update": (new_params, (params, grads, rows, cols)),
        "update, no division": (new_params_without_division, (params, grads, rows, cols)),
        "scaled copy (1 read, 1 new tensor)": (scaled_copy, (params,)),
    }
    runs = [Pass(name, lambda f=torch.compile(fn), a=inputs: f(*a)) for name, (fn, inputs) in passes.items()]
    runs.append(Pass("torch._fused_adam_ (whole step)", fused_adam))
    untimed_steps(runs, 2)  # compile and warm up
    samples = time_interleaved(runs, args.reps, torch.device("cpu"))
    n = sum(p.numel() for p in params)
    print(f"torch {torch.__version__}; {len(params)} matrices, {n / 1e6:.2f}M params; "
          f"{torch.get_num_threads()} threads; {args.reps} interleaved reps")
    for name, times in samples.items():
        stats = stats_ms(times)
        print(f"{name:36s} median {stats['median_ms']:6.2f} ms   min {stats['min_ms']:6.2f} ms")

if __name__ == "__main__":
    main()

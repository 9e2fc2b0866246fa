"""Where the eager functional SGD step on many small tensors spends its time, next to torch's.

Target 1 of the speed issue (functional eager ``update`` + ``apply_updates`` within 1.3x of
torch's foreach step) is missed furthest by SGD with momentum on "many-small" (1000 tensors,
1.3M parameters), where the math is two multiply-adds per element and the step's cost is what
is done per tensor. This times, interleaved in one process (medians and minimums):

* ``torch/foreach`` -- ``torch.optim.SGD(momentum=0.9, foreach=True).step()``;
* ``functional`` -- ``fo.sgd(momentum=0.9)``: ``update`` and ``apply_updates``, as the README's loop;
* ``functional, no checks`` -- the same with the per-leaf checks of the inputs made no-ops
  (``check_params``, ``check_leaves_match``, ``check_state``, the autograd warning, and the
  type tests that choose the foreach ops), patched around this candidate's step only;
* ``floor`` -- what any pure step over this pytree has to do with the library's flat layout,
  and nothing else: copy the gradients into one buffer, the momentum and update math on flat
  buffers (the same ops as the update), the new parameters, and the 1000 views each of the
  updates, the new momentum buffers, the new parameters and the step counters that the pytree
  API hands back.

``functional`` minus ``no checks`` is the checks' cost; ``no checks`` minus ``floor`` is the
update's plumbing (tree flattening, choosing the flat groups, assembling the lists); ``floor``
against ``torch/foreach`` is the pure API's own cost. Run::

    .venv/bin/python -m benchmarks.eager_overhead              # 61 reps
    .venv/bin/python -m benchmarks.eager_overhead --reps 201

(Many-small only: the floor is the layout of the small tensors the update steps as flat buffers;
large tensors are stepped one by one, and there the cost is the memory the pure step writes, see
the README's performance section.)
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Callable, NamedTuple

import torch

import functional_optim as fo
import functional_optim._definition as definition_module
import functional_optim.base as base_module
from benchmarks import workloads
from benchmarks.measure import stats_ms, time_interleaved, untimed_steps
from functional_optim._kernels import grouped
from functional_optim._kernels.eager import FOREACH_PURE

LR, MOMENTUM = 1e-3, 0.9


def _nothing(*args, **kwargs) -> None:
    """No setup before a timed call; the no-op that replaces a check."""


class Candidate(NamedTuple):
    """One timed function, in the shape :func:`benchmarks.measure.time_interleaved` takes."""

    label: str
    step: Callable[[], object]
    before_step: Callable[[], None] = _nothing


def torch_foreach(work: workloads.Workload) -> Callable[[], None]:
    params = [p.clone() for p in work.params]
    for p, g in zip(params, work.grads):
        p.grad = g.clone()
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, foreach=True).step


def functional(work: workloads.Workload, checked: bool = True) -> Callable[[], None]:
    """The README's eager loop; ``checked=False``: the input checks patched out around the step."""
    tx = fo.sgd(lr=LR, momentum=MOMENTUM)
    grads = [g.clone() for g in work.grads]
    box = {"params": [p.clone() for p in work.params]}
    box["state"] = tx.init(box["params"])

    def step() -> None:
        with contextlib.nullcontext() if checked else _checks_off():
            updates, box["state"] = tx.update(grads, box["state"], box["params"])
            box["params"] = fo.apply_updates(box["params"], updates)

    step.box = box  # (its parameters, for the test that floor computes the same numbers)
    return step


@contextlib.contextmanager
def _checks_off():
    """The per-leaf input checks of ``update`` and ``apply_updates`` as no-ops (this workload passes
    them all: plain CPU tensors without autograd, shapes and dtypes as the params')."""
    patches = [(definition_module, name, _nothing)
               for name in ("check_params", "check_leaves_match", "check_state", "warn_if_chaining_graphs")]
    patches += [(module, "eager_ops_for", lambda *lists: FOREACH_PURE) for module in (definition_module, base_module)]
    patches += [(base_module, "_check_updates", _nothing)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def floor(work: workloads.Workload) -> Callable[[], None]:
    """The least a pure step over the workload's pytree does, with the library's flat layout."""
    grads = [g.clone() for g in work.grads]
    like = work.params
    box = {"params": grouped._flat([p.clone() for p in like]), "buf": torch.zeros(work.numel),
           "step": torch.zeros(())}

    def step() -> None:
        g = grouped._flat(grads)  # the gradients copied into one buffer
        buf = box["buf"] * MOMENTUM
        buf.add_(g)  # torch's rounding: mu b, then + g
        update = buf * -LR
        new_params = box["params"] + update
        step_count = box["step"] + 1
        handed_out = (grouped._unflat(update, like), grouped._unflat(buf, like), grouped._unflat(new_params, like),
                      list(step_count.expand(len(like)).clone().unbind()))
        box.update(params=new_params, buf=buf, step=step_count, handed_out=handed_out)

    step.box = box
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=61)
    args = parser.parse_args(argv)
    work = workloads.make("many-small", torch.device("cpu"))
    candidates = [Candidate("torch/foreach", torch_foreach(work)), Candidate("functional", functional(work)),
                  Candidate("functional, no checks", functional(work, checked=False)), Candidate("floor", floor(work))]
    untimed_steps(candidates, 5)
    samples = time_interleaved(candidates, args.reps, torch.device("cpu"))
    reference = stats_ms(samples["torch/foreach"])
    print(f"SGD(momentum={MOMENTUM}) on {work.describe()}, torch {torch.__version__}, {args.reps} interleaved reps")
    print(f"{'candidate':24s} {'median ms':>10s} {'min ms':>8s} {'median / torch':>15s} {'min / torch':>12s}")
    for c in candidates:
        s = stats_ms(samples[c.label])
        print(f"{c.label:24s} {s['median_ms']:10.2f} {s['min_ms']:8.2f} "
              f"{s['median_ms'] / reference['median_ms']:14.2f}x {s['min_ms'] / reference['min_ms']:11.2f}x")


if __name__ == "__main__":
    main()

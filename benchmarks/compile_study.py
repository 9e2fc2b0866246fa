"""Compile time of one optimizer step on one workload, in a child process so it can be timed out.

Targets:

* ``functional`` — ``torch.compile`` of functional ``update`` + ``apply_updates`` over the
  workload's tensors (one graph with every tensor's ops in it);
* ``functional-flat`` — the same step over the workload's parameters grouped into one flat
  buffer per dtype/device (here: one float32 tensor of the same total size), the storage layout
  that keeps the compiled graph's size independent of the number of tensors;
* ``torch-step`` — ``torch.compile(torch.optim.<Opt>(params).step)`` with torch's default
  implementation (for-loop on CPU, foreach on CUDA);
* ``reference-step``, ``compat-step`` — for an optimizer beyond torch.optim:
  ``torch.compile(X(params).step)`` of its reference package's class or of its compat class
  (float ``lr``, a ``StepLR`` scheduler stepped after every step, as the in-process compiled-step
  rows of the others), timed against the reference's eager step with the same scheduler (compat's
  where the package is missing) and compared with it after the same steps (:func:`measure_step`).

Each run prints one JSON line: the first call's time (compilation plus one step), graphs and FX
nodes compiled, time in Inductor, and the steady-state step time next to the eager reference
step measured interleaved in the same process.

``python -m benchmarks.compile_study --target functional --optimizer Adam --workload many-small``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from typing import Callable, Optional

TARGETS = ("functional", "functional-flat", "torch-step", "reference-step", "compat-step")


def default_impl(device) -> str:
    """torch.optim's default implementation on ``device`` (foreach on CUDA, for-loop on CPU)."""
    return "foreach" if device.type == "cuda" else "for-loop"


def measure(target: str, optimizer: str, workload: str, reps: int, device_name: str, warmup: int = 2,
            progress: Optional[Callable[[dict], None]] = None) -> dict:
    import torch

    from . import registry, workloads
    from .candidates import FunctionalCandidate, OptimCandidate
    from .measure import time_interleaved, timed_first_step

    device = torch.device(device_name)
    (opt,), _ = registry.discover([optimizer])
    if not opt.spec.compilable:
        raise SystemExit(f"{optimizer}'s step does not compile")
    work = workloads.make(workload, device)
    if opt.spec.workload is not None:  # Muon: the 2-D parameters
        work = opt.spec.workload(work)
    if target in ("reference-step", "compat-step"):
        return measure_step(opt, target.split("-")[0], work, reps, warmup, device, progress)
    if opt.spec.beyond_torch:
        raise SystemExit(f"target {target} needs an optimizer torch.optim has; {optimizer} is beyond torch.optim")
    params, grads = work.params, work.grads
    kwargs = opt.spec.kwargs
    if target == "torch-step":
        candidate = OptimCandidate("torch", opt.spec.torch_cls, "compiled-step", params, grads, kwargs)
    else:
        if opt.functional is None:
            raise SystemExit(f"functional_optim has no {opt.spec.factory}")
        if target == "functional-flat":
            if not opt.spec.elementwise:
                raise SystemExit(f"{optimizer} is not elementwise: flattening its parameters changes its math")
            params = [torch.cat([p.reshape(-1) for p in params])]
            grads = [torch.cat([g.reshape(-1) for g in grads])]
        candidate = FunctionalCandidate(opt.functional, True, params, grads, kwargs)
        candidate.impl = target.replace("functional-", "compiled-") if target != "functional" else "compiled"
    reference = OptimCandidate("torch", opt.spec.torch_cls, default_impl(device) if opt.spec.foreach else "for-loop",
                               work.params, work.grads, kwargs, impl_flags=opt.spec.foreach)
    first_s = timed_first_step(candidate, device)
    reference.step()
    for _ in range(warmup):
        candidate.step()
        reference.step()
    samples = time_interleaved([reference, candidate], reps, device)
    return {
        "target": target,
        "optimizer": optimizer,
        "workload": work.describe(),
        "tensors": len(params),
        "first_call_s": first_s,
        **candidate.compile_info.as_dict(),
        "step_ms": 1e3 * statistics.median(samples[candidate.label]),
        "reference": reference.label,
        "reference_step_ms": 1e3 * statistics.median(samples[reference.label]),
    }


def measure_step(opt, family: str, work, reps: int, warmup: int, device,
                 progress: Optional[Callable[[dict], None]] = None) -> dict:
    """``torch.compile(X.step)`` of ``opt``'s ``family`` class (``"reference"`` or ``"compat"``),
    an optimizer beyond torch.optim, against the reference's eager step: first call, compile
    record, step times (both timed interleaved after ``warmup`` steps), the parameters compared
    after the same number of steps, state bytes and the step's transient memory.

    ``progress`` gets ``{"steps", "graphs", "elapsed_s"}`` after the first call and each warmup
    step, so a parent that kills a slow child still learns how far it got (a step that
    recompiles at every call shows as one graph more per step).
    """
    import time

    import torch

    from .candidates import compare_params, optim_for
    from .measure import stats_ms, step_peak_bytes, time_interleaved, timed_first_step, untimed_steps

    # as benchmarks.run: a step that breaks its graph a few times must not reach Dynamo's default
    # limit of 8 compiled versions (after which it runs uncompiled)
    torch._dynamo.config.recompile_limit = 64
    spec = opt.spec
    if (opt.reference_cls if family == "reference" else opt.compat_cls) is None:
        raise SystemExit(f"{spec.name} has no {family} class here")
    candidate = optim_for(opt, work, family, "compiled-step")
    # the eager twin runs the same StepLR, so both step with the same learning rates (and both time it)
    baseline = (optim_for(opt, work, "reference", spec.reference.name, scheduled=True) if opt.reference_cls is not None
                else optim_for(opt, work, "compat", "default", scheduled=True))
    start = time.perf_counter()

    def tell(steps: int) -> None:
        if progress is not None:
            progress({"steps": steps, "graphs": candidate.compile_info.graphs,
                      "elapsed_s": round(time.perf_counter() - start, 1)})

    first_s = timed_first_step(candidate, device)
    tell(1)
    untimed_steps([baseline], 1)
    for done in range(warmup):
        untimed_steps([candidate, baseline], 1)
        tell(2 + done)
    samples = time_interleaved([baseline, candidate], reps, device)
    out = {
        "target": f"{family}-step",
        "optimizer": spec.name,
        "workload": work.name,
        **stats_ms(samples[candidate.label]),
        "first_call_s": first_s,
        "state_bytes": candidate.state_bytes(),
        **candidate.compile_info.as_dict(),
        "baseline": baseline.label,
        "baseline_median_ms": stats_ms(samples[baseline.label])["median_ms"],
    }
    same = compare_params(candidate, baseline)
    out.update({f"vs_baseline_{k}": v for k, v in same.items()})
    if baseline.family == "reference":
        out.update({f"vs_reference_{k}": v for k, v in same.items()})
    out["step_peak_bytes"] = step_peak_bytes(candidate, device)
    return out


def run_child(target: str, optimizer: str, workload: str, reps: int, device: str, timeout_s: float,
              warmup: Optional[int] = None) -> dict:
    """Run :func:`measure` in a child process; on timeout kill its process group and say so."""
    cmd = [sys.executable, "-m", "benchmarks.compile_study", "--target", target, "--optimizer", optimizer,
           "--workload", workload, "--reps", str(reps), "--device", device]
    if warmup is not None:
        cmd += ["--warmup", str(warmup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()  # what it printed before it was killed
        done = {"target": target, "optimizer": optimizer, "workload": workload, "timed_out": True,
                "timeout_s": timeout_s}
        progress = [json.loads(line)["progress"] for line in out.splitlines() if line.startswith('{"progress"')]
        return {**done, "progress": progress[-1]} if progress else done
    lines = [line for line in out.splitlines() if line.startswith("{") and not line.startswith('{"progress"')]
    if proc.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return {"target": target, "optimizer": optimizer, "workload": workload, "error": tail}
    return json.loads(lines[-1])


def main(argv: Optional[list] = None) -> None:
    from .workloads import WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--optimizer", default="Adam")
    parser.add_argument("--workload", choices=WORKLOADS, default="many-small")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (default 2)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.target, args.optimizer, args.workload, args.reps, args.device, args.warmup,
                             progress=lambda p: print(json.dumps({"progress": p}), flush=True))), flush=True)


if __name__ == "__main__":
    main()

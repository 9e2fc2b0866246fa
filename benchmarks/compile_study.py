"""Compile time of one optimizer step on one workload, in a child process so it can be timed out.

Targets:

* ``functional`` — ``torch.compile`` of functional ``update`` + ``apply_updates`` over the
  workload's tensors (one graph with every tensor's ops in it);
* ``functional-flat`` — the same step over the workload's parameters grouped into one flat
  buffer per dtype/device (here: one float32 tensor of the same total size), the storage layout
  that keeps the compiled graph's size independent of the number of tensors;
* ``torch-step`` — ``torch.compile(torch.optim.<Opt>(params).step)`` with torch's default
  implementation (for-loop on CPU, foreach on CUDA).

Each run prints one JSON line: the first call's time (compilation plus one step), graphs and FX
nodes compiled, time in Inductor, and the steady-state step time next to torch's default eager
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
from typing import Optional

TARGETS = ("functional", "functional-flat", "torch-step")


def default_impl(device) -> str:
    """torch.optim's default implementation on ``device`` (foreach on CUDA, for-loop on CPU)."""
    return "foreach" if device.type == "cuda" else "for-loop"


def measure(target: str, optimizer: str, workload: str, reps: int, device_name: str) -> dict:
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
    for _ in range(2):
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


def run_child(target: str, optimizer: str, workload: str, reps: int, device: str, timeout_s: float) -> dict:
    """Run :func:`measure` in a child process; on timeout kill its process group and say so."""
    cmd = [sys.executable, "-m", "benchmarks.compile_study", "--target", target, "--optimizer", optimizer,
           "--workload", workload, "--reps", str(reps), "--device", device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"target": target, "optimizer": optimizer, "workload": workload, "timed_out": True,
                "timeout_s": timeout_s}
    lines = [line for line in out.splitlines() if line.startswith("{")]
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
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.target, args.optimizer, args.workload, args.reps, args.device)), flush=True)


if __name__ == "__main__":
    main()

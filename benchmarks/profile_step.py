"""Where a step's time goes: ``torch.profiler`` over a few steps of each implementation, side by side.

    .venv/bin/python -m benchmarks.profile_step                       # Adam on transformer, this machine's device
    .venv/bin/python -m benchmarks.profile_step --workload large --optimizer AdamW --device cuda

For torch's fused (or foreach) step and ours (functional compiled, compiled in place with
``functional_optim.step_``, and eager), after warm-up steps, it profiles ``--steps`` steps and
prints per step: the wall time, the kernels launched, the device time they took, and the kernels
that took most of it. On CUDA the device time is the GPU's; on the CPU it is the operators' own
time. What the benchmark report times, this explains.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from . import registry, workloads
from .candidates import functional_for, optim_for


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_candidate(candidate, device: torch.device, steps: int, warmup: int, top: int) -> str:
    """The profile of ``steps`` steps of ``candidate`` (after ``warmup`` untimed ones) as text."""
    for _ in range(warmup):
        candidate.step()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            candidate.step()
        _sync(device)
        wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        own = lambda e: e.self_device_time_total  # noqa: E731
    else:
        kernels = [e for e in events if e.key.startswith("aten::") or "Torch-Compiled" in e.key]
        own = lambda e: e.self_cpu_time_total  # noqa: E731
    kernels.sort(key=own, reverse=True)
    total_us = sum(own(e) for e in kernels) / steps
    launches = sum(e.count for e in kernels) / steps
    lines = [f"{candidate.label:<34} wall {wall * 1e3:8.3f} ms/step   {launches:7.1f} kernels/step   "
             f"device {total_us / 1e3:8.3f} ms/step"]
    for e in kernels[:top]:
        lines.append(f"    {own(e) / steps / 1e3:8.3f} ms  {e.count / steps:6.1f}x  {e.key[:110]}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", default="Adam", help="a torch.optim name (default Adam)")
    parser.add_argument("--workload", default="transformer", help=f"one of {list(workloads.WORKLOADS)}")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=8, help="kernels listed per implementation")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    (opt,), _ = registry.discover([args.optimizer], "torch")
    work = workloads.make(args.workload, device)
    print(f"{args.optimizer} on {work.describe()}, {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}")
    torch_impl = "fused" if opt.spec.has_fused else "foreach"
    makers = [lambda: optim_for(opt, work, "torch", torch_impl),
              lambda: functional_for(opt, work, compiled=True),
              lambda: functional_for(opt, work, compiled=True, inplace=True),
              lambda: functional_for(opt, work, compiled=False)]
    for make in makers:
        print(profile_candidate(make(), device, args.steps, args.warmup, args.top), flush=True)


if __name__ == "__main__":
    main()

"""The pure eager and compiled steps with glibc's default malloc settings and with ``fo.keep_cpu_memory()``.

    .venv/bin/python -m benchmarks.keep_memory      # ~3 min on 2 CPU cores

A pure step writes its results to new tensors, and with glibc's default settings the memory of the
tensors freed by the previous step goes back to the kernel, so the new ones lie on fresh pages that
the kernel faults in and zeroes (``functional_optim/cpu_memory.py``). ``keep_cpu_memory`` cannot be
undone in a process, so this study measures both settings in one process, one after the other:
every block first with the defaults, then with the setting, the same candidates and the same
interleaved timing (``benchmarks.measure.time_interleaved``) in both phases, each ratio against
torch's step timed in the same phase. Per block: ``functional_optim`` eager (``update`` +
``apply_updates``) against ``torch.optim`` foreach of the same optimizer; for the optimizers of
``--compiled`` (default Adam, AdamW) the compiled pure step against torch's fused Adam (the issue's
target 2), compiled once before the first phase. Minor page faults per step are read with
``getrusage`` over a few untimed steps of each candidate.

Writes ``benchmarks/results/keep_memory-cpu.md``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
from typing import Optional

import torch

import functional_optim

from . import registry, workloads
from .candidates import functional_for, optim_for
from .measure import time_interleaved

__all__ = ["measure", "markdown", "main"]


def _faults_per_step(candidate, steps: int = 5) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        candidate.before_step()
        candidate.step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def _blocks(names: Optional[list], compiled: set, work_names: list) -> list:
    """(workload, optimizer, [(path label, candidate, reference label)], reference candidates)."""
    optimizers, _ = registry.discover(names, "torch")
    adam = registry.discover(["Adam"], "torch")[0][0]  # torch's fused Adam: target 2's reference
    blocks = []
    for wname in work_names:
        work = workloads.make(wname, torch.device("cpu"))
        for opt in optimizers:
            if not opt.spec.foreach or opt.functional is None:
                continue
            derived = work if opt.spec.workload is None else opt.spec.workload(work)
            if derived.objective is not None:
                continue
            pairs = [("functional/eager", functional_for(opt, derived, compiled=False), "torch/foreach")]
            refs = {"torch/foreach": optim_for(opt, derived, "torch", "foreach")}
            if opt.name in compiled and wname == "transformer":
                pairs.append(("functional/compiled", functional_for(opt, derived, compiled=True), "torch/fused Adam"))
                refs["torch/fused Adam"] = optim_for(adam, derived, "torch", "fused")
            blocks.append((wname, opt.name, pairs, refs))
    return blocks


def _phase(blocks: list, reps: int, warmup: int) -> list:
    rows = []
    for wname, name, pairs, refs in blocks:
        candidates = [c for _, c, _ in pairs] + list(refs.values())
        for c in candidates:
            for _ in range(warmup):
                c.before_step()
                c.step()
        faults = {id(c): _faults_per_step(c) for c in candidates}
        samples = time_interleaved(candidates, reps, torch.device("cpu"))
        median = {id(c): statistics.median(samples[c.label]) * 1e3 for c in candidates}
        for label, c, ref_label in pairs:
            ref = refs[ref_label]
            rows.append({"workload": wname, "optimizer": name, "path": label, "ms": median[id(c)],
                         "reference": ref_label, "reference_ms": median[id(ref)],
                         "faults": faults[id(c)], "reference_faults": faults[id(ref)]})
        print(f"  {wname} {name}: " + ", ".join(f"{r['path']} {r['ms'] / r['reference_ms']:.2f}x"
                                               for r in rows[-len(pairs):]), file=sys.stderr, flush=True)
    return rows


def measure(names: Optional[list] = None, compiled: tuple = ("Adam", "AdamW"), reps: int = 15, warmup: int = 5,
            work_names: tuple = ("transformer", "many-small")) -> dict:
    """Both phases' rows (see the module docstring); ``applied``: whether the setting took effect."""
    blocks = _blocks(names, set(compiled), list(work_names))
    for _, _, pairs, _ in blocks:  # compile (and warm up) before the first phase
        for _, c, _ in pairs:
            c.step()
    default = _phase(blocks, reps, warmup)
    applied = functional_optim.keep_cpu_memory()
    kept = _phase(blocks, reps, warmup)
    return {"applied": applied, "default": default, "kept": kept, "reps": reps}


def markdown(result: dict, meta: dict, command: str) -> str:
    lines = [
        "# Pure steps with glibc's default malloc settings and with `fo.keep_cpu_memory()` (CPU)",
        "",
        f"- date: {meta['date']}; torch {meta['torch']}; Python {meta['python']}; {meta['platform']}",
        f"- device: cpu ({meta['cpu']}, {meta['cpu_count']} cores, torch threads: {meta['torch_threads']})",
        f"- command: `{command}`; wall time {meta['wall_s']:.0f} s; reps {result['reps']} (interleaved) per phase",
        f"- 1-min load average: {meta.get('loadavg_start')} at start, {meta.get('loadavg_end')} at end",
        f"- `keep_cpu_memory()` applied: {result['applied']}",
        "",
        "One process: every block with the default settings first, then every block again after "
        "`functional_optim.keep_cpu_memory()`; each ratio divides medians timed interleaved in the same "
        "phase. *faults/step*: minor page faults per step (`getrusage`, 5 untimed steps).",
        "",
        "| workload | optimizer | path | against | default: ms | ratio | faults/step | kept: ms | ratio | faults/step |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d, k in zip(result["default"], result["kept"]):
        lines.append(
            f"| {d['workload']} | {d['optimizer']} | {d['path']} | {d['reference']} "
            f"({d['reference_ms']:.1f} / {k['reference_ms']:.1f} ms) | {d['ms']:.1f} | "
            f"{d['ms'] / d['reference_ms']:.2f}× | {d['faults']:.0f} | {k['ms']:.1f} | "
            f"{k['ms'] / k['reference_ms']:.2f}× | {k['faults']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", help="comma-separated subset of torch.optim's (default: every one with foreach)")
    parser.add_argument("--compiled", default="Adam,AdamW", help="optimizers whose compiled pure step is timed too")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "keep_memory-cpu.md"))
    args = parser.parse_args(argv)
    from .run import write_study

    names = args.optimizers.split(",") if args.optimizers else None
    compiled = tuple(n for n in args.compiled.split(",") if n)
    return write_study("keep_memory", argv, args.out, lambda: measure(names, compiled, args.reps), markdown)


if __name__ == "__main__":
    sys.exit(main())

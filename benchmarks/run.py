"""Benchmark suite: per-step time, memory and compile time of every optimizer and implementation.

    .venv/bin/python -m benchmarks.run            # full run (all optimizers, both workloads, compile study)
    .venv/bin/python -m benchmarks.run --quick    # a couple of minutes: fewer reps, compile only Adam

For each workload and optimizer it times, interleaved in one process: ``torch.optim`` (for-loop,
foreach, fused where torch has it), ``compat`` (the same), ``functional_optim`` eager
(``update`` + ``apply_updates``) and compiled (``torch.compile`` of that step). It writes
``benchmarks/results/<device>.{md,json,png}``. See ``benchmarks/README.md`` for how to read them.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import os
import platform
import sys
import tempfile
import time
from typing import Callable, Optional

import torch

import functional_optim.cpu_memory  # also binds functional_optim

from . import bitwise, compile_study, hparams_probe, registry, report, workloads
from .candidates import (FunctionalCandidate, OptimCandidate, compare_params, fresh_dynamo, functional_for,
                         optim_for)
from .measure import (bandwidth, stats_ms, step_peak_bytes, store_cost, time_interleaved, timed_first_step,
                      untimed_steps)


#: (workload, target) pairs of the compile study; the transformer's per-tensor compile is in its block
STUDY = [("many-small", "functional"), ("many-small", "functional-flat"), ("many-small", "torch-step"),
         ("transformer", "functional-flat")]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> Optional[float]:
    """1-minute load average (other processes competing for the CPUs make timings noisy)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "loadavg_start": _loadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_study(module: str, argv: Optional[list], out: str, measure: Callable[[], dict],
                markdown: Callable[[dict, dict, str], str]) -> int:
    """Run a study module's ``measure()`` on the CPU and write ``markdown(result, machine, command)``
    to ``out`` (and print it); the machine record gains the wall time and the closing load average."""
    meta = machine_info(torch.device("cpu"))
    start = time.perf_counter()
    result = measure()
    meta["wall_s"] = time.perf_counter() - start
    meta["loadavg_end"] = _loadavg()
    command = f".venv/bin/python -m benchmarks.{module}" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    text = markdown(result, meta, command)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(text)
    return 0


def build_candidates(opt: registry.Available, work: workloads.Workload, device: torch.device, compiled: bool,
                     compile_torch_step: bool, adam_fused_ref: bool, notes: list,
                     only: Optional[str] = None) -> list:
    """Every implementation of ``opt`` this checkout and device offer, each with its own copy of the work
    (``only``: just the one with that label; otherwise all but the compiled ``optimizer.step`` ones).

    ``work`` is the workload ``opt`` runs on (``spec.workload`` applied); its ``objective`` and
    ``step_inputs``, if any, go to every candidate. Optimizers that do not compile
    (``spec.compilable``) get no compiled ones. An optimizer beyond torch.optim gets its
    reference package's class (``reference/<name>``; none when the package is missing) and its
    compat class (``compat/default``) instead of torch's implementations; its compiled steps run
    in child processes (:func:`compiled_steps_in_children`).
    """
    spec = opt.spec
    compiled, compile_torch_step = compiled and spec.compilable, compile_torch_step and spec.compilable

    def optim(family: str, impl: str) -> OptimCandidate:
        return optim_for(opt, work, family, impl)

    def functional(compiled: bool, inplace: bool = False) -> FunctionalCandidate:
        return functional_for(opt, work, compiled, inplace)

    if spec.beyond_torch:
        makers = []
        if opt.reference_cls is not None:
            makers.append((f"reference/{spec.reference.name}", lambda: optim("reference", spec.reference.name)))
        if opt.compat_cls is not None:
            makers.append(("compat/default", lambda: optim("compat", "default")))
    else:
        impls = ["for-loop"] + (["foreach"] if spec.foreach else []) + (["fused"] if spec.has_fused else [])
        makers = [(f"torch/{i}", lambda i=i: optim("torch", i)) for i in impls]
        if opt.compat_cls is not None:
            takes_fused = "fused" in inspect.signature(opt.compat_cls.__init__).parameters
            compat_impls = [i for i in impls if i != "fused" or takes_fused]
            if len(compat_impls) < len(impls):
                notes.append(f"{spec.name}: compat has no fused implementation yet")
            makers += [(f"compat/{i}", lambda i=i: optim("compat", i)) for i in compat_impls]
    if opt.functional is not None:
        makers.append(("functional/eager", lambda: functional(False)))
        if compiled:
            makers.append(("functional/compiled", lambda: functional(True)))
            makers.append(("functional/compiled-inplace", lambda: functional(True, inplace=True)))
    if compile_torch_step and not spec.beyond_torch:  # built and timed one at a time: see bench_block
        makers.append(("torch/compiled-step", lambda: optim("torch", "compiled-step")))
        if opt.compat_cls is not None:
            makers.append(("compat/compiled-step", lambda: optim("compat", "compiled-step")))
    makers = [(label, make) for label, make in makers
              if (label == only if only else not label.endswith("/compiled-step"))]
    if adam_fused_ref and spec.name != "Adam":
        def adam_ref():
            c = OptimCandidate("torch", torch.optim.Adam, "fused", work.params, work.grads, {})
            c.family, c.impl = "reference", "Adam-fused"
            return c
        makers.append(("reference/Adam-fused", adam_ref))

    built = []
    for label, make in makers:
        try:
            c = make()
            if c.compile_info is not None:
                log(f"    compiling {label} ...")
            c.first_call_s = timed_first_step(c, device)
            if c.compile_info is not None:
                log(f"    compiled {label} in {c.first_call_s:.1f} s "
                    f"({c.compile_info.graphs} graph(s), {c.compile_info.nodes} FX nodes)")
            built.append(c)
        except Exception as exc:  # report and go on: one broken implementation must not stop the suite
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            notes.append(f"{spec.name} {label} on {work.name}: failed ({type(exc).__name__}: {msg[:200]})")
            log(f"    {label}: FAILED {type(exc).__name__}: {msg[:200]}")
    return built


def compiled_steps_in_children(opt: registry.Available, work: workloads.Workload, device: torch.device, args,
                               notes: list) -> list:
    """``torch.compile(X.step)`` of an optimizer beyond torch.optim, for its reference class and its
    compat class, each in a child process (:func:`benchmarks.compile_study.run_child`) that is
    killed after ``--compile-timeout`` s: a reference package's step may break its graph at every
    tensor or never finish compiling, and that must be reported, not stop the suite.

    Each child times the compiled step interleaved with the reference's eager step (compat's where
    the reference package is missing) and returns one row; one that fails or times out returns a
    row without times that says why (``failed``).
    """
    rows = []
    for family in ("reference", "compat"):
        if (opt.reference_cls if family == "reference" else opt.compat_cls) is None:
            continue
        label = f"{family}/compiled-step"
        log(f"    compiling and timing {label} in a child (timeout {args.compile_timeout:.0f} s) ...")
        t0 = time.perf_counter()
        res = compile_study.run_child(f"{family}-step", opt.name, work.name, args.reps, str(device),
                                      args.compile_timeout, warmup=args.warmup)
        row = {"family": family, "impl": "compiled-step", "in_child": True}
        if res.get("timed_out"):
            got = res.get("progress")
            row["failed"] = (f"timed out: not compiled and timed within {args.compile_timeout:.0f} s"
                             + (f" (after {got['steps']} step(s) in {got['elapsed_s']:.0f} s: {got['graphs']} graph(s))"
                                if got else " (not even its first call)"))
            if got:
                row["progress"] = got
        elif res.get("error"):
            row["failed"] = f"did not compile: {res['error'][:200]}"
        else:
            row.update({k: v for k, v in res.items() if k not in ("target", "optimizer", "workload")})
        if row.get("failed"):
            notes.append(f"{opt.name} {label} on {work.name}: {row['failed']}")
            log(f"    {label}: {row['failed']}")
        else:
            log(f"    {label}: first call {row['first_call_s']:.1f} s, {row['graphs']} graph(s), "
                f"{row['median_ms']:.3g} ms/step ({time.perf_counter() - t0:.0f} s in all)")
        rows.append(row)
    return rows


def bench_block(opt, work, device, args, bw: float, notes: list) -> list:
    """Time every implementation of one optimizer on one workload; one row per implementation.

    An optimizer with a ``spec.workload`` runs on the workload derived from ``work`` (a note and
    each row's ``derived`` say how). For one beyond torch.optim every row carries
    ``reference_label`` and is compared with its reference's row (``vs_reference_*``).
    """
    spec = opt.spec
    if spec.workload is not None:
        work = spec.workload(work)
        notes.append(f"{opt.name} on {work.name}: {work.derived}")
    compiled = (not args.no_compile and work.name in args.compile_workloads
                and (args.compile_optimizers is None or opt.name.lower() in args.compile_optimizers))
    if compiled:
        torch._dynamo.reset()  # each block's compiled step starts from an empty cache (no recompile limit hits)
    candidates = build_candidates(
        opt, work, device, compiled,
        compile_torch_step=False,
        adam_fused_ref=compiled, notes=notes,
    )
    if not candidates:
        return []
    untimed_steps(candidates, args.warmup)
    samples = time_interleaved(candidates, args.reps, device, progress=f"    timing {len(candidates)} implementations")
    # torch.compile(opt.step) of torch's and of compat's optimizer share code objects (torch's step
    # wrapper) and so Dynamo's cache and frame state: compiled in one process, each made the other
    # recompile at every step. Each is built from an empty cache and timed on its own, after the rest.
    child_rows = []
    if compiled and spec.compilable and spec.beyond_torch:
        child_rows = compiled_steps_in_children(opt, work, device, args, notes)
    elif compiled and spec.compilable:
        for label in ("torch/compiled-step", "compat/compiled-step"):
            with fresh_dynamo():
                for c in build_candidates(opt, work, device, compiled, True, False, notes, only=label):
                    untimed_steps([c], args.warmup)
                    samples.update(time_interleaved([c], args.reps, device, progress=f"    timing {label}"))
                    candidates.append(c)
    bw = max(bw, bandwidth(device, reps=5)["best"])  # re-measured next to this block's timings
    by_label = {c.label: c for c in candidates}
    if spec.beyond_torch:  # its reference package's class (absent when the package is not installed)
        ref, ref_key = by_label.get(f"reference/{spec.reference.name}"), "vs_reference"
    else:  # torch's default implementation; its for-loop where it has no other (Muon, SparseAdam, LBFGS)
        ref = by_label.get(f"torch/{compile_study.default_impl(device)}") or by_label.get("torch/for-loop")
        ref_key = "vs_torch_default"
    touched = spec.bytes_touched
    floor_s = None if touched is None else sum(touched(p, g) for p, g in zip(work.params, work.grads)) / bw
    common = {"workload": work.name, "optimizer": opt.name,
              "floor_ms": None if floor_s is None else 1e3 * floor_s, "bandwidth_gbs": bw / 1e9}
    if work.derived:
        common["derived"] = work.derived
    if spec.beyond_torch:
        common["reference_label"] = spec.reference.name
    rows = []
    for c in candidates:
        row = {**common, "family": c.family, "impl": c.impl, **stats_ms(samples[c.label]),
               "first_call_s": c.first_call_s, "state_bytes": c.state_bytes()}
        if c.compile_info is not None:
            row.update(c.compile_info.as_dict())
        if ref is not None and c is not ref and c.family != "reference":
            row.update({f"{ref_key}_{k}": v for k, v in compare_params(c, ref).items()})
        if c.family == "compat" and c.impl == "foreach" and "compat/for-loop" in by_label:
            row["foreach_bitwise_vs_own_for_loop"] = compare_params(c, by_label["compat/for-loop"])["bitwise"]
        if c.family == "torch" and c.impl == "foreach" and "torch/for-loop" in by_label:
            row["foreach_bitwise_vs_own_for_loop"] = compare_params(c, by_label["torch/for-loop"])["bitwise"]
        rows.append(row)
    for c, row in zip(candidates, rows):  # after the comparisons: this extra step changes the parameters
        row["step_peak_bytes"] = step_peak_bytes(c, device)
    return rows + [{**common, **r} for r in child_rows]


def keep_cpu_memory_note() -> str:
    """Apply :func:`functional_optim.keep_cpu_memory` here and in child processes; the report's note."""
    if not functional_optim.keep_cpu_memory():
        return "--keep-cpu-memory had no effect: this process does not run on glibc"
    environment = functional_optim.cpu_memory.ENVIRONMENT
    os.environ.update(environment)
    settings = " ".join(f"{name}={value}" for name, value in environment.items())
    return ("malloc keeps freed memory (`--keep-cpu-memory`: `functional_optim.keep_cpu_memory()`, and "
            f"{settings} in child processes): every path, torch's included, runs with it")


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="5 reps, 1 warmup, compile only Adam, no compile study (a couple of minutes)")
    parser.add_argument("--reps", type=int, help="timed steps per implementation (default 20; --quick 5)")
    parser.add_argument("--warmup", type=int, help="untimed steps after the first (default 3; --quick 1)")
    parser.add_argument("--optimizers", help="comma-separated subset, e.g. Adam,NAdam or Lion,Lamb (default: all "
                                             "available in the group)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--beyond-torch", action="store_true",
                       help="only the optimizers torch.optim does not have (Lion, Lamb, ..., against their reference "
                            "packages); the report is <device>-beyond-torch.md unless --name says otherwise")
    group.add_argument("--torch-optim", action="store_true", help="only the optimizers torch.optim has")
    parser.add_argument("--workloads", default="transformer,many-small",
                        help=f"comma-separated from {list(workloads.WORKLOADS)} (default transformer,many-small)")
    parser.add_argument("--large", action="store_true", help="add the 134M-parameter workload (CUDA only)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-compile", action="store_true", help="skip every torch.compile measurement")
    parser.add_argument("--compile-workloads", default="transformer,large",
                        help="workloads whose blocks include functional/compiled (default transformer,large; "
                             "many-small compiles are measured by the compile study instead)")
    parser.add_argument("--compile-optimizers", help="optimizers to compile (default all; --quick: Adam)")
    parser.add_argument("--no-compile-study", action="store_true",
                        help="skip the compile-time study on the many-small workload")
    parser.add_argument("--warm-cache", action="store_true",
                        help="use Inductor's usual cache (default: a fresh one, so compile times are cold)")
    parser.add_argument("--compile-timeout", type=float, default=600,
                        help="seconds before a compile-study child, or a child compiling the step of an optimizer "
                             "beyond torch.optim, is killed and reported as timed out (default 600)")
    parser.add_argument("--keep-cpu-memory", action="store_true",
                        help="call functional_optim.keep_cpu_memory() first (glibc keeps freed memory for reuse; "
                             "child processes get the same settings through MALLOC_*_THRESHOLD_)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                        help="directory of the report (default benchmarks/results)")
    parser.add_argument("--name", help="file name of the report without extension (default: <device>, then "
                                       "-beyond-torch with --beyond-torch, then -quick with --quick)")
    parser.add_argument("--tag", help="appended to the default file name (cuda-<gpu>-quick-<tag>), for runs kept side by side")
    args = parser.parse_args(argv)
    args.group = "beyond-torch" if args.beyond_torch else "torch" if args.torch_optim else "all"
    args.reps = args.reps or (5 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.compile_optimizers is None and args.quick:
        args.compile_optimizers = "Adam"
    args.compile_optimizers = ({n.strip().lower() for n in args.compile_optimizers.split(",")}
                               if args.compile_optimizers else None)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.compile_workloads = {w.strip() for w in args.compile_workloads.split(",")}
    args.compile_study = not (args.no_compile or args.no_compile_study or args.quick)
    return args


def main(argv: Optional[list] = None) -> None:
    args = parse_args(argv)
    # torch.compile(opt.step) of torch's and of compat's optimizer share one code object (torch's
    # step wrapper); its default limit of 8 compiled versions is reached by the two of them together
    # when each breaks its graph a few times, after which Dynamo runs one of them uncompiled
    torch._dynamo.config.recompile_limit = 64
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fo_bench_inductor_")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    notes: list = []
    if args.keep_cpu_memory:
        notes.append(keep_cpu_memory_note())
    if args.large:
        if device.type == "cuda":
            args.workloads.append("large")
        else:
            notes.append("--large ignored: the large workload needs a CUDA device")
    for w in args.workloads:
        if w not in workloads.WORKLOADS:
            raise SystemExit(f"unknown workload {w!r}; known: {list(workloads.WORKLOADS)}")
    started = time.perf_counter()
    info = machine_info(device)
    log(f"benchmarks: torch {info['torch']} on {info.get('gpu', info['cpu'])} ({device}), "
        f"{info['torch_threads']} threads; reps={args.reps} warmup={args.warmup}")
    optimizers, found_notes = registry.discover(args.optimizers.split(",") if args.optimizers else None, args.group)
    notes += found_notes
    for n in found_notes:
        log(f"  note: {n}")
    log(f"optimizers: {', '.join(o.name for o in optimizers)}")

    log("bitwise check: foreach vs for-loop, compat vs torch (small tensors, every flag set) ...")
    bits = [row for opt in optimizers for row in bitwise.check(opt, device)]
    bw = bandwidth(device)
    log(f"bandwidth: copy {bw['copy'] / 1e9:.1f} GB/s, add {bw['add'] / 1e9:.1f} GB/s")
    stores = store_cost(device)
    log(f"store cost: out-of-place add {stores['ratio']:.2f}x in-place add")
    rows, hparams, study = [], {}, []
    command = " ".join([".venv/bin/python -m benchmarks.run"] + (sys.argv[1:] if argv is None else argv))

    def write_report(unfinished: list) -> list:
        """The report of what is measured so far (tables and numbers after each block, the plot at the
        end): a run cut short by a time limit leaves the last one, with a note naming what it did not reach."""
        run_notes = notes + ([f"partial run: stopped before {', '.join(unfinished)}"] if unfinished else [])
        result = {"machine": info, "command": command,
                  "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
                  "bandwidth": bw, "store_cost": stores, "hparams_probe": hparams,
                  "workloads": {w: workloads.describe(w) for w in args.workloads},
                  "rows": rows, "bitwise": bits, "compile_study": study, "notes": run_notes,
                  "wall_s": time.perf_counter() - started}
        info["loadavg_end"] = _loadavg()
        return report.write(result, args.out, with_plot=not unfinished)

    for done, wname in enumerate(args.workloads, 1):
        work = workloads.make(wname, device)
        log(f"[{work.describe()}]")
        for i, opt in enumerate(optimizers):
            log(f"  {opt.name}")
            rows += bench_block(opt, work, device, args, bw["best"], notes)
            write_report([f"{o.name} on {wname}" for o in optimizers[i + 1:]] + args.workloads[done:]
                         + (["the compile study"] if args.compile_study else []))
        adam = next((o for o in optimizers if o.name == "Adam" and o.functional is not None), None)
        if adam is not None and not args.no_compile and wname in args.compile_workloads:
            log("  compiled Adam step with float and with tensor hparams (new lr every call) ...")
            hparams[wname] = hparams_probe.measure(adam.functional, work, device, args.reps, adam.spec.kwargs)
            write_report(args.workloads[done:] + (["the compile study"] if args.compile_study else []))
        del work
        gc.collect()

    if args.compile_study and any(o.name == "Adam" for o in optimizers):
        for wname, target in STUDY:
            log(f"[compile study] Adam {target} on {wname} (timeout {args.compile_timeout:.0f} s) ...")
            t0 = time.perf_counter()
            res = compile_study.run_child(target, "Adam", wname, min(args.reps, 10), str(device), args.compile_timeout)
            log(f"    done in {time.perf_counter() - t0:.0f} s: "
                f"{json.dumps({k: v for k, v in res.items() if k in ('first_call_s', 'timed_out', 'error')})}")
            study.append(res)

    paths = write_report([])
    log(f"done in {time.perf_counter() - started:.0f} s; wrote {', '.join(paths)}")


if __name__ == "__main__":
    main()

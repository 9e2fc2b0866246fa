"""Timing, memory-bandwidth and memory measurements.

* :func:`time_interleaved` runs the candidates round-robin (one step each per repetition, starting
  point rotated every repetition) so drift in clock speed, thermal state or background load hits
  every candidate alike; ratios are therefore taken between numbers measured side by side.
* :func:`bandwidth` measures the device's achievable memory bandwidth with a large copy and add, in
  the same process and with the same thread count as the benchmark, for the bandwidth floor.
* :func:`step_peak_bytes` measures the transient memory one step allocates above what was live
  before it: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU, the allocation events of torch's
  CPU allocator recorded by ``torch.profiler(profile_memory=True)`` (tracemalloc does not see them).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import torch

__all__ = ["sync", "time_interleaved", "untimed_steps", "stats_ms", "bandwidth", "store_cost", "step_peak_bytes"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device, setup: Optional[Callable[[], None]] = None) -> float:
    """Seconds of ``fn()`` (synchronised on CUDA); ``setup()`` first, untimed."""
    if setup is not None:
        setup()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_interleaved(candidates: Sequence, reps: int, device: torch.device, progress: str = "") -> dict:
    """Seconds per step of each candidate (``label -> list`` of ``reps`` samples), run round-robin."""
    samples = {c.label: [] for c in candidates}
    n = len(candidates)
    for r in range(reps):
        order = candidates[r % n:] + candidates[: r % n]
        for c in order:
            samples[c.label].append(_timed(c.step, device, c.before_step))
        if progress:
            print(f"\r{progress} rep {r + 1}/{reps}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr, flush=True)
    return samples


def stats_ms(samples: Sequence[float]) -> dict:
    """Median, minimum and quartiles (None for one sample) of step times in seconds, as milliseconds."""
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else (None, None, None)
    return {"median_ms": 1e3 * statistics.median(samples), "min_ms": 1e3 * min(samples),
            "q1_ms": None if quartiles[0] is None else 1e3 * quartiles[0],
            "q3_ms": None if quartiles[2] is None else 1e3 * quartiles[2]}


def timed_first_step(candidate, device: torch.device) -> float:
    """Seconds of a candidate's first step (state creation; compilation for compiled ones)."""
    return _timed(candidate.step, device, candidate.before_step)


def untimed_steps(candidates: Sequence, steps: int) -> None:
    """``steps`` steps of every candidate, round-robin (warmup)."""
    for _ in range(steps):
        for c in candidates:
            c.before_step()
            c.step()


def bandwidth(device: torch.device, numel: int = 1 << 25, reps: int = 9) -> dict:
    """Achievable bandwidth in bytes/s: best of the medians of ``copy_`` (2 passes) and ``add`` (3).

    Buffers are ``numel`` float32 elements (128 MiB by default), far beyond any cache.
    """
    a = torch.rand(numel, device=device)
    b = torch.rand(numel, device=device)
    c = torch.empty(numel, device=device)
    nbytes = a.numel() * a.element_size()
    kernels = {"copy": (lambda: c.copy_(a), 2 * nbytes), "add": (lambda: torch.add(a, b, out=c), 3 * nbytes)}
    result = {}
    for name, (fn, moved) in kernels.items():
        fn()
        times = [_timed(fn, device) for _ in range(reps)]
        result[name] = moved / statistics.median(times)
    result["best"] = max(result.values())
    return result


def store_cost(device: torch.device, numel: int = 1 << 25, reps: int = 9) -> dict:
    """What writing results into new memory costs next to writing them in place.

    Median times of ``a.add_(b)`` (in place: the way torch.optim's steps write) and of
    ``torch.add(a, b)`` (a new result: the way a pure step writes its new params and state), on
    ``numel`` float32 elements. On a CPU an out-of-place store first reads the destination's cache
    lines (write-allocate), which a GPU does not; their ratio bounds from below what a pure step
    can achieve against an in-place one moving the same bytes.
    """
    a = torch.rand(numel, device=device)
    b = torch.rand(numel, device=device)
    kernels = {"in_place_ms": lambda: a.add_(b), "out_of_place_ms": lambda: torch.add(a, b)}
    result = {}
    for name, fn in kernels.items():
        fn()
        result[name] = 1e3 * statistics.median(_timed(fn, device) for _ in range(reps))
    result["ratio"] = result["out_of_place_ms"] / result["in_place_ms"]
    return result


def step_peak_bytes(candidate, device: torch.device) -> int:
    """Peak bytes allocated during one step above the bytes live before it (transient memory).

    On CPU, frees of blocks allocated before the step are invisible to the profiler, so a step that
    frees old buffers before allocating new ones would be overstated (none of the steps here does:
    the functional step drops its old parameters and state only after returning the new ones).
    """
    candidate.before_step()
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        candidate.step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        candidate.step()
    allocations = []

    def walk(node) -> None:
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    live = peak = 0
    for _, size in sorted(allocations, key=lambda a: a[0]):
        live += size
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _stderr_silenced():
    """Send file descriptor 2 to /dev/null (the profiler's C++ start/stop chatter), then restore it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

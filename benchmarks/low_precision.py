"""Low-precision optimizer state and bfloat16 parameters: bytes per parameter and the loss of a run.

    .venv/bin/python -m benchmarks.low_precision              # ~1 min on 2 CPU cores
    .venv/bin/python -m benchmarks.low_precision --steps 200  # quicker, coarser

Two measurements, written to ``benchmarks/results/low_precision-cpu.md``:

1. **Bytes of optimizer state per parameter** for AdamW, read off the actual state tensors
   (``element_size() * numel()`` summed over every tensor of the state, divided by the number of
   parameters): ``torch.optim.AdamW`` after one step, ``fo.adamw``, and AdamW from parts
   (``chain(scale_by_adam(mu_dtype=, nu_dtype=), add_decayed_weights, scale_by_learning_rate)``)
   with float32 and bfloat16 moments, on float32 and bfloat16 parameters. Per-leaf step counts
   are included, which is why a row is a little above its moments' bytes.
2. **The loss of a small training run** (an MLP regressing a fixed random teacher network on
   seeded synthetic data, full batch, AdamW from parts, the same seeds for every run) for
   float32 params + float32 moments (the reference), float32 params + bfloat16 moments,
   bfloat16 params + bfloat16 moments added with round to nearest or with stochastic rounding
   (``fo.apply_updates(..., stochastic_rounding_key=fo.fold_in(seed, step))``), and bfloat16
   params + float32 moments with stochastic rounding (which storage costs what). The forward and
   backward run in float32 for every configuration (bfloat16 weights are upcast for the forward),
   so only the storage differs; the loss is always evaluated in float32.

3. **The cost of one ``apply_updates``** on bfloat16 parameters with float32 updates, round to
   nearest against stochastic rounding, eagerly (one 1M-element tensor; 500 tensors of 2048) and
   compiled (``torch.compile(fullgraph=True)``, the one tensor), median of a few repetitions.

:func:`measure` does all three and returns the numbers; :func:`markdown` renders them.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any, NamedTuple, Optional

import optree
import torch
from torch.func import functional_call, grad

import functional_optim as fo

__all__ = ["state_bytes", "bytes_per_param", "Run", "RUNS", "train", "apply_cost", "measure", "markdown", "main"]

BF16 = torch.bfloat16


# ---------------------------------------------------------------------------- bytes per parameter
def state_bytes(state: Any) -> int:
    """Bytes held by every tensor of an optimizer state (a pytree; for a torch optimizer pass
    ``list(opt.state.values())``)."""
    return sum(t.element_size() * t.numel() for t in optree.tree_leaves(state, none_is_leaf=False)
               if isinstance(t, torch.Tensor))


def _adamw_from_parts(mu_dtype: Optional[torch.dtype], nu_dtype: Optional[torch.dtype], lr: float = 1e-3,
                      weight_decay: float = 0.01) -> fo.GradientTransformation:
    return fo.chain(fo.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype), fo.add_decayed_weights(weight_decay),
                    fo.scale_by_learning_rate(lr))


def _block_shapes(width: int) -> list:
    """One transformer block's parameters: q, k, v, out projections, the MLP and two norms."""
    return [(width, width)] * 4 + [(4 * width, width), (width, 4 * width), (4 * width,), (width,), (width,), (width,)]


def bytes_per_param(shapes: list) -> list:
    """Rows ``(what, param dtype, param bytes/param, state bytes/param)`` for AdamW variants on
    parameters of the given shapes, each state measured after one step."""
    n = sum(math.prod(s) for s in shapes)
    rows = []

    def params_of(dtype):
        g = torch.Generator().manual_seed(0)
        return [torch.randn(s, generator=g).to(dtype) for s in shapes]

    ps = [torch.nn.Parameter(p) for p in params_of(torch.float32)]
    opt = torch.optim.AdamW(ps, lr=1e-3)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    rows.append(("torch.optim.AdamW", "float32", 4.0, state_bytes(list(opt.state.values())) / n))

    variants = [
        ("fo.adamw", torch.float32, lambda: fo.adamw(lr=1e-3)),
        ("AdamW from parts, float32 moments", torch.float32, lambda: _adamw_from_parts(None, None)),
        ("AdamW from parts, mu bfloat16, nu float32", torch.float32, lambda: _adamw_from_parts(BF16, None)),
        ("AdamW from parts, mu and nu bfloat16", torch.float32, lambda: _adamw_from_parts(BF16, BF16)),
        ("AdamW from parts, mu and nu bfloat16", BF16, lambda: _adamw_from_parts(BF16, BF16)),
        ("AdamW from parts, float32 moments", BF16, lambda: _adamw_from_parts(torch.float32, torch.float32)),
    ]
    for what, dtype, make in variants:
        tx = make()
        params = params_of(dtype)
        state = tx.init(params)
        _, state = tx.update([torch.ones(s) for s in shapes], state, params)
        rows.append((what, str(dtype).replace("torch.", ""), float(params[0].element_size()), state_bytes(state) / n))
    return rows


# ---------------------------------------------------------------------------- the training runs
class Run(NamedTuple):
    """One configuration of the training run."""

    name: str
    param_dtype: torch.dtype
    moment_dtype: Optional[torch.dtype]  # None: the params' dtype
    stochastic: bool


RUNS = (
    Run("float32 params, float32 moments (reference)", torch.float32, None, False),
    Run("float32 params, bfloat16 mu and nu", torch.float32, BF16, False),
    Run("bfloat16 params and moments, round to nearest", BF16, BF16, False),
    Run("bfloat16 params and moments, stochastic rounding", BF16, BF16, True),
    Run("bfloat16 params, float32 moments, stochastic rounding", BF16, torch.float32, True),
)


def _problem(n_in: int, hidden: int, n_samples: int, seed: int):
    """A 2-hidden-layer tanh MLP, its initial params and a regression target from a random teacher."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden),
                                torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    teacher = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    x = torch.randn(n_samples, n_in)
    with torch.no_grad():
        y = teacher(x)
        y = (y - y.mean()) / y.std()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    return model, params, x, y


def train(run: Run, steps: int, *, n_in: int = 16, hidden: int = 64, n_samples: int = 256, lr: float = 1e-3,
          weight_decay: float = 0.01, seed: int = 0) -> dict:
    """One run: the float32 loss before each step and after the last, the seconds it took, the
    state's bytes per parameter and the fraction of parameter elements the last step left as
    they were (rounding to nearest drops updates below half an ulp)."""
    model, params, x, y = _problem(n_in, hidden, n_samples, seed)
    params = {k: v.to(run.param_dtype) for k, v in params.items()}
    tx = _adamw_from_parts(run.moment_dtype, run.moment_dtype, lr, weight_decay)

    def loss_fn(float_params):
        return torch.nn.functional.mse_loss(functional_call(model, float_params, (x,)), y)

    grad_fn = grad(loss_fn)
    state = tx.init(params)
    seed_key = torch.tensor(seed)
    losses = []
    start = time.perf_counter()
    before = params
    for step in range(steps):
        float_params = {k: v.float() for k, v in params.items()}
        losses.append(float(loss_fn(float_params)))
        updates, state = tx.update(grad_fn(float_params), state, params)
        before = params
        key = fo.fold_in(seed_key, step) if run.stochastic else None
        params = fo.apply_updates(params, updates, stochastic_rounding_key=key)
    seconds = time.perf_counter() - start
    losses.append(float(loss_fn({k: v.float() for k, v in params.items()})))
    n = sum(v.numel() for v in params.values())
    unchanged = sum(int((params[k] == before[k]).sum()) for k in params) / n
    return {"name": run.name, "losses": losses, "seconds": seconds, "state_bytes_per_param": state_bytes(state) / n,
            "param_bytes_per_param": float(next(iter(params.values())).element_size()),
            "unchanged_last_step": unchanged if steps else 0.0, "n_params": n}


# ---------------------------------------------------------------------------- cost of apply_updates
def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up (and the compile, for a compiled fn)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def apply_cost(shape_sets: dict, reps: int = 5, compiled: tuple = ("one tensor",), backend: str = "inductor") -> list:
    """Rows ``(workload, implementation, round-to-nearest ms, stochastic rounding ms)`` for
    ``apply_updates`` on bfloat16 params and float32 updates of each named list of shapes; the
    workloads named in ``compiled`` are also timed under ``torch.compile(fullgraph=True, backend=backend)``."""
    rows = []
    key = torch.tensor(0)
    for name, shapes in shape_sets.items():
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=g).to(BF16) for s in shapes]
        updates = [torch.randn(s, generator=g) * 1e-3 for s in shapes]

        def nearest(p, u):
            return fo.apply_updates(p, u)

        def stochastic(p, u, k):
            return fo.apply_updates(p, u, stochastic_rounding_key=k)

        impls = [("eager", nearest, stochastic)]
        if name in compiled:
            torch._dynamo.reset()
            impls.append(("compiled", torch.compile(nearest, fullgraph=True, backend=backend),
                          torch.compile(stochastic, fullgraph=True, backend=backend)))
        for impl, rtn, sr in impls:
            rows.append((name, impl, _median_ms(lambda: rtn(params, updates), reps),
                         _median_ms(lambda: sr(params, updates, key), reps)))
    torch._dynamo.reset()
    return rows


APPLY_WORKLOADS = {"one tensor": [(1 << 20,)], "500 tensors": [(2048,)] * 500}


def measure(steps: int = 1500, *, hidden: int = 64, n_samples: int = 256, lr: float = 1e-3, width: int = 512,
            seed: int = 0, runs: tuple = RUNS, apply_workloads: dict = APPLY_WORKLOADS, reps: int = 5) -> dict:
    """The three measurements: ``{"bytes": bytes_per_param rows, "runs": [train(...) per run],
    "apply": apply_cost rows, "config": ...}``."""
    config = dict(steps=steps, hidden=hidden, n_samples=n_samples, lr=lr, width=width, seed=seed, reps=reps)
    return {"config": config, "bytes": bytes_per_param(_block_shapes(width)),
            "runs": [train(r, steps, hidden=hidden, n_samples=n_samples, lr=lr, seed=seed) for r in runs],
            "apply": apply_cost(apply_workloads, reps)}


# ---------------------------------------------------------------------------- report
def _curve_points(steps: int, n: int = 6) -> list:
    return sorted({round(steps * i / (n - 1)) for i in range(n)})


def markdown(result: dict, meta: dict, command: str) -> str:
    """The report: machine, command, the bytes table, the runs' final and mean losses and curves."""
    cfg = result["config"]
    ref = result["runs"][0]
    lines = [
        "# Low-precision optimizer state and bfloat16 parameters (CPU)",
        "",
        f"- date: {meta['date']}; torch {meta['torch']}; Python {meta['python']}; {meta['platform']}",
        f"- device: {meta['device']} ({meta['cpu']}, {meta['cpu_count']} cores, "
        f"torch threads: {meta['torch_threads']})",
        f"- command: `{command}`; wall time {meta['wall_s']:.0f} s",
        f"- 1-min load average: {meta.get('loadavg_start')} at start, {meta.get('loadavg_end')} at end (above the "
        "core count, other processes shared the CPUs: the seconds column is then not a measure of cost)",
        "",
        "## Bytes of optimizer state per parameter (AdamW)",
        "",
        f"Measured from the state tensors after one step on one transformer block of width {cfg['width']} "
        f"({sum(math.prod(s) for s in _block_shapes(cfg['width'])):,} parameters in "
        f"{len(_block_shapes(cfg['width']))} tensors): `element_size() * numel()` summed over every state "
        "tensor, divided by the number of parameters. The per-leaf step counts (4 bytes per tensor: int32 "
        "here, float32 in torch) are included.",
        "",
        "| optimizer | params | param bytes/param | state bytes/param | params + state |",
        "|---|---|---:|---:|---:|",
    ]
    for what, dtype, pb, sb in result["bytes"]:
        lines.append(f"| {what} | {dtype} | {pb:.0f} | {sb:.4f} | {pb + sb:.4f} |")
    lines += [
        "",
        "## Loss of a small training run",
        "",
        f"An MLP 16 → {cfg['hidden']} → {cfg['hidden']} → 1 (tanh; {ref['n_params']:,} parameters) regressing a "
        f"random teacher network on {cfg['n_samples']} seeded samples, full batch, {cfg['steps']} steps of AdamW "
        f"from parts (lr {cfg['lr']}, weight decay 0.01, betas (0.9, 0.999)), seed {cfg['seed']} for every run. "
        "Forward and backward in float32 for every run (bfloat16 weights upcast); loss evaluated in float32. "
        "*final* is the loss after the last step, *mean* the mean over all steps; *unchanged* the share of "
        "parameter elements the last step left exactly as they were.",
        "",
        "| run | bytes/param (params + state) | final loss | final ÷ reference | mean loss | unchanged | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        final, mean = r["losses"][-1], sum(r["losses"]) / len(r["losses"])
        total = r["param_bytes_per_param"] + r["state_bytes_per_param"]
        lines.append(f"| {r['name']} | {total:.2f} | {final:.3e} | {final / ref['losses'][-1]:.3f} | {mean:.5f} | "
                     f"{100 * r['unchanged_last_step']:.1f}% | {r['seconds']:.1f} |")
    points = _curve_points(cfg["steps"])
    lines += ["", "Loss curve (float32 loss at the given step):", "",
              "| run | " + " | ".join(f"step {p}" for p in points) + " |",
              "|---|" + "---:|" * len(points)]
    for r in result["runs"]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['losses'][p]:.3e}" for p in points) + " |")
    lines += ["", "## Cost of one `apply_updates` on bfloat16 params", "",
              f"float32 updates; median of {cfg['reps']} calls after a warm-up (compiled: after the compile). Eagerly, "
              "stochastic rounding runs some twenty integer passes over the elements (the hash and the bit "
              "trick; many small tensors as one flat buffer); compiled, they fuse into one kernel.", "",
              "| workload | implementation | round to nearest (ms) | stochastic rounding (ms) | ratio |",
              "|---|---|---:|---:|---:|"]
    for name, impl, rtn, sr in result["apply"]:
        lines.append(f"| {name} | {impl} | {rtn:.2f} | {sr:.2f} | {sr / rtn:.1f}× |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run (default 1500)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "low_precision-cpu.md"))
    args = parser.parse_args(argv)
    from .run import write_study  # the suite's record of the machine (date, torch, CPU, threads)

    return write_study("low_precision", argv, args.out, lambda: measure(args.steps, lr=args.lr), markdown)


if __name__ == "__main__":
    sys.exit(main())

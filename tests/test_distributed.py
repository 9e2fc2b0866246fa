"""Sharded (DTensor / FSDP2 / ZeRO) parameters on two CPU ranks give the unsharded numbers.

One launch of two gloo ranks on 127.0.0.1 (``python tests/test_distributed.py`` run twice as
``torch.distributed.run`` would: ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` in the
environment) runs every case below and writes one JSON result per rank; the parent (pytest) waits
with a deadline, kills the ranks if they overrun, and turns each case into its own test.

Each case shards float64 parameters as DTensors on a 1-D mesh of the two ranks (``Shard(0)``, the
FSDP2 layout: uneven row counts, a 1-D vector, a 3-D tensor, and one ``Shard(1)`` matrix), runs an
optimizer for several steps on deterministic gradients (one step leaves a parameter without a
gradient), gathers parameters and state with ``full_tensor()`` and compares them with the
unsharded run of the same optimizer:

* ``compat/<Class>/<impl>``: every compat class of an elementwise torch optimizer and Muon
  (matrices only), each implementation torch has (for-loop, foreach, fused), against
  ``torch.optim``'s unsharded run (parameters and every state tensor); where torch.optim itself
  cannot step the DTensors, compat must fail with its exception and message;
* ``functional/<name>``: ``fo.<name>`` against its own unsharded run (parameters and state) and
  against ``torch.optim``'s unsharded run;
* ``fsdp2/<Class>``: a small model wrapped with ``fully_shard``, forward/backward/step, against the
  unsharded model stepped by ``torch.optim``;
* ``zero/<Class>``: DDP with ``ZeroRedundancyOptimizer(optimizer_class=compat.<Class>)``, each rank
  stepping its partition of the parameters, against the model stepped by ``torch.optim`` in one
  process; the state consolidated on rank 0 against torch's state dict;
* ``dcp/<Class>``: FSDP2 with sharded ``torch.distributed.checkpoint`` checkpoints (model and
  optimizer through ``get_/set_*_state_dict``, ``dcp.save``/``dcp.load`` by both ranks) written by
  torch.optim and resumed by compat and the other way, against torch.optim resumed from its own.

SparseAdam (sparse gradients) and LBFGS (a closure over the whole objective) are not run here.

Adafactor is the case that matters: its step reads the parameter and update norms, which on a
sharded tensor are partial (per-shard) until reduced.

A launch whose rank dies of a signal it raised itself before reporting (an abort inside torch's
or gloo's native code: CI once saw glibc's ``malloc(): unaligned tcache chunk detected`` in one
rank after 13 cases had passed, never reproduced in 60 launches here, 46 of them under glibc's
checking allocator) is launched once more; every case must then pass on the fresh launch, and
the crash is reported as a warning with the crashed rank's log (each rank runs with
``faulthandler`` on, so the log ends with the Python stack of every thread at the abort). A
second crash fails.
A rank that dies of a signal after writing its results (torch 2.11's gloo, now and then, in
``destroy_process_group``: "terminate called without an active exception") lost nothing: that
is a warning, not a relaunch.

Run ``python tests/test_distributed.py`` to print every case's maximum error.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from datetime import timedelta

import pytest
import torch

import functional_optim as fo
from _parity import result_or_error
from _registry import OPTIMIZERS as REGISTRY

WORLD_SIZE = 2
#: the whole launch (two interpreters importing torch, then every case) must end within this
LAUNCH_TIMEOUT_S = 240
#: a collective that waits longer than this raises instead of hanging
COLLECTIVE_TIMEOUT_S = 60
STEPS = 5
DTYPE = torch.float64
ATOL = RTOL = 1e-10

# name -> (shape, shard dim): rows split 3/3 and 3/2, a vector 4/3, a 3-D tensor 2/1, columns 3/3
PARAMS = {
    "w": ((6, 5), 0),
    "v": ((5, 3), 0),
    "b": ((7,), 0),
    "t": ((3, 4, 2), 0),
    "c": ((4, 6), 1),
}
#: at this step "b" gets no gradient (torch's ``p.grad is None``: no update, its state untouched)
NO_GRAD = (2, "b")

#: the six that came first keep the hyperparameters their tolerances were set with; the others
#: take the parity registry's (tests/_registry.py), Muon (matrices only) its own
KWARGS = {
    "Adam": dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "Adadelta": dict(lr=0.5, weight_decay=0.1),
    "Adagrad": dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1),
    "NAdam": dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    # with these gradients the update's RMS exceeds d = 1 on most steps (clipped) but not all
    "Adafactor": dict(lr=1e-2, weight_decay=0.1),
}
KWARGS.update({e.torch_cls.__name__: e.kwargs for e in REGISTRY if e.torch_cls.__name__ not in KWARGS})
FUNCTIONAL = {e.torch_cls.__name__: e.factory for e in REGISTRY}
if hasattr(torch.optim, "Muon"):
    KWARGS["Muon"] = dict(lr=2e-2, weight_decay=0.1)
    FUNCTIONAL["Muon"] = fo.muon
#: state fields of the functional optimizers that torch's ``state[p]`` lacks (fo.SGDState's docstring)
FUNCTIONAL_ONLY_FIELDS = {"SGD": ("step",)}
#: optimizers whose math differs on sharded tensors, so that torch.optim's run on the same DTensors
#: is the reference: Muon's Newton-Schulz iteration runs in bfloat16, and a matmul of sharded
#: matrices adds per-shard partial products in bfloat16, so torch.optim.Muon's sharded run is
#: 0.8e-3 to 1.9e-3 from its unsharded one on these parameters (compat's and fo.muon's sharded
#: runs are the same distances from it)
SHARDED_REFERENCE = {"Muon"}
#: Muon steps matrices only: the 2-D entries of PARAMS (one of them sharded by columns)
MATRICES = sorted(name for name, (shape, _) in PARAMS.items() if len(shape) == 2)


def _impls(cls_name: str) -> tuple:
    """The implementations torch.optim.<cls_name> offers: for-loop and foreach, fused where it has
    it; "default" for a class with no such flags (Muon)."""
    flags = inspect.signature(getattr(torch.optim, cls_name)).parameters
    impls = tuple(impl for impl, flag in (("forloop", "foreach"), ("foreach", "foreach"), ("fused", "fused"))
                  if flag in flags)
    return impls or ("default",)


def _param_names(cls_name: str) -> list:
    return MATRICES if cls_name == "Muon" else sorted(PARAMS)


CASES = (
    [f"compat/{cls}/{impl}" for cls in KWARGS for impl in _impls(cls)]
    + [f"functional/{cls.lower()}" for cls in KWARGS]
    + [f"fsdp2/{cls}" for cls in KWARGS]
    + [f"zero/{cls}" for cls in KWARGS]
    + [f"dcp/{cls}" for cls in KWARGS]
)


# ---------------------------------------------------------------------------------------------
# the parent: launch two ranks, collect their results
# ---------------------------------------------------------------------------------------------
def _gloo_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in names if n in ("lo", "lo0")), None)


def _launch_once(out_dir: str, cases: list, abort_once: str | None) -> tuple[list, str, bool]:
    """One launch: ``(per-rank results, the ranks' logs, whether a rank died of its own signal
    before it reported)``."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD_SIZE),
        OMP_NUM_THREADS="1",
        PYTHONFAULTHANDLER="1",  # a native abort prints every thread's Python stack to the log
        TORCH_DISTRIBUTED_TEST_OUT=out_dir,
        TORCH_DISTRIBUTED_TEST_CASES=",".join(cases),
    )
    if abort_once is not None:
        env["TORCH_DISTRIBUTED_TEST_ABORT_ONCE"] = abort_once
    lo = _loopback_interface()
    if lo is not None:
        env["GLOO_SOCKET_IFNAME"] = lo  # gloo's own connections on the loopback device only
    procs = []
    logs = []
    for rank in range(WORLD_SIZE):
        stale = os.path.join(out_dir, f"rank{rank}.json")
        if os.path.exists(stale):  # from an earlier try
            os.remove(stale)
        log = open(os.path.join(out_dir, f"rank{rank}.log"), "w+")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    timed_out = False
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            break
    if timed_out:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
    output = ""
    for rank, log in enumerate(logs):
        log.seek(0)
        output += f"--- rank {rank} (exit {procs[rank].returncode}) ---\n{log.read()[-6000:]}\n"
        log.close()
    if timed_out:
        output = f"ranks killed after {LAUNCH_TIMEOUT_S} s\n" + output
    results = []
    for rank in range(WORLD_SIZE):
        path = os.path.join(out_dir, f"rank{rank}.json")
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
    # (a rank that reported and then died of a signal tearing down, as torch 2.11's gloo sometimes
    # does in destroy_process_group, "terminate called without an active exception", lost nothing)
    crashed = not timed_out and any(
        p.returncode < 0 and not os.path.exists(os.path.join(out_dir, f"rank{rank}.json"))
        for rank, p in enumerate(procs))
    return results, output, crashed


def launch(out_dir: str, cases: list = CASES, abort_once: str | None = None) -> tuple[dict, str, list]:
    """Run ``cases`` on two ranks; ``({case: {"ok", "max_err", "error"}}, log, crash logs)``:
    the logs of a launch that a rank's own signal ended, launched again once (module docstring).
    ``abort_once``: a path; rank 0 aborts after its cases unless that file exists, which it
    creates first (the test of the relaunch)."""
    crashes: list = []
    for _ in range(3):  # a port taken between choosing and binding it: try another
        results, output, crashed = _launch_once(out_dir, cases, abort_once)
        if crashed and not crashes:
            crashes.append(output)
            continue
        if len(results) == WORLD_SIZE or "Address already in use" not in output:
            break
    merged: dict = {}
    for per_rank in results:
        for case, r in per_rank.items():
            m = merged.setdefault(case, {"ok": True, "max_err": 0.0, "error": ""})
            m["ok"] = m["ok"] and r["ok"]
            m["max_err"] = max(m["max_err"], r["max_err"])
            if r["error"] and not m["error"]:
                m["error"] = r["error"]
    if len(results) < WORLD_SIZE:
        merged = {}
    return merged, output, crashes


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    if not _gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    merged, output, crashes = launch(str(tmp_path_factory.mktemp("distributed")))
    for crash in crashes:
        warnings.warn(f"a rank of the first launch died of a signal; launched again:\n{crash}")
    if merged and "(exit -" in output:
        warnings.warn(f"a rank died of a signal after it had reported its results:\n{output}")
    if not merged:
        pytest.fail(f"the two ranks reported no results:\n{output}")
    return merged, output


@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with the gloo backend is not available")
@pytest.mark.parametrize("case", CASES)
def test_sharded_matches_unsharded(launched, case):
    from _versions import dtensor_sharding_missing

    if case == "compat/Adafactor/foreach" and dtensor_sharding_missing("_foreach_rsqrt_"):
        pytest.skip(f"torch {torch.__version__}'s DTensor has no sharding rule for aten._foreach_rsqrt_, which "
                    "torch.optim.Adafactor(foreach=True) calls as compat's foreach step does")
    results, output = launched
    r = results.get(case)
    assert r is not None, f"{case}: no result (the ranks stopped before it):\n{output}"
    assert r["ok"], f"{case}: max error {r['max_err']:.3g}\n{r['error']}"


@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with the gloo backend is not available")
def test_a_launch_a_rank_aborted_is_launched_again(tmp_path):
    case = "compat/SGD/forloop"
    marker = str(tmp_path / "aborted")
    merged, output, crashes = launch(str(tmp_path), [case], abort_once=marker)
    assert len(crashes) == 1 and "(exit -6)" in crashes[0], crashes
    assert "Fatal Python error: Aborted" in crashes[0], crashes[0]  # faulthandler's stack dump
    assert merged[case]["ok"], output  # from the second launch, which nothing asked to abort


# ---------------------------------------------------------------------------------------------
# the ranks
# ---------------------------------------------------------------------------------------------
def _full_param(name: str) -> torch.Tensor:
    shape, _ = PARAMS[name]
    g = torch.Generator().manual_seed(1000 + sorted(PARAMS).index(name))
    return torch.randn(shape, generator=g, dtype=DTYPE)


def _full_grads(step: int) -> dict:
    """Deterministic gradients, growing with the step (so Adafactor's RMS clipping engages)."""
    grads = {}
    for i, name in enumerate(sorted(PARAMS)):
        if (step, name) == NO_GRAD:
            grads[name] = None
            continue
        shape, _ = PARAMS[name]
        g = torch.Generator().manual_seed(10_000 * (step + 1) + i)
        grads[name] = torch.randn(shape, generator=g, dtype=DTYPE) * (1 + step) + 0.1 * step
    return grads


def _shard(mesh, name: str, t: torch.Tensor):
    from torch.distributed.tensor import Shard, distribute_tensor

    return distribute_tensor(t, mesh, [Shard(PARAMS[name][1])])


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


class _Compare:
    """Collect max errors of gathered sharded results against unsharded ones."""

    def __init__(self):
        self.max_err = 0.0
        self.errors: list = []

    def __call__(self, label: str, actual, expected) -> None:
        actual, expected = _full(actual), _full(expected)
        if expected is None or actual is None:
            if (expected is None) != (actual is None):
                self.errors.append(f"{label}: {actual!r} vs {expected!r}")
            return
        actual = torch.as_tensor(actual).double()
        expected = torch.as_tensor(expected).double()
        if actual.shape != expected.shape:
            self.errors.append(f"{label}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}")
            return
        err = (actual - expected).abs()
        self.max_err = max(self.max_err, err.max().item() if err.numel() else 0.0)
        bad = err > ATOL + RTOL * expected.abs()
        if bad.any():
            self.errors.append(f"{label}: max error {err.max().item():.3g}")


def _impl_kwargs(impl: str) -> dict:
    return {"forloop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True),
            "default": {}}[impl]


def _run_optim(cls, kwargs: dict, mesh=None, names=None):
    """``cls`` (compat or torch.optim) over PARAMS (or ``names`` of them), sharded if ``mesh``;
    ``(params, state)``."""
    params = {}
    for name in names or sorted(PARAMS):
        t = _full_param(name)
        params[name] = torch.nn.Parameter(_shard(mesh, name, t) if mesh is not None else t)
    opt = cls(list(params.values()), **kwargs)
    for step in range(STEPS):
        for name, g in _full_grads(step).items():
            if name not in params:
                continue
            if g is not None and mesh is not None:
                g = _shard(mesh, name, g)
            params[name].grad = g
        opt.step()
    return params, {name: opt.state[p] for name, p in params.items()}


def _case_compat(cls_name: str, impl: str, mesh, check) -> None:
    import compat

    kwargs = dict(KWARGS[cls_name], **_impl_kwargs(impl))
    names = _param_names(cls_name)
    run_torch = lambda: _run_optim(getattr(torch.optim, cls_name), kwargs, mesh, names)  # noqa: E731
    if impl == "fused":
        # torch's fused kernels need a DTensor sharding strategy (Adagrad's has none in torch
        # 2.13): where torch.optim cannot step sharded params, compat must fail the same way
        torch_error = result_or_error(run_torch)[1]
        if torch_error is not None:
            compat_error = result_or_error(lambda: _run_optim(getattr(compat, cls_name), kwargs, mesh, names))[1]
            assert compat_error == torch_error, f"torch.optim: {torch_error}\ncompat: {compat_error}"
            return
    result, compat_error = result_or_error(lambda: _run_optim(getattr(compat, cls_name), kwargs, mesh, names))
    if compat_error is not None:  # acceptable only as torch.optim's own failure on these DTensors
        torch_error = result_or_error(run_torch)[1]
        assert compat_error == torch_error, f"torch.optim: {torch_error}\ncompat: {compat_error}"
        return
    params, state = result
    reference_mesh = mesh if cls_name in SHARDED_REFERENCE else None
    ref_params, ref_state = _run_optim(getattr(torch.optim, cls_name), kwargs, reference_mesh, names)
    for name in names:
        check(f"param {name}", params[name].detach(), ref_params[name].detach())
        assert set(state[name]) == set(ref_state[name]), (name, set(state[name]), set(ref_state[name]))
        for key, ref in ref_state[name].items():
            check(f"state {name}.{key}", state[name][key], ref)


def _case_functional(fn_name: str, mesh, check) -> None:
    import functional_optim as fo
    from functional_optim.tree import is_empty

    torch_name = {name.lower(): name for name in KWARGS}[fn_name]
    kwargs, names = KWARGS[torch_name], _param_names(torch_name)
    opt = FUNCTIONAL[torch_name](**kwargs)

    def run(sharded: bool):
        params = {n: _shard(mesh, n, _full_param(n)) if sharded else _full_param(n) for n in names}
        state = opt.init(params)
        for step in range(STEPS):
            grads = {n: None if g is None else (_shard(mesh, n, g) if sharded else g)
                     for n, g in _full_grads(step).items() if n in params}
            updates, state = opt.update(grads, state, params)
            params = fo.apply_updates(params, updates)
        return params, state

    sharded_reference = torch_name in SHARDED_REFERENCE
    params, state = run(True)
    # the unsharded functional run: the reference, unless the math differs sharded (Muon)
    ref_params, ref_state = (params, state) if sharded_reference else run(False)
    torch_params, torch_state = _run_optim(getattr(torch.optim, torch_name), kwargs,
                                           mesh if sharded_reference else None, names)
    for name in names:
        if not sharded_reference:
            check(f"param {name} vs functional", params[name], ref_params[name])
        check(f"param {name} vs torch.optim", params[name], torch_params[name].detach())
        for field in state._fields:
            leaf, ref_leaf = getattr(state, field), getattr(ref_state, field)
            if is_empty(leaf) or is_empty(ref_leaf):
                assert is_empty(leaf) == is_empty(ref_leaf), field
                continue
            if is_empty(leaf[name]):
                assert is_empty(ref_leaf[name]) and field not in torch_state[name], (field, name)
                continue
            if not sharded_reference:
                check(f"state {name}.{field} vs functional", leaf[name], ref_leaf[name])
            if field in FUNCTIONAL_ONLY_FIELDS.get(torch_name, ()):
                assert field not in torch_state[name], (field, name)
                continue
            check(f"state {name}.{field} vs torch.optim", leaf[name], torch_state[name][field])


def _model(cls_name: str):
    torch.manual_seed(0)
    bias = cls_name != "Muon"  # Muon steps matrices only
    return torch.nn.Sequential(
        torch.nn.Linear(5, 6, bias=bias, dtype=DTYPE), torch.nn.Tanh(), torch.nn.Linear(6, 3, bias=bias, dtype=DTYPE)
    )


def _train_side_by_side(runs, steps=range(STEPS)) -> None:
    """A step of each ``(model, optimizer)`` per entry of ``steps``, on the same batches (the same
    on every rank, so an averaged gradient is the single-process one)."""
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 5, generator=g, dtype=DTYPE), torch.randn(8, 3, generator=g, dtype=DTYPE)
        for model, opt in runs:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()


def _case_fsdp2(cls_name: str, mesh, check) -> None:
    """fully_shard a model (params Shard(0), grads reduce-scattered) against the model unsharded."""
    from torch.distributed.fsdp import fully_shard

    import compat

    kwargs = KWARGS[cls_name]
    sharded, ref = _model(cls_name), _model(cls_name)
    for model in (sharded, ref) if cls_name in SHARDED_REFERENCE else (sharded,):
        _fully_shard(model, mesh)
    opt = getattr(compat, cls_name)(sharded.parameters(), **kwargs)
    ref_opt = getattr(torch.optim, cls_name)(ref.parameters(), **kwargs)
    _train_side_by_side(((sharded, opt), (ref, ref_opt)))
    for (name, p), ref_p in zip(sharded.named_parameters(), ref.parameters()):
        check(f"param {name}", p.detach(), ref_p.detach())
        for key, value in ref_opt.state[ref_p].items():
            check(f"state {name}.{key}", opt.state[p][key], value)


def _fully_shard(model, mesh):
    """FSDP2 over each linear layer and the whole model (parameters ``Shard(0)``)."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _case_dcp(cls_name: str, mesh, check) -> None:
    """FSDP2 + ``torch.distributed.checkpoint``: a sharded checkpoint of the model and of the
    optimizer (``get_model_state_dict`` / ``get_optimizer_state_dict``, ``dcp.save`` by both
    ranks) written by torch.optim.X is resumed by compat.X (``dcp.load``, ``set_*_state_dict``), and
    one written by compat.X by torch.optim.X; both go on as torch.optim.X resumed from its own.
    Where torch.optim.X cannot step the sharded model (Adafactor squares a partial norm in place,
    Rprop's for-loop writes through a mask), compat.X resumed from its own checkpoint goes on as
    compat.X run without the interruption."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    import compat

    kwargs, half = KWARGS[cls_name], STEPS // 2
    folder = os.path.join(os.environ["TORCH_DISTRIBUTED_TEST_OUT"], "dcp", cls_name)

    def trained(module):
        model = _fully_shard(_model(cls_name), mesh)
        opt = getattr(module, cls_name)(model.parameters(), **kwargs)
        _train_side_by_side([(model, opt)], range(half))
        return model, opt

    def resumed(module, checkpoint: str):
        model = _fully_shard(_model(cls_name), mesh)
        opt = getattr(module, cls_name)(model.parameters(), **kwargs)
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        dcp.load(state, checkpoint_id=checkpoint)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
        return model, opt

    def save(module) -> None:
        model, opt = trained(module)
        dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
                 checkpoint_id=os.path.join(folder, module.__name__))

    save(compat)
    try:
        save(torch.optim)
    except (RuntimeError, NotImplementedError):  # torch.optim.X on these DTensors (the same on both ranks)
        uninterrupted = trained(compat)
        runs, labels = [uninterrupted, resumed(compat, os.path.join(folder, "compat"))], ["compat from compat's"]
        _train_side_by_side(runs[:1], range(half, STEPS))
        _train_side_by_side(runs[1:], range(half, STEPS))
    else:
        dist.barrier()
        runs = [resumed(torch.optim, os.path.join(folder, "torch.optim")),  # the reference
                resumed(compat, os.path.join(folder, "torch.optim")), resumed(torch.optim, os.path.join(folder, "compat"))]
        labels = ["compat from torch.optim's", "torch.optim from compat's"]
        _train_side_by_side(runs, range(half, STEPS))
    (ref, ref_opt), *others = runs
    for label, (model, opt) in zip(labels, others):
        for (name, p), ref_p in zip(model.named_parameters(), ref.parameters()):
            check(f"{label} checkpoint: param {name}", p.detach(), ref_p.detach())
            assert set(opt.state[p]) == set(ref_opt.state[ref_p]), (label, name)
            for key, value in ref_opt.state[ref_p].items():
                check(f"{label} checkpoint: state {name}.{key}", opt.state[p][key], value)


def _case_zero(cls_name: str, mesh, check) -> None:
    """DDP over a model whose parameters ``ZeroRedundancyOptimizer(optimizer_class=compat.X)``
    partitions (each rank steps its part with compat.X, then broadcasts it), against the model
    stepped by torch.optim.X in one process; the state consolidated on rank 0 against torch's."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    import compat

    kwargs = KWARGS[cls_name]
    model, ref = _model(cls_name), _model(cls_name)
    ddp = DistributedDataParallel(model)
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=getattr(compat, cls_name), **kwargs)
    ref_opt = getattr(torch.optim, cls_name)(ref.parameters(), **kwargs)
    _train_side_by_side(((ddp, opt), (ref, ref_opt)))
    for (name, p), ref_p in zip(model.named_parameters(), ref.parameters()):
        check(f"param {name}", p.detach(), ref_p.detach())
    opt.consolidate_state_dict(to=0)
    if dist.get_rank() != 0:
        return
    state, ref_state = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert sorted(state) == sorted(ref_state), (sorted(state), sorted(ref_state))
    for index, entry in ref_state.items():
        assert set(state[index]) == set(entry), (index, set(state[index]), set(entry))
        for key, value in entry.items():
            check(f"state {index}.{key}", state[index][key], value)


def _run_case(case: str, mesh, check) -> None:
    kind, name, *rest = case.split("/")
    if kind == "compat":
        _case_compat(name, rest[0], mesh, check)
    elif kind == "functional":
        _case_functional(name, mesh, check)
    elif kind == "zero":
        _case_zero(name, mesh, check)
    elif kind == "dcp":
        _case_dcp(name, mesh, check)
    else:
        _case_fsdp2(name, mesh, check)


def _worker() -> None:
    import traceback

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo", rank=rank, world_size=world,
        init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    out = {}
    start = time.monotonic()
    try:
        for case in os.environ["TORCH_DISTRIBUTED_TEST_CASES"].split(","):
            check = _Compare()
            case_start = time.monotonic()
            try:
                _run_case(case, mesh, check)
                error = "\n".join(check.errors)
            except Exception:  # reported to the parent; the other rank fails the same way (SPMD)
                error = traceback.format_exc(limit=-6)
            out[case] = {"ok": not error, "max_err": check.max_err, "error": error}
            print(f"rank {rank} {case}: max error {check.max_err:.3g} in {time.monotonic() - case_start:.2f} s"
                  f"{'  FAIL' if error else ''}", flush=True)
        abort_once = os.environ.get("TORCH_DISTRIBUTED_TEST_ABORT_ONCE")
        if abort_once is not None and rank == 0 and not os.path.exists(abort_once):
            open(abort_once, "w").close()
            os.abort()
    finally:
        print(f"rank {rank}: {len(out)} cases in {time.monotonic() - start:.1f} s", flush=True)
        with open(os.path.join(os.environ["TORCH_DISTRIBUTED_TEST_OUT"], f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
        dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" in os.environ:
        _worker()
    else:  # print every case's maximum error
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            merged, log, crashes = launch(d)
        for crash in crashes:
            print(f"a rank of the first launch died of a signal; launched again:\n{crash}")
        if not merged:
            print(log)
            sys.exit(1)
        for case in CASES:
            r = merged.get(case, {"ok": False, "max_err": float("nan"), "error": "no result"})
            print(f"{case:34s} max error {r['max_err']:.3g}  {'ok' if r['ok'] else 'FAIL'}")
            if not r["ok"]:
                print("    " + r["error"].strip().replace("\n", "\n    "))
        sys.exit(0 if all(merged.get(c, {}).get("ok") for c in CASES) else 1)

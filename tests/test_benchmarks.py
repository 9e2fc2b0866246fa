"""The benchmark suite's own code: discovery of the optimizers beyond torch.optim, one tiny
timed block against a reference package, the compiled-step children's failure rows, the report."""

import argparse
import importlib.util

import pytest
import torch

from benchmarks import compile_study, registry, report, report_beyond, run, workloads

BEYOND_NAMES = {"Lion", "Lamb", "Lars", "AdaBelief", "Adan", "ADOPT", "AdEMAMix", "AdamWScheduleFree",
                "SGDScheduleFree", "Prodigy", "MuonWithAdamW", "SOAP", "SophiaH"}


@pytest.fixture(autouse=True)
def _no_bandwidth_probe(monkeypatch):
    """bench_block re-measures the bandwidth on 128 MiB buffers; the floor is not under test here."""
    monkeypatch.setattr(run, "bandwidth", lambda device, reps=9: {"copy": 1e10, "add": 1e10, "best": 1e10})


def _tiny(seed=0) -> workloads.Workload:
    """Two matrices and a vector (Muon + AdamW routes both ways), with fixed gradients."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(8, 4), (4,), (3, 5)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen).mul_(0.1) for s in shapes]
    return workloads.Workload("tiny", params, grads)


def _args(*extra):
    return run.parse_args(["--no-compile", "--reps", "3", "--warmup", "1", *extra])


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def test_beyond_torch_specs_have_a_reference_and_no_torch_class():
    assert {s.name for s in registry.BEYOND_TORCH} == BEYOND_NAMES
    names = [s.name.lower() for s in registry.ALL_SPECS]
    assert len(names) == len(set(names))
    for spec in registry.BEYOND_TORCH:
        assert spec.beyond_torch and spec.torch_cls is None and not spec.foreach and not spec.has_fused
        assert "." in spec.reference.path
    assert not any(s.beyond_torch for s in registry.SPECS)


def test_discover_finds_the_new_optimizers_that_exist_in_this_checkout():
    found, notes = registry.discover(group="beyond-torch")
    by_name = {o.name: o for o in found}
    for spec in registry.BEYOND_TORCH:
        if _module_exists(f"compat.{spec.module}"):
            assert spec.name in by_name, notes
    for name in ("Lion", "Lamb", "Prodigy", "MuonWithAdamW", "AdamWScheduleFree"):
        assert by_name[name].compat_cls is not None and by_name[name].functional is not None
    assert by_name["MuonWithAdamW"].reference_cls.__name__ == "MuonAndAdamW"  # always there: torch's own
    assert not any(o.spec.beyond_torch for o in registry.discover(group="torch")[0])


def test_discover_by_name_and_unknown_names():
    (lion,), _ = registry.discover(["lion"])
    assert lion.name == "Lion"
    with pytest.raises(SystemExit, match=r"\['Adam'\] in group 'beyond-torch'"):
        registry.discover(["Adam"], group="beyond-torch")
    with pytest.raises(SystemExit, match=r"\['NoSuchOptimizer'\] in group 'all'"):
        registry.discover(["Lion", "NoSuchOptimizer"])
    assert [o.name for o in registry.discover(["Adam", "lion"])[0]] == ["Adam", "Lion"]


def test_missing_reference_package_skips_only_the_reference_rows(monkeypatch):
    spec = next(s for s in registry.BEYOND_TORCH if s.name == "Lion")
    missing = registry.Reference("no_such_package_xyz.Lion")
    monkeypatch.setattr(registry, "BEYOND_TORCH", (registry.dataclasses.replace(spec, reference=missing),))
    monkeypatch.setattr(registry, "ALL_SPECS", registry.SPECS + registry.BEYOND_TORCH)
    (opt,), notes = registry.discover(["Lion"])
    assert opt.reference_cls is None
    assert any("reference/no_such_package_xyz.Lion rows skipped" in n and "not installed" in n for n in notes)
    rows = run.bench_block(opt, _tiny(), torch.device("cpu"), _args(), 1e10, [])
    assert {(r["family"], r["impl"]) for r in rows} == {("compat", "default"), ("functional", "eager")}
    assert all(r["reference_label"] == "no_such_package_xyz.Lion" and "vs_reference_bitwise" not in r for r in rows)


def test_one_block_against_lion_pytorch():
    pytest.importorskip("lion_pytorch")
    (opt,), _ = registry.discover(["Lion"])
    notes: list = []
    rows = run.bench_block(opt, _tiny(), torch.device("cpu"), _args(), 1e10, notes)
    by = {report_beyond.column(r): r for r in rows}
    assert set(by) == {"reference", "compat/default", "functional/eager"}, notes
    assert by["reference"]["impl"] == "lion_pytorch.Lion" and "vs_reference_bitwise" not in by["reference"]
    for label in ("compat/default", "functional/eager"):
        row = by[label]
        assert row["median_ms"] > 0 and row["state_bytes"] == by["reference"]["state_bytes"]
        # Lion's sign step: equal to lion_pytorch up to a few ulps of the parameters
        assert row["vs_reference_max_abs_diff"] < 1e-6
    text = report.markdown({"machine": run.machine_info(torch.device("cpu")) | {"loadavg_end": None},
                            "command": "test", "args": {"reps": 3, "warmup": 1}, "bandwidth": {
                                "copy": 1e10, "add": 1e10, "best": 1e10}, "rows": rows, "notes": notes,
                            "workloads": {"tiny": "tiny: 3 tensors"}, "wall_s": 1.0})
    assert "## Beyond torch.optim: against their reference packages" in text
    assert "`lion_pytorch.Lion`" in text and "## Targets" not in text


def test_schedule_free_reference_steps_on_the_workload_gradients():
    """schedulefree divides p.grad in place: without getting the gradients back before each step,
    the reference would step on other gradients than compat and the functional step."""
    pytest.importorskip("schedulefree")
    (opt,), _ = registry.discover(["AdamWScheduleFree"])
    rows = run.bench_block(opt, _tiny(), torch.device("cpu"), _args(), 1e10, [])
    for row in rows:
        if row["family"] != "reference":
            assert row["vs_reference_max_abs_diff"] < 1e-6, row


def test_compiled_steps_that_fail_or_time_out_are_rows_and_notes(monkeypatch):
    (opt,), _ = registry.discover(["MuonWithAdamW"])
    answers = iter([{"timed_out": True, "timeout_s": 5.0}, {"error": "torch._dynamo.exc.Unsupported: oops"}])
    monkeypatch.setattr(compile_study, "run_child", lambda *a, **k: next(answers))
    notes: list = []
    args = argparse.Namespace(compile_timeout=5.0, reps=3, warmup=1)
    rows = run.compiled_steps_in_children(opt, _tiny(), torch.device("cpu"), args, notes)
    assert [r["family"] for r in rows] == ["reference", "compat"]
    assert rows[0]["failed"].startswith("timed out") and rows[1]["failed"].startswith("did not compile")
    assert len(notes) == 2
    by = {"reference": {"median_ms": 2.0}, "reference/compiled-step": rows[0]}
    assert report_beyond._cell(rows[0], by) == "timed out" and report_beyond._cell(rows[1], by) == "did not compile"
    eager = {"impl": "compiled-step", "in_child": True, "graphs": 0, "median_ms": 3.0, "reference_label": "x.Y",
             "baseline": "reference/x.Y", "baseline_median_ms": 2.0}
    assert report_beyond._cell(eager, by) == "1.50× (ran eagerly: 0 graphs)"
    assert report_beyond._cell({**eager, "graphs": 15}, by) == "1.50× (15 graphs)"


def test_hessian_workload_reaches_sophia_h_reference():
    pytest.importorskip("pytorch_optimizer")
    found, _ = registry.discover(["SophiaH"])
    if not found:
        pytest.skip("SophiaH not in this checkout")
    work = workloads.with_hessian(_tiny())
    assert [h.shape for h in work.step_inputs["hessian"]] == [p.shape for p in work.params]
    assert all(bool((h >= 0).all()) for h in work.step_inputs["hessian"])
    from benchmarks.candidates import optim_for

    ref = optim_for(found[0], work, "reference", "pytorch_optimizer.SophiaH")
    ref.step()  # without the estimate the reference would need gradients with a graph (create_graph=True)
    assert all(torch.isfinite(p).all() for p in ref.params())


def test_file_stem_names_the_group_and_the_name_option():
    machine = {"device": "cpu"}
    assert report.file_stem({"machine": machine, "args": {"group": "beyond-torch"}}) == "cpu-beyond-torch"
    assert report.file_stem({"machine": machine, "args": {"group": "all", "quick": True}}) == "cpu-quick"
    assert report.file_stem({"machine": machine, "args": {"name": "mine"}}) == "mine"
    assert _args("--beyond-torch").group == "beyond-torch" and _args().group == "all"


def _hparams_kind(ms: float, first_call: int, recompiles: int) -> dict:
    return {"median_ms": ms, "graphs": first_call + recompiles, "first_call_graphs": first_call,
            "recompiles": recompiles, "first_call_s": 1.0}


@pytest.mark.parametrize("float_kind, tensor_kind, met", [
    # Dynamo's restart at the first call (2 graphs, none after) is not a recompile on a new value
    ((1, 0), (2, 0), True),
    ((1, 1), (1, 0), False),  # the float kind recompiled when the value changed
    ((1, 0), (1, 1), False),
])
def test_hparams_target_counts_recompiles_after_the_first_call(float_kind, tensor_kind, met):
    result = {"machine": {"device": "cpu"}, "rows": [],
              "hparams_probe": {"transformer": {"float": _hparams_kind(10.0, *float_kind),
                                                "tensor": _hparams_kind(10.3, *tensor_kind)}}}
    (line,) = [row for row in report.targets_section(result).splitlines() if row.startswith("| 3.")]
    assert line.endswith("| met |") == met, line
    assert f"tensor 10.3 ms ({tensor_kind[0]} graph(s) at the first call, {tensor_kind[1]} recompile(s) after)" in line


def test_hparams_probe_splits_first_call_graphs_from_recompiles():
    """A changing tensor lr compiles only at the first call; a changing float lr recompiles once
    (Dynamo specializes the float first, then makes it dynamic)."""
    from benchmarks import hparams_probe

    import functional_optim as fo

    out = hparams_probe.measure(fo.sgd, _tiny(), torch.device("cpu"), reps=2, kwargs={"lr": 0.1})
    assert out["tensor"]["recompiles"] == 0 and out["tensor"]["first_call_graphs"] >= 1
    assert out["float"]["graphs"] == out["float"]["first_call_graphs"] + out["float"]["recompiles"]


@pytest.mark.parametrize("mode,chunk,lists,counters", [("opaque", 3, 1, False), ("opaque", 0, 2, True),
                                                     ("traced", 0, 2, True)])
def test_compile_floor_steps_compute_the_eager_step(mode, chunk, lists, counters):
    from benchmarks import compile_floor

    result = compile_floor.measure(8, chunk, mode, reps=1, lists=lists, counters=counters)
    assert result["graph_inputs"] == 8 * (2 + lists + counters) + 1
    assert result["first_call_s"] >= 0 and result["step_ms"] > 0
    assert result["max_abs_diff"] < 1e-6


def test_eager_overhead_floor_computes_what_the_functional_step_computes(capsys):
    """The floor does the functional SGD step's work and no less: after the same steps its
    parameters are the functional step's, bit for bit; the checks-off step is the checked one's."""
    from benchmarks import eager_overhead

    work = workloads.make("many-small", torch.device("cpu"))
    functional, unchecked, floor = (eager_overhead.functional(work), eager_overhead.functional(work, checked=False),
                                    eager_overhead.floor(work))
    for _ in range(3):
        functional(), unchecked(), floor()
    expected = functional.box["params"]
    for got in (unchecked.box["params"], floor.box["handed_out"][2]):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert eager_overhead.definition_module.check_state is not eager_overhead._nothing  # patches undone
    eager_overhead.main(["--reps", "2"])
    rows = capsys.readouterr().out.splitlines()
    assert [r.split("  ")[0] for r in rows[2:]] == ["torch/foreach", "functional", "functional, no checks", "floor"]


def test_loop_host_candidates_step_alike_and_restore_the_chunk_size(capsys):
    import compat.optimizer as compat_optimizer
    from benchmarks import loop_host

    before = compat_optimizer.LOOP_CHUNK_NUMEL
    for name in ("Adam", "SGD", "ASGD"):
        us, bitwise = loop_host.compare(name, n_params=5, reps=2, warmup=1)
        assert bitwise and set(us) == set(loop_host.CANDIDATES) and all(v > 0 for v in us.values())
    assert compat_optimizer.LOOP_CHUNK_NUMEL == before
    loop_host.main(["--optimizers", "Adagrad", "--params", "3", "--reps", "2"])
    assert "Adagrad" in capsys.readouterr().out

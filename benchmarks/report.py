"""Markdown tables, a PNG plot and the raw JSON of one benchmark run."""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from . import report_beyond
from .bitwise import STEPS as BITWISE_STEPS
from .tables import TOLERANCE, _index, _label, _mb, _ms, _ratio, _table, _x  # noqa: F401 (re-exported)

IMPL_ORDER = ["torch/for-loop", "torch/foreach", "torch/fused", "compat/for-loop", "compat/foreach",
              "compat/fused", "functional/eager", "functional/compiled", "functional/compiled-inplace",
              "torch/compiled-step", "compat/compiled-step"]
OURS = ("compat/for-loop", "compat/foreach", "compat/fused", "functional/eager", "functional/compiled",
        "functional/compiled-inplace")


def _default_label(device: str) -> str:
    return "torch/foreach" if device.startswith("cuda") else "torch/for-loop"


def _default_row(by: dict, device: str) -> Optional[dict]:
    """torch's default implementation in one block: its for-loop where torch has no other (Muon, SparseAdam, LBFGS)."""
    return by.get(_default_label(device)) or by.get("torch/for-loop")


def summary_sections(result: dict) -> list:
    rows, device = result["rows"], result["machine"]["device"]
    default = _default_label(device)
    idx = _index(rows)
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    out = []

    # (1) compat vs torch per implementation
    body = []
    for (w, o), by in idx.items():
        cells = [_x(_ratio(by.get(f"compat/{i}"), by.get(f"torch/{i}")), mark=True)
                 for i in ("for-loop", "foreach", "fused")]
        body.append([w, o] + cells)
    out.append("## compat vs torch.optim, same implementation\n\n"
               f"Median step time of `compat.X` ÷ `torch.optim.X` with the same flags, measured interleaved "
               f"(✓ within {TOLERANCE:.0%}, ✗ slower than that).\n\n"
               + _table(["workload", "optimizer", "for-loop", "foreach", "fused"], body))

    # (2) default vs our loop/foreach, bitwise foreach == for-loop
    body = []
    for (w, o), by in idx.items():
        ref = _default_row(by, device)
        ours = {k: v for k, v in by.items() if k in OURS and not k.startswith("functional/compiled")}
        fastest = min(ours, key=lambda k: ours[k]["median_ms"]) if ours else None
        fe = by.get("compat/foreach", {}).get("foreach_bitwise_vs_own_for_loop")
        tfe = by.get("torch/foreach", {}).get("foreach_bitwise_vs_own_for_loop")
        body.append([w, o, _ms(ref and ref["median_ms"]),
                     _ms(by.get("compat/for-loop", {}).get("median_ms")),
                     _ms(by.get("compat/foreach", {}).get("median_ms")),
                     f"{fastest} ({_x(_ratio(ours[fastest], ref))})" if fastest else "–",
                     {True: "yes", False: "no", None: "–"}[fe], {True: "yes", False: "no", None: "–"}[tfe]])
    out.append(f"## torch's default ({default}) vs our paths\n\n"
               "Milliseconds per step. *Fastest eager path* is the fastest of compat for-loop/foreach/fused and "
               "functional eager (ratio against torch's default; its for-loop where torch has no other "
               "implementation). *Bitwise* compares parameters after the same "
               "steps: foreach against for-loop of the same family.\n\n"
               + _table(["workload", "optimizer", f"{default} ms", "compat/for-loop ms", "compat/foreach ms",
                         "fastest eager path", "compat foreach ≡ for-loop", "torch foreach ≡ for-loop"], body))

    # (2b) bitwise over flag sets
    body = []
    yn = {True: "yes", False: "**no**", None: "–"}
    for b in result.get("bitwise", []):
        flags = ", ".join(f"{k}={v}" for k, v in b["flags"].items()) or "defaults"
        if b.get("error"):
            body.append([b["optimizer"], flags, b["dtype"], yn[b["torch_foreach_eq_loop"]], f"error: {b['error']}", "", ""])
            continue
        body.append([b["optimizer"], flags, b["dtype"], yn[b["torch_foreach_eq_loop"]],
                     yn[b.get("compat_foreach_eq_loop")], yn[b.get("compat_loop_eq_torch_loop")],
                     yn[b.get("compat_foreach_eq_torch_foreach")]])
    if body:
        out.append("## Bitwise: foreach vs for-loop on this device\n\n"
                   f"Parameters and every state tensor after {BITWISE_STEPS} steps with random gradients on small "
                   "tensors of mixed shapes, compared with `torch.equal` (yes = bit for bit).\n\n"
                   + _table(["optimizer", "flags", "dtype", "torch foreach ≡ torch for-loop",
                             "compat foreach ≡ compat for-loop", "compat for-loop ≡ torch for-loop",
                             "compat foreach ≡ torch foreach"], body))

    # (3) compiled functional vs torch fused Adam
    body = []
    for (w, o), by in idx.items():
        for kind in ("functional/compiled", "functional/compiled-inplace"):
            comp = by.get(kind)
            if comp is None:
                continue
            adam_fused = by.get("torch/fused") if o == "Adam" else by.get("reference/Adam-fused")
            best_torch = min((v for k, v in by.items() if k.startswith("torch/")), key=lambda v: v["median_ms"],
                             default=None)
            body.append([w, o, kind.split("/")[1], _ms(comp["median_ms"]), _ms(adam_fused and adam_fused["median_ms"]),
                         _x(_ratio(comp, adam_fused)),
                         f"{_label(best_torch)} {_ms(best_torch['median_ms'])}" if best_torch else "–",
                         _x(_ratio(comp, best_torch)), _ms(comp["floor_ms"])])
    if body:
        out.append("## Compiled functional step vs torch's fused Adam\n\n"
                   "`torch.compile(update + apply_updates)` (compiled) and `torch.compile(functional_optim.step_)` "
                   "(compiled-inplace) of each optimizer against `torch.optim.Adam(fused=True)` "
                   "timed interleaved in the same block, and against the fastest torch.optim implementation of that "
                   "optimizer.\n\n"
                   + _table(["workload", "optimizer", "functional step", "compiled ms", "torch Adam fused ms",
                             "÷ Adam fused", "fastest torch (ms)", "÷ fastest torch", "floor ms"], body))

    # (4) compile time
    body = []
    for r in rows:
        if r.get("graphs") is not None:
            dyn = r["first_call_s"] - r["inductor_s"]
            body.append([r["workload"], r["optimizer"], _label(r), f"{r['first_call_s']:.1f}", r["graphs"],
                         r["fx_nodes"], f"{dyn:.1f}", f"{r['inductor_s']:.1f}", _ms(r["median_ms"]), "–"])
    for s in result.get("compile_study", []):
        name = f"{s['target']}"
        wname = s.get("workload", "many-small").split(":")[0]
        if s.get("timed_out"):
            body.append([wname, s["optimizer"], name, f"> {s['timeout_s']:.0f} (timed out)"] + ["–"] * 6)
        elif s.get("error"):
            body.append([wname, s["optimizer"], name, f"failed: {s['error'][:80]}"] + ["–"] * 6)
        else:
            dyn = s["first_call_s"] - s["inductor_s"]
            body.append([wname + f" ({s['tensors']} tensor{'s' if s['tensors'] > 1 else ''})",
                         s["optimizer"], name, f"{s['first_call_s']:.1f}", s["graphs"], s["fx_nodes"],
                         f"{dyn:.1f}", f"{s['inductor_s']:.1f}", _ms(s["step_ms"]),
                         f"{s['reference']} {_ms(s['reference_step_ms'])}"])
    if body:
        out.append("## Compile time\n\n"
                   "*First call* is the first call of the compiled step (tracing + Inductor + one step) with a cold "
                   "Inductor cache; *dynamo* = first call − Inductor. *FX nodes* counts the graph(s) handed to "
                   "Inductor. `functional-flat` runs the same optimizer on the parameters grouped into one flat "
                   "buffer per dtype/device (one tensor of the same total size).\n\n"
                   + _table(["workload", "optimizer", "step", "first call s", "graphs", "FX nodes", "dynamo s",
                             "inductor s", "step ms", "torch default (same process) ms"], body))
    return out


ELEMENTWISE = ("Adam", "AdamW", "Adagrad", "Adadelta", "NAdam")


def _verdict(failures: list, measured: bool = True) -> str:
    if not measured:
        return "not measured in this run"
    return "met" if not failures else "**not met**"


def _cells(items: list) -> str:
    return ", ".join(f"{name} {_x(r)}" for name, r in items) or "–"


def targets_section(result: dict) -> str:
    """Issue 10's targets, each evaluated from this run's numbers (met / not met / not measured)."""
    rows, device = result["rows"], result["machine"]["device"]
    cuda = device.startswith("cuda")
    idx = _index(rows)
    body = []

    def over(pairs, limit):  # (name, ratio) pairs above ``limit``
        return [(n, r) for n, r in pairs if r is not None and r > limit]

    eager = [(f"{o} {w}", _ratio(by.get("functional/eager"), by.get("torch/foreach")))
             for (w, o), by in idx.items() if w in ("transformer", "many-small")]
    eager = [(n, r) for n, r in eager if r is not None]
    bad = over(eager, 1.3)
    body.append(["1. eager `update` + `apply_updates` ≤ 1.3× torch foreach",
                 f"worst {_cells([max(eager, key=lambda x: x[1])]) if eager else '–'}; above: {_cells(bad)}",
                 _verdict(bad, bool(eager))])

    limit = 1.0 if cuda else 1.1
    compiled = [(f"{o} {w}", _ratio(by.get("functional/compiled"),
                                    by.get("torch/fused") if o == "Adam" else by.get("reference/Adam-fused")))
                for (w, o), by in idx.items() if w in ("transformer", "large") and o in ELEMENTWISE]
    compiled = [(n, r) for n, r in compiled if r is not None]
    bad = over(compiled, limit)
    floors = [(f"{o}", by["functional/compiled"]["floor_ms"] / by["functional/compiled"]["median_ms"])
              for (w, o), by in idx.items() if w == "large" and o in ELEMENTWISE and "functional/compiled" in by]
    low = [(n, f) for n, f in floors if f < 0.8]
    stores = result.get("store_cost")
    note = (f"; on this device an out-of-place store costs {stores['ratio']:.2f}× an in-place one (store probe)"
            if stores and not cuda else "")
    floor_text = ("; large, floor/median: " + ", ".join(f"{n} {f:.0%}" for n, f in floors)) if floors else ""
    body.append([f"2. compiled pure step ≤ {limit}× torch fused Adam"
                 + (" (and ≥ 80% of copy bandwidth on large)" if cuda else ""),
                 f"above: {_cells(bad)}{floor_text}{note}", _verdict(bad + low, bool(compiled))])

    probe = result.get("hparams_probe") or {}
    cells, bad = [], []
    for w, kinds in probe.items():
        ratio = kinds["tensor"]["median_ms"] / kinds["float"]["median_ms"]
        cells.append(f"{w}: float {_ms(kinds['float']['median_ms'])} ms ({_graphs_text(kinds['float'])}), "
                     f"tensor {_ms(kinds['tensor']['median_ms'])} ms ({_graphs_text(kinds['tensor'])})")
        if max(ratio, 1 / ratio) > 1.1 or _recompiles(kinds["float"]) or _recompiles(kinds["tensor"]):
            bad.append(w)
    body.append(["3. float and tensor hparams cost the same compiled; a new value never recompiles",
                 "; ".join(cells) or "–", _verdict(bad, bool(probe))])

    study = [s for s in result.get("compile_study", []) if s.get("target") == "functional"
             and s.get("workload", "many-small").startswith("many-small")]
    if study:
        s = study[0]
        first = s.get("first_call_s")
        text = (f"> {s['timeout_s']:.0f} s (timed out)" if s.get("timed_out")
                else f"failed: {s.get('error', '')[:80]}" if s.get("error") else f"{first:.1f} s")
        ok = not s.get("timed_out") and not s.get("error") and first is not None and first <= 60
        body.append(["4. first call of the compiled step on many-small ≤ 60 s", text, _verdict([] if ok else [s])])
    else:
        body.append(["4. first call of the compiled step on many-small ≤ 60 s", "–", _verdict([], False)])

    steps = []
    for (w, o), by in idx.items():
        ours, theirs = by.get("compat/compiled-step"), by.get("torch/compiled-step")
        if ours and theirs:
            steps.append((f"{o} {w}", _ratio(ours, theirs), ours.get("graphs"), theirs.get("graphs")))
    bad = [(n, r) for n, r, g, tg in steps if r > 1.1 or (g or 0) > (tg or 0)]
    body.append(["5. `torch.compile(compat.X.step)` ≤ 1.1× `torch.compile(torch.optim.X.step)`, "
                 "no more graphs than torch's (float lr, StepLR)",
                 ", ".join(f"{n} {_x(r)} ({g} vs {tg} graphs)" for n, r, g, tg in steps) or "–",
                 _verdict(bad, bool(steps))])

    ada = [(f"{w} {i}", _ratio(by.get(f"compat/{i}"), by.get(f"torch/{i}")))
           for (w, o), by in idx.items() if o == "Adafactor" for i in ("for-loop", "foreach")]
    ada = [(n, r) for n, r in ada if r is not None]
    ada_compiled = [(w, _ratio(by.get("functional/compiled"), by.get("reference/Adam-fused")))
                    for (w, o), by in idx.items() if o == "Adafactor"]
    ada_compiled = [(n, r) for n, r in ada_compiled if r is not None]
    bad = over(ada, 1.05) + over(ada_compiled, 1.5)
    body.append(["6. Adafactor: compat ≤ 1.05× torch per implementation; compiled ≤ 1.5× torch fused Adam",
                 f"compat: {_cells(ada)}; compiled ÷ Adam fused: {_cells(ada_compiled) if ada_compiled else 'not compiled in this run'}",
                 _verdict(bad, bool(ada))])

    same = [(f"{o} {w} {i}", _ratio(by.get(f"compat/{i}"), by.get(f"torch/{i}")))
            for (w, o), by in idx.items() if o != "Adafactor" for i in ("for-loop", "foreach", "fused")]
    same = [(n, r) for n, r in same if r is not None]
    bad = over(same, 1 + TOLERANCE)
    body.append(["7. compat ≤ 1.05× torch, same implementation", f"above: {_cells(bad)}", _verdict(bad, bool(same))])
    return ("## Targets (issue 10)\n\n"
            "Each target evaluated from this run's medians (ratios of implementations timed interleaved in the "
            "same block). CUDA targets need a CUDA run; a CPU report says which it cannot show. The measured "
            "cause of each target not met, and what would remove it: README.md, *Performance*, *Where the "
            "targets are not met, and the measured cause*.\n\n"
            + _table(["target", "measured", "result"], body))


def workload_section(result: dict, workload: str) -> str:
    rows = [r for r in result["rows"] if r["workload"] == workload]
    device = result["machine"]["device"]
    default = _default_label(device)
    idx = _index(rows)
    labels = [l for l in IMPL_ORDER if any(l in by for by in idx.values())]
    pivot = []
    for (w, o), by in idx.items():
        first = next(iter(by.values()))
        name = f"{o} ({first['derived']})" if first.get("derived") else o
        pivot.append([name] + [_ms(by[l]["median_ms"]) if l in by else "–" for l in labels]
                     + [_ms(first["floor_ms"])])
    detail = []
    for (w, o), by in idx.items():
        ref = _default_row(by, device)
        for l, r in by.items():
            same = by.get(f"torch/{r['impl']}") if r["family"] != "torch" else None
            bit = r.get("vs_torch_default_bitwise")
            eq = "≡" if bit else ("–" if bit is None else f"{r['vs_torch_default_max_abs_diff']:.1e}")
            iqr = f"{_ms(r['q1_ms'])}–{_ms(r['q3_ms'])}" if r.get("q1_ms") is not None else "–"
            detail.append([o, l, _ms(r["median_ms"]), iqr, _x(_ratio(r, ref)), _x(_ratio(r, same)),
                           "–" if r["floor_ms"] is None else f"{r['floor_ms'] / r['median_ms']:.0%}",
                           _mb(r["step_peak_bytes"]), _mb(r["state_bytes"]),
                           f"{r['first_call_s']:.2f}", eq])
    return (f"## {result['workloads'][workload]}\n\n"
            "Median milliseconds per step (last column: bandwidth floor; – where none applies). An optimizer "
            "named with a note in brackets runs on what the note says, derived from this workload "
            "(`benchmarks/README.md`). Ratios to torch's default use its for-loop where torch has no other "
            "implementation.\n\n"
            + _table(["optimizer"] + labels + ["floor"], pivot)
            + "\n\n<details><summary>Details</summary>\n\n"
            + _table(["optimizer", "implementation", "median ms", "IQR ms", f"÷ {default}", "÷ torch same impl",
                      "floor / median", "step peak MiB", "state MiB", "first call s", f"params vs {default}"], detail)
            + "\n\n</details>")


def markdown(result: dict) -> str:
    m, bw = result["machine"], result["bandwidth"]
    head = [
        f"# Optimizer step benchmark — {m.get('gpu', m['cpu'])} ({m['device']})",
        "",
        f"- date: {m['date']}; torch {m['torch']}; Python {m['python']}; {m['platform']}",
        f"- CPU: {m['cpu']}, {m['cpu_count']} cores, torch threads: {m['torch_threads']}"
        + (f"; GPU: {m['gpu']}" if "gpu" in m else ""),
        f"- 1-min load average: {m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end "
        f"(above {m['cpu_count']} means other processes competed for the CPUs)",
        f"- measured bandwidth: copy {bw['copy'] / 1e9:.1f} GB/s, add {bw['add'] / 1e9:.1f} GB/s "
        f"(floor = bytes a step must touch ÷ {bw['best'] / 1e9:.1f} GB/s)",
        f"- command: `{result['command']}`; reps {result['args']['reps']} (interleaved), "
        f"warmup {result['args']['warmup']}; wall time {result['wall_s']:.0f} s",
        f"- memory: *step peak* = {'torch.cuda.max_memory_allocated during one step above what was live before' if m['device'].startswith('cuda') else 'peak of bytes allocated by torch’s CPU allocator during one step (torch.profiler memory events), above what was live before'}; "
        "*state* = bytes of the optimizer's persistent state tensors",
        "",
        "How to read these tables: `benchmarks/README.md`.",
    ]
    if result["notes"]:
        head += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    # optimizers torch.optim has: the sections against torch; those beyond it: against their references
    twins = dict(result, rows=[r for r in result["rows"] if not report_beyond.is_beyond(r)])
    sections = []
    if twins["rows"]:
        workloads = list(dict.fromkeys(r["workload"] for r in twins["rows"]))
        sections += [targets_section(twins)] + summary_sections(twins) + [workload_section(twins, w) for w in workloads]
    sections += report_beyond.sections(result)
    return "\n".join(head) + "\n\n" + "\n\n".join(sections) + "\n"


def plot(result: dict, path: str) -> bool:
    """Grouped bars (log scale) of median step time per optimizer and implementation, floor as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r.get("median_ms") is not None]
    # one panel per workload for the optimizers torch.optim has, one per workload for those beyond it
    # (columns: the reference package class, compat, functional ...), each label in one colour throughout
    panels = []
    for beyond, order, key in ((False, IMPL_ORDER, _label), (True, report_beyond.ORDER, report_beyond.column)):
        part = [r for r in rows if report_beyond.is_beyond(r) == beyond]
        for w in dict.fromkeys(r["workload"] for r in part):
            panels.append((w, beyond, order, key, [r for r in part if r["workload"] == w]))
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, 4.2 * len(panels)), squeeze=False)
    palette = list(dict.fromkeys(IMPL_ORDER + report_beyond.ORDER))
    colors = plt.get_cmap("tab20")
    for ax, (w, beyond, order, key, part) in zip(axes[:, 0], panels):
        idx: dict = {}
        for r in part:
            idx.setdefault(r["optimizer"], {})[key(r)] = r
        labels = [l for l in order if any(l in by for by in idx.values())]
        width = 0.85 / len(labels)
        for j, l in enumerate(labels):
            xs = [i + (j - (len(labels) - 1) / 2) * width for i, o in enumerate(idx) if l in idx[o]]
            ys = [idx[o][l]["median_ms"] for o in idx if l in idx[o]]
            name = "reference (package class)" if beyond and l == "reference" else l
            ax.bar(xs, ys, width, label=name, color=colors(palette.index(l) % 20))
        floors = [(i, next(iter(by.values()))["floor_ms"]) for i, by in enumerate(idx.values())]
        for j, (i, floor) in enumerate((i, f) for i, f in floors if f is not None):
            ax.hlines(floor, i - 0.45, i + 0.45, colors="black", linestyles="--",
                      label="bandwidth floor" if j == 0 else None)
        if beyond:  # long class names
            ax.set_xticks(range(len(idx)), list(idx), fontsize=8, rotation=20, ha="right")
        else:
            ax.set_xticks(range(len(idx)), list(idx))
        ax.set_yscale("log")
        ax.set_ylabel("ms / step (median)")
        ax.set_title(result["workloads"][w] + (" — beyond torch.optim, against reference packages" if beyond else ""))
        ax.grid(axis="y", which="both", alpha=0.3)
    legend = {}
    for ax in axes[:, 0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), ncol=5, fontsize=8, loc="lower center")
    m = result["machine"]
    fig.suptitle(f"{m.get('gpu', m['cpu'])} ({m['device']}, {m['torch_threads']} threads), torch {m['torch']}, "
                 f"{m['date']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def file_stem(result: dict) -> str:
    """``--name`` if given, else ``<device>`` (``cpu``, ``cuda-<gpu>``), ``-beyond-torch`` for a run of
    only that group, ``-quick`` for a ``--quick`` run, then ``-<tag>`` for a ``--tag``."""
    args = result["args"]
    if args.get("name"):
        return args["name"]
    m = result["machine"]
    name = "cpu" if m["device"] == "cpu" else "cuda-" + re.sub(r"[^a-z0-9]+", "-", m.get("gpu", "gpu").lower())
    return (name.strip("-") + ("-beyond-torch" if args.get("group") == "beyond-torch" else "")
            + ("-quick" if args.get("quick") else "") + (f"-{args['tag']}" if args.get("tag") else ""))


def write(result: dict, out_dir: str, with_plot: bool = True) -> list:
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, file_stem(result))
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    paths = [stem + ".md", stem + ".json"]
    if with_plot and plot(result, stem + ".png"):
        paths.append(stem + ".png")
    return paths


def _recompiles(kind: dict) -> int:
    """Graphs a hparams-probe kind compiled after its first call (a report from before the probe
    told them apart: every graph after the first)."""
    return kind["recompiles"] if "recompiles" in kind else kind["graphs"] - 1


def _graphs_text(kind: dict) -> str:
    if "recompiles" not in kind:
        return f"{kind['graphs']} graphs"
    return f"{kind['first_call_graphs']} graph(s) at the first call, {kind['recompiles']} recompile(s) after"


def merge(base: dict, rerun: dict) -> dict:
    """``base`` with the blocks (workload, optimizer) that ``rerun`` measured again replaced by
    ``rerun``'s; each block's ratios stay measured side by side within one run, and a note names
    the rerun's command."""
    redone = {(r["workload"], r["optimizer"]) for r in rerun["rows"]}
    merged = dict(base)
    merged["rows"] = [r for r in base["rows"] if (r["workload"], r["optimizer"]) not in redone] + rerun["rows"]
    blocks = ", ".join(sorted({o for _, o in redone}))
    rerun_note = (f"blocks of {blocks} re-measured by `{rerun['command']}` ({rerun['machine']['date']}, "
                  f"load average {rerun['machine'].get('loadavg_start')} at start, "
                  f"{rerun['machine'].get('loadavg_end')} at end)")
    merged["notes"] = list(dict.fromkeys([rerun_note] + base["notes"] + rerun["notes"]))
    merged["wall_s"] = base["wall_s"] + rerun["wall_s"]
    merged["hparams_probe"] = {**base.get("hparams_probe", {}), **rerun.get("hparams_probe", {})}
    return merged


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m benchmarks.report RESULTS.json [RERUN.json]\n"
                         "  re-renders RESULTS' .md and .png; with RERUN, its blocks replace RESULTS' same blocks first")
    with open(sys.argv[1]) as f:
        saved = json.load(f)
    if len(sys.argv) == 3:
        with open(sys.argv[2]) as f:
            saved = merge(saved, json.load(f))
    print("\n".join(write(saved, os.path.dirname(os.path.abspath(sys.argv[1])))))

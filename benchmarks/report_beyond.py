"""The report's sections for the optimizers beyond torch.optim, each against its reference package.

Their rows carry ``reference_label`` (``"pytorch_optimizer.Lamb"``, ``"lion_pytorch.Lion"``,
``"torch.optim.Muon+AdamW"`` ...): the block's reference row is ``reference/<that label>``, and
every ratio here divides by its median. ``torch.compile(X.step)`` rows (``reference/compiled-step``,
``compat/compiled-step``) come from a child process that also timed the reference's eager step
(``baseline``); their ratio is taken against that, and a row that did not compile or timed out
has no times and says why (``failed``).
"""

from __future__ import annotations

from typing import Optional

from .tables import _index, _label, _mb, _ms, _ratio, _table, _x

#: Columns of the beyond-torch tables and plot; ``reference`` is the block's reference package class.
ORDER = ["reference", "compat/default", "functional/eager", "functional/compiled", "functional/compiled-inplace",
         "reference/compiled-step", "compat/compiled-step", "reference/Adam-fused"]
_STEPS = ("reference/compiled-step", "compat/compiled-step")


def is_beyond(row: dict) -> bool:
    """The row belongs to an optimizer beyond torch.optim (its block has a reference package)."""
    return bool(row.get("reference_label"))


def column(row: dict) -> str:
    """The row's column in :data:`ORDER`: ``reference`` for the reference class itself, else its label."""
    if row["family"] == "reference" and row["impl"] == row.get("reference_label"):
        return "reference"
    return _label(row)


def _blocks(rows: list) -> dict:
    """``(workload, optimizer) -> {column: row}``."""
    return {key: {column(r): r for r in by.values()} for key, by in _index(rows).items()}


def _vs_reference(row: Optional[dict], by: dict) -> Optional[float]:
    """``row`` ÷ the reference: its child's own reference timing for a compiled ``X.step``, else the block's."""
    if row is None or row.get("median_ms") is None:
        return None
    if row.get("in_child"):
        if row.get("baseline") != f"reference/{row['reference_label']}":
            return None
        return row["median_ms"] / row["baseline_median_ms"]
    return _ratio(row, by.get("reference"))


def _cell(row: Optional[dict], by: dict) -> str:
    if row is not None and row.get("failed"):
        return "timed out" if row["failed"].startswith("timed out") else "did not compile"
    text = _x(_vs_reference(row, by))
    if row is not None and row.get("graphs") is not None and row.get("impl", "").startswith("compiled"):
        # a compiled step's graphs; 0: Dynamo compiled nothing and the step ran eagerly
        text += " (ran eagerly: 0 graphs)" if row["graphs"] == 0 else f" ({row['graphs']} graph{'s' * (row['graphs'] > 1)})"
    return text


def _params(row: dict) -> str:
    bit = row.get("vs_reference_bitwise")
    return "≡" if bit else ("–" if bit is None else f"{row['vs_reference_max_abs_diff']:.1e}")


def summary_section(result: dict) -> str:
    rows = [r for r in result["rows"] if is_beyond(r)]
    body = []
    for (w, o), by in _blocks(rows).items():
        ref = by.get("reference")
        name = next(iter(by.values()))["reference_label"]
        body.append([w, o, f"`{name}`" if ref else f"`{name}` (not installed)", _ms(ref and ref["median_ms"])]
                    + [_cell(by.get(c), by) for c in ORDER[1:7]])
    return ("## Beyond torch.optim: against their reference packages\n\n"
            "Optimizers torch.optim does not have, each against the class it reproduces (*reference*), all "
            "constructed with that class's defaults (the compat classes take its signature; the functional "
            "factories default to the same values). Median step time ÷ the reference's, measured "
            "interleaved in the same block; `X.step` compiled (`torch.compile(X.step)`, float lr, StepLR): in its "
            "own process, against the reference's eager step timed there. Compiled steps name their graph count "
            "(one per step: it recompiled as the scheduler changed the lr; 0: Dynamo compiled nothing and the "
            "step ran eagerly). *did not compile* / *timed out*: see the compile table and the notes. "
            "`benchmarks/README.md` says what each column runs.\n\n"
            + _table(["workload", "optimizer", "reference", "reference ms", "compat ÷ ref", "functional eager ÷ ref",
                      "functional compiled ÷ ref", "compiled-inplace ÷ ref", "compiled reference step ÷ ref",
                      "compiled compat step ÷ ref"], body))


def compile_section(result: dict) -> Optional[str]:
    rows = [r for r in result["rows"] if is_beyond(r) and (r.get("graphs") is not None or r.get("failed"))]
    if not rows:
        return None
    body = []
    for (w, o), by in _blocks(rows).items():
        for c in ORDER:
            r = by.get(c)
            if r is None:
                continue
            if r.get("failed"):
                body.append([w, o, c, r["failed"]] + ["–"] * 6)
                continue
            ref_ms = r.get("baseline_median_ms") if r.get("in_child") else None
            body.append([w, o, c, f"{r['first_call_s']:.1f}", r["graphs"], r["fx_nodes"],
                         f"{r['first_call_s'] - r['inductor_s']:.1f}", f"{r['inductor_s']:.1f}", _ms(r["median_ms"]),
                         _ms(ref_ms) if r.get("in_child") else "(block)"])
    return ("## Beyond torch.optim: compile time\n\n"
            "*First call*: tracing + Inductor + one step, cold Inductor cache; *dynamo* = first call − Inductor. "
            "`functional/compiled` and `compiled-inplace` compile in the benchmark's process (fullgraph); "
            "the compiled `X.step` rows each in a child process (graph breaks allowed, killed after "
            "`--compile-timeout` s), which also times the reference's eager step (*reference ms, same process*).\n\n"
            + _table(["workload", "optimizer", "step", "first call s", "graphs", "FX nodes", "dynamo s", "inductor s",
                      "step ms", "reference ms, same process"], body))


def workload_section(result: dict, workload: str) -> str:
    rows = [r for r in result["rows"] if is_beyond(r) and r["workload"] == workload]
    blocks = _blocks(rows)
    cols = [c for c in ORDER if any(c in by for by in blocks.values())]
    pivot, detail = [], []
    for (w, o), by in blocks.items():
        first = next(iter(by.values()))
        name = f"{o} ({first['derived']})" if first.get("derived") else o
        pivot.append([name, f"`{first['reference_label']}`"]
                     + [_ms(by[c]["median_ms"]) if c in by and by[c].get("median_ms") is not None
                        else ("–" if c not in by else _cell(by[c], by)) for c in cols]
                     + [_ms(first["floor_ms"])])
        for c, r in by.items():
            if r.get("median_ms") is None:
                detail.append([o, c, r.get("failed", "–")] + ["–"] * 8)
                continue
            iqr = f"{_ms(r['q1_ms'])}–{_ms(r['q3_ms'])}" if r.get("q1_ms") is not None else "–"
            detail.append([o, c, _ms(r["median_ms"]), iqr, _x(_vs_reference(r, by)),
                           "–" if r["floor_ms"] is None else f"{r['floor_ms'] / r['median_ms']:.0%}",
                           _mb(r.get("step_peak_bytes")), _mb(r.get("state_bytes")), f"{r['first_call_s']:.2f}",
                           _params(r), "child" if r.get("in_child") else "block"])
    return (f"## Beyond torch.optim — {result['workloads'][workload]}\n\n"
            "Median milliseconds per step (last column: bandwidth floor). *params vs reference*: after the same "
            "number of steps from the same start (≡ bitwise equal, else max |difference|; `fo.lamb` and `fo.lars` "
            "are optax's LAMB and LARS, whose math differs from pytorch_optimizer's by design).\n\n"
            + _table(["optimizer", "reference class"] + cols + ["floor"], pivot)
            + "\n\n<details><summary>Details</summary>\n\n"
            + _table(["optimizer", "implementation", "median ms", "IQR ms", "÷ reference", "floor / median",
                      "step peak MiB", "state MiB", "first call s", "params vs reference", "timed in"], detail)
            + "\n\n</details>")


def sections(result: dict) -> list:
    """Every beyond-torch section of the report (none when the run has no such rows)."""
    rows = [r for r in result["rows"] if is_beyond(r)]
    if not rows:
        return []
    out = [summary_section(result)]
    comp = compile_section(result)
    if comp:
        out.append(comp)
    out += [workload_section(result, w) for w in dict.fromkeys(r["workload"] for r in rows)]
    return out

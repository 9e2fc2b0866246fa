"""Formatting helpers shared by the report's sections: labels, numbers, ratios, markdown tables."""

from __future__ import annotations

from typing import Optional

TOLERANCE = 0.05  # compat within 5% of torch.optim


def _label(row: dict) -> str:
    return f"{row['family']}/{row['impl']}"


def _ms(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _mb(n: Optional[int]) -> str:
    return "–" if n is None else f"{n / 2**20:.1f}"


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _index(rows: list) -> dict:
    """``(workload, optimizer) -> {label: row}``."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["workload"], r["optimizer"]), {})[_label(r)] = r
    return out


def _ratio(a: Optional[dict], b: Optional[dict]) -> Optional[float]:
    """Median of ``a`` over median of ``b`` (None if either is missing or was not timed)."""
    if a is None or b is None or a.get("median_ms") is None or b.get("median_ms") is None:
        return None
    return a["median_ms"] / b["median_ms"]


def _x(r: Optional[float], mark: bool = False) -> str:
    if r is None:
        return "–"
    text = f"{r:.2f}×"
    if mark:
        text += " ✓" if r <= 1 + TOLERANCE else " ✗"
    return text

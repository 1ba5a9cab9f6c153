"""Tables: the metric tables every report, artifact and comparison shows, and the one formatter
(plain text, markdown, HTML) they are written with."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..methods.registry import method_pairs
from ..metrics.catalogue import higher_is_better, variables
from ..metrics.stats import compare, conditions, summary

ALPHA = 0.05


def fmt(v: float | None, digits: int = 3) -> str:
    """A number as tables print it: `digits` significant digits, an en dash for NaN."""
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def fmt_p(p: float) -> str:
    return "–" if not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def esc(v: Any) -> str:
    return html.escape(str(v))


@dataclass
class Table:
    """Rows of cells under a header. `right`: the columns aligned right in text (all but the
    first by default). HTML cells are HTML already where `raw` (escape text with `esc`)."""

    header: list[str]
    rows: list[list[str]]
    right: set[int] | None = None
    raw: bool = False

    def text(self) -> str:
        widths = [
            max(len(str(c)) for c in col) for col in zip(self.header, *self.rows, strict=True)
        ]
        right = self.right if self.right is not None else set(range(1, len(self.header)))

        def line(cells):
            return "  ".join(
                f"{c:>{w}}" if i in right else f"{c:<{w}}"
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        return "\n".join(line(r) for r in [self.header, *self.rows])

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in self.rows])

    def html(self, cls: str = "") -> str:
        cell = (lambda c: str(c)) if self.raw else esc
        head = "".join(f"<th>{esc(h)}</th>" for h in self.header)
        head = f"<thead><tr>{head}</tr></thead>" if self.header else ""
        body = "".join(
            "<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


@dataclass
class MetricTable:
    """One metric under one condition: per method n, mean and standard error, and the paired
    comparisons of `stats.compare` (Holm across this table's pairs)."""

    metric: str
    condition: str
    methods: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    values: dict[str, np.ndarray] = field(repr=False)  # method -> per-sample values

    def method(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.methods if r["method"] == name), None)

    def mean(self, name: str) -> float:
        return (self.method(name) or {"mean": np.nan})["mean"]

    @property
    def dim(self) -> str:
        """The metric's own dimension ("" for none): attack, radius, threshold, layer."""
        return self.condition.partition("=")[0]

    @property
    def label(self) -> str:
        """The condition's label ("" for none), e.g. topk@grad or 8."""
        return self.condition.partition("=")[2]

    @property
    def arrow(self) -> str:
        return "↑" if higher_is_better(self.metric) else "↓"

    @property
    def title(self) -> str:
        return variables()[self.metric].title


def metric_tables(metrics) -> list[MetricTable]:
    """Every metric and condition of a `metrics` Dataset, its statistics computed afresh."""
    names = [str(v) for v in metrics["method"].values]
    pairs = method_pairs(names)
    out = []
    for var, condition, sub in conditions(metrics):
        values = {m: sub.sel({"method": m}).values for m in names}
        rows = [{"method": m, **summary(values[m])} for m in names]
        out.append(
            MetricTable(
                var,
                condition,
                [r for r in rows if r["n"]],
                compare(values.__getitem__, pairs, higher_is_better(var)),
                values,
            )
        )
    return out


def headline(tables: list[MetricTable], methods: list[str]) -> list[dict[str, Any]]:
    """Per method, the mean of each headline metric (a metric with a numeric condition, e.g.
    retrieval by radius, at its largest), with `*` where it beats a reference with
    Holm-corrected p < 0.05."""
    chosen = [t for t in tables if variables()[t.metric].headline]
    numeric = [t for t in chosen if t.label and _number(t.label) is not None]
    largest = {t.metric: t for t in sorted(numeric, key=lambda t: _number(t.label))}
    chosen = [t for t in chosen if t not in numeric or largest[t.metric] is t]
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for t in chosen:
            r = t.method(m)
            better = any(p["method"] == m and p["p_holm"] < ALPHA for p in t.pairs)
            row[_column(t)] = "" if r is None else fmt(r["mean"]) + (" *" if better else "")
        rows.append(row)
    return rows


def _number(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def _column(t: MetricTable) -> str:
    return " ".join(part for part in (t.metric, t.label, t.arrow) if part)


def headline_table(rows: list[dict[str, Any]]) -> Table | None:
    """The headline as a table (None when no headline metric is stored)."""
    if not rows or len(rows[0]) == 1:
        return None
    header = list(rows[0])
    return Table(header, [[str(r[h]) for h in header] for r in rows])


def comparisons_table(table: dict[str, np.ndarray], limit: int = 40) -> Table:
    """The stored comparisons (`stats`), most significant first."""
    order = np.argsort(np.nan_to_num(table["p_holm"], nan=2.0), kind="stable")[:limit]
    header = ["metric", "condition", "method", "vs", "mean", "ref", "diff", "p_holm"]
    rows = [
        [
            str(table["metric"][i]),
            str(table["condition"][i]),
            str(table["method"][i]),
            str(table["reference"][i]),
            fmt(table["mean"][i], 4),
            fmt(table["reference_mean"][i], 4),
            fmt(table["mean_difference"][i]),
            fmt(table["p_holm"][i]),
        ]
        for i in order
    ]
    return Table(header, rows, right=set(range(4, 8)))


def artifact_rows(tables: list[MetricTable]) -> dict[str, list[dict[str, Any]]]:
    """Per metric, one record per method and condition: mean, standard error and its paired
    comparisons (Holm-corrected p-values), for table artifacts."""
    out: dict[str, list[dict[str, Any]]] = {}
    for t in tables:
        for r in t.methods:
            pairs = [p for p in t.pairs if p["method"] == r["method"]]
            out.setdefault(t.metric, []).append(
                {
                    "condition": t.condition,
                    "method": r["method"],
                    "n": r["n"],
                    "mean": _rounded(r["mean"]),
                    "standard_error": _rounded(r["standard_error"]),
                    "compared_with": ", ".join(p["reference"] for p in pairs),
                    "difference": ", ".join(f"{p['mean_difference']:.3g}" for p in pairs),
                    "p_holm": ", ".join(f"{p['p_holm']:.3g}" for p in pairs),
                }
            )
    return out


def _rounded(v: float) -> float | None:
    """4 significant digits; None (JSON null) for NaN."""
    return None if v != v else float(f"{v:.4g}")

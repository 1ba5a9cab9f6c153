"""Audits over time: two audits of one data selection (yesterday's checkpoint and today's),
compared per method, metric and condition with a paired test, and regression thresholds that
gate a release.

A row pairs the samples both stores scored. Its change is current - baseline; its p-value is
the one-sided paired t-test (`stats.paired_test`) of "the current audit is worse" in the
direction the metric favours, Holm-corrected across the methods of one (metric, condition), as
the report's tables are. A row regresses when its metric has a threshold, it worsened by more
than the threshold and the Holm-corrected p-value is below alpha.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import SalauditError
from .evaluate import metric_conditions
from .stats import HIGHER_IS_BETTER, holm, paired_test, summary
from .store import Store

DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Change:
    """One method's metric under one condition, baseline against current."""

    metric: str
    condition: str
    method: str
    baseline: float
    current: float
    change: float  # mean over paired samples of current - baseline
    standard_error: float
    p_value: float  # one-sided: the current audit is worse
    p_holm: float
    n: int
    threshold: float | None
    regressed: bool

    @property
    def worsening(self) -> float:
        return worsening(self.metric, self.change)

    def cells(self) -> list[str]:
        """metric, condition, method, baseline, current, change ± SE, p (Holm), threshold."""
        return [
            self.metric, self.condition, self.method, f"{self.baseline:.4g}",
            f"{self.current:.4g}", f"{self.change:+.4g} ± {self.standard_error:.2g}",
            f"{self.p_holm:.3g}", "" if self.threshold is None else f"{self.threshold:g}",
        ]  # fmt: skip

    @property
    def label(self) -> str:
        return " ".join(p for p in (self.metric, self.condition, self.method) if p)


@dataclass
class Comparison:
    baseline: str
    current: str
    changes: list[Change]
    alpha: float
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regressed]

    def lines(self) -> list[str]:
        """A plain-text table: gated rows first, then the rest."""
        widths = (-22, -20, -16, 9, 9, 19, 9, 9)
        header = ["metric", "condition", "method", "baseline", "current", "change", "p (Holm)"]
        out = [_row([*header, "threshold"], widths)]
        for c in sorted(self.changes, key=lambda c: c.threshold is None):
            out.append(_row(c.cells(), widths) + ("  REGRESSED" if c.regressed else ""))
        return out

    def verdict(self) -> str:
        if not self.regressions:
            gated = sum(c.threshold is not None for c in self.changes)
            return f"no regression ({gated} gated rows of {len(self.changes)})"
        names = "; ".join(
            f"{c.label}: worse by {c.worsening:.4g} > {c.threshold:g} (p_holm {c.p_holm:.3g})"
            for c in self.regressions
        )
        return f"{len(self.regressions)} regression(s): {names}"

    def markdown(self) -> str:
        head = (
            f"# salaudit comparison\n\nBaseline `{self.baseline}`, current `{self.current}`.\n\n"
            f"**{self.verdict()}**\n"
        )
        rows = [c for c in self.changes if c.threshold is not None] or self.changes
        table = [
            "| metric | condition | method | baseline | current | change ± SE | p (Holm) "
            "| threshold | regressed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        table += [
            "| " + " | ".join([*c.cells(), "**yes**" if c.regressed else ""]) + " |" for c in rows
        ]
        notes = "".join(f"\n- {n}" for n in self.notes)
        legend = (
            "\n\nThe change is current − baseline; p is the one-sided paired t-test that the "
            f"current audit is worse, Holm-corrected across methods (alpha {self.alpha:g})."
        )
        return head + "\n" + "\n".join(table) + legend + notes


def _row(cells: list[str], widths: tuple[int, ...]) -> str:
    """Cells padded to `widths` (negative: left-aligned)."""
    return " ".join(
        f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)
    )


def worsening(metric: str, change: float) -> float:
    """How much worse a change (current - baseline) of `metric` is (negative: better)."""
    return -change if HIGHER_IS_BETTER[metric] else change


def check_thresholds(thresholds: dict[str, float]) -> dict[str, float]:
    """Thresholds name known metrics and are not negative."""
    unknown = sorted(set(thresholds) - set(HIGHER_IS_BETTER))
    if unknown:
        raise SalauditError(
            f"threshold for unknown metric(s) {', '.join(unknown)}; valid: "
            + ", ".join(HIGHER_IS_BETTER)
        )
    negative = sorted(m for m, t in thresholds.items() if not t >= 0)
    if negative:
        raise SalauditError(
            f"threshold(s) of {', '.join(negative)} must be >= 0: the largest tolerated "
            "worsening of a method's mean, in the metric's units"
        )
    return thresholds


def metrics_store(url: str, storage_options: dict | None = None) -> Store:
    """The store at `url`, refused with the fix unless it holds metrics."""
    store = Store(url, storage_options)
    if not store.exists():
        raise SalauditError(f"no salaudit store at {url}; run salaudit audit into it first")
    if not store.has("metrics"):
        raise SalauditError(
            f"store {url} holds no metrics; run salaudit evaluate --store {url} (or an audit)"
        )
    return store


def compare_stores(
    baseline: str,
    current: str,
    thresholds: dict[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    storage_options: dict | None = None,
) -> Comparison:
    """Compare the audit in `current` with the one in `baseline` (see the module's doc)."""
    thresholds = check_thresholds(dict(thresholds or {}))
    if not 0 < alpha < 1:
        raise SalauditError(f"alpha {alpha:g} is not a significance level; give one in (0, 1)")
    a, b = metrics_store(baseline, storage_options), metrics_store(current, storage_options)
    data_a, data_b = (s.attrs().get("data_fingerprint") for s in (a, b))
    if data_a != data_b:
        raise SalauditError(
            f"{baseline} and {current} audit different data (fingerprints {data_a} and "
            f"{data_b}); compare two audits of one data selection"
        )
    ma, mb = a.dataset("metrics"), b.dataset("metrics")
    samples = np.intersect1d(ma["sample"].values, mb["sample"].values)
    if samples.size < 2:
        raise SalauditError(
            f"{baseline} and {current} share {samples.size} sample(s); a paired comparison "
            "needs at least 2: audit one data selection (same data, selection and seed)"
        )
    left_out = len(ma["sample"]) + len(mb["sample"]) - 2 * samples.size
    ma, mb = ma.sel(sample=samples), mb.sel(sample=samples)
    tables_a = {(v, c): da for v, c, da in metric_conditions(ma)}
    tables_b = {(v, c): da for v, c, da in metric_conditions(mb)}
    both = {metric for metric, _ in tables_a.keys() & tables_b.keys()}
    missing = sorted(set(thresholds) - both)
    if missing:
        raise SalauditError(
            f"threshold for {', '.join(missing)}, which the two stores do not both hold; "
            "evaluate that metric in both, or drop its threshold"
        )
    changes: list[Change] = []
    for key in (k for k in tables_b if k in tables_a):
        changes += _table(*key, tables_a[key], tables_b[key], thresholds.get(key[0]), alpha)
    notes = [f"{left_out} sample(s) scored in only one store are left out"] if left_out else []
    return Comparison(baseline, current, changes, alpha, notes)


def _table(metric, condition, da_a, da_b, threshold, alpha) -> list[Change]:
    """The changes of every method both tables hold, Holm-corrected across them."""
    methods = [str(m) for m in da_b["method"].values if m in set(da_a["method"].values)]
    rows = []
    for m in methods:
        va, vb = da_a.sel({"method": m}).values, da_b.sel({"method": m}).values
        test = paired_test(vb, va, not HIGHER_IS_BETTER[metric])  # H1: current is worse
        if test["n"]:
            rows.append((m, summary(va)["mean"], summary(vb)["mean"], test))
    out = []
    for (m, mean_a, mean_b, t), p in zip(rows, holm([r[3]["p_value"] for r in rows]), strict=True):
        d = t["mean_difference"]
        regressed = threshold is not None and worsening(metric, d) > threshold and p < alpha
        out.append(
            Change(
                metric,
                condition,
                m,
                mean_a,
                mean_b,
                d,
                t["standard_error"],
                t["p_value"],
                float(p),
                t["n"],
                threshold,
                bool(regressed),
            )  # fmt: skip
        )
    return out

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

from ..errors import SalauditError
from ..metrics.catalogue import check_thresholds, higher_is_better
from ..metrics.stats import conditions, paired_rows
from ..pipeline.spec import DEFAULT_ALPHA, check_alpha
from ..store import schema
from ..store.store import Store
from .tables import Table

HEADER = [
    "metric", "condition", "method", "baseline", "current", "change ± SE", "p (Holm)", "threshold"
]  # fmt: skip


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
        rows = [
            [*c.cells(), "REGRESSED" if c.regressed else ""]
            for c in sorted(self.changes, key=lambda c: c.threshold is None)
        ]
        return Table([*HEADER, ""], rows, right=set(range(3, 8))).text().splitlines()

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
        table = Table(
            [*HEADER, "regressed"], [[*c.cells(), "**yes**" if c.regressed else ""] for c in rows]
        ).markdown()
        notes = "".join(f"\n- {n}" for n in self.notes)
        legend = (
            "\n\nThe change is current − baseline; p is the one-sided paired t-test that the "
            f"current audit is worse, Holm-corrected across methods (alpha {self.alpha:g})."
        )
        return head + "\n" + table + legend + notes


def worsening(metric: str, change: float) -> float:
    """How much worse a change (current - baseline) of `metric` is (negative: better)."""
    return -change if higher_is_better(metric) else change


def metrics_store(url: str, storage_options: dict | None = None) -> Store:
    """The store at `url`, refused with the fix unless it holds metrics."""
    store = Store(url, storage_options)
    if not store.exists():
        raise SalauditError(f"no salaudit store at {url}; run salaudit audit into it first")
    if not store.has(schema.METRICS):
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
    check_alpha(alpha)
    a, b = metrics_store(baseline, storage_options), metrics_store(current, storage_options)
    data_a, data_b = (s.attrs().get("data_fingerprint") for s in (a, b))
    if data_a != data_b:
        raise SalauditError(
            f"{baseline} and {current} audit different data (fingerprints {data_a} and "
            f"{data_b}); compare two audits of one data selection"
        )
    ma, mb = a.dataset(schema.METRICS), b.dataset(schema.METRICS)
    base_a, base_b = (schema.metric_baseline_of(m.attrs) for m in (ma, mb))
    if base_a != base_b:
        raise SalauditError(
            f"{baseline} was scored under the {base_a} metric baseline, {current} under "
            f"{base_b}; compare two audits with one metric_baseline"
        )
    samples = np.intersect1d(ma["sample"].values, mb["sample"].values)
    if samples.size < 2:
        raise SalauditError(
            f"{baseline} and {current} share {samples.size} sample(s); a paired comparison "
            "needs at least 2: audit one data selection (same data, selection and seed)"
        )
    left_out = len(ma["sample"]) + len(mb["sample"]) - 2 * samples.size
    ma, mb = ma.sel(sample=samples), mb.sel(sample=samples)
    tables_a = {(v, c): da for v, c, da in conditions(ma)}
    tables_b = {(v, c): da for v, c, da in conditions(mb)}
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
    """The changes of every method both tables hold, Holm-corrected across them: current
    against baseline, one-sided in the direction "current is worse"."""
    methods = [str(m) for m in da_b["method"].values if m in set(da_a["method"].values)]
    pairs = [
        ({"method": m}, da_b.sel({"method": m}).values, da_a.sel({"method": m}).values)
        for m in methods
    ]
    out = []
    for r in paired_rows(pairs, not higher_is_better(metric)):
        d = r["mean_difference"]
        regressed = (
            threshold is not None and worsening(metric, d) > threshold and r["p_holm"] < alpha
        )
        out.append(
            Change(
                metric,
                condition,
                r["method"],
                r["reference_mean"],
                r["mean"],
                d,
                r["standard_error"],
                r["p_value"],
                r["p_holm"],
                r["n"],
                threshold,
                bool(regressed),
            )  # fmt: skip
        )
    return out

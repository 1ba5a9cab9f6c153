"""Paired statistics (DANCE A19): mean difference, standard error, a one-sided paired t-test in
the direction the metric favours, and Holm's correction across the rows of one table. Every
paired comparison salaudit makes (a method against its reference, an audit against its
baseline) goes through `paired_rows`."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats

from ..errors import SalauditError
from ..methods.registry import method_pairs
from ..store.schema import STATS_NUMBERS, STATS_TEXT
from .catalogue import higher_is_better, variable_names


def paired_test(a, b, higher_is_better: bool) -> dict[str, float | int]:
    """Compare paired per-sample values a (the method) and b (its reference).

    The pairing rule: pairs where either value is NaN are dropped. Returns the mean of a - b,
    its standard error std(a - b, ddof=1) / sqrt(n), the p-value of scipy's one-sided paired
    t-test of H0 "a is not better than b" (alternative "greater" if higher is better, else
    "less") and n, the number of pairs kept. With n < 2 the standard error and p-value are NaN;
    with zero variance of a - b the p-value is scipy's: NaN when every difference is 0, else 0
    (constant differences in the favoured direction) or 1.
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise SalauditError(f"paired values differ in length: {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    d = a - b
    n = int(d.size)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {
            "mean_difference": mean,
            "standard_error": float("nan"),
            "p_value": float("nan"),
            "n": n,
        }
    se = float(d.std(ddof=1) / np.sqrt(n))
    alternative = "greater" if higher_is_better else "less"
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(a, b, alternative=alternative).pvalue)
    return {"mean_difference": mean, "standard_error": se, "p_value": p, "n": n}


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values in the input order: the i-th smallest of m
    becomes max_{j <= i} min(1, (m - j + 1) p_(j)). NaNs stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    order = np.argsort(q, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    ranked = np.empty(m)
    ranked[order] = adjusted
    out[ok] = ranked
    return out


def paired_rows(
    pairs: list[tuple[dict, np.ndarray, np.ndarray]], higher_is_better: bool
) -> list[dict]:
    """One table: per (labels, a, b) with any paired values, the labels, the means of a and b
    (`mean`, `reference_mean`), `paired_test(a, b)` and the Holm-corrected p-value across the
    table's rows (`p_holm`)."""
    rows = []
    for labels, a, b in pairs:
        row = {**labels, "mean": _mean(a), "reference_mean": _mean(b)}
        row |= paired_test(a, b, higher_is_better)
        if row["n"]:
            rows.append(row)
    for row, p in zip(rows, holm([row["p_value"] for row in rows]), strict=True):
        row["p_holm"] = float(p)
    return rows


def compare(
    values_of: Callable[[str], np.ndarray], pairs: list[tuple[str, str]], higher_is_better: bool
) -> list[dict]:
    """`paired_rows` of method pairs: per (method, reference) the comparison of their
    per-sample values `values_of(method)`."""
    labelled = [({"method": m, "reference": r}, values_of(m), values_of(r)) for m, r in pairs]
    return paired_rows(labelled, higher_is_better)


def summary(values) -> dict[str, float | int]:
    """n, mean and standard error std(ddof=1) / sqrt(n) of the non-NaN values (NaN where
    undefined)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    n = int(v.size)
    return {
        "n": n,
        "mean": float(v.mean()) if n else float("nan"),
        "standard_error": float(v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
    }


def _mean(values) -> float:
    """The mean of the non-NaN values (NaN if none)."""
    v = np.asarray(values, dtype=float)
    kept = v[~np.isnan(v)]
    return float(kept.mean()) if kept.size else float("nan")


def conditions(ds):
    """Each stored metric variable of a `metrics` Dataset, in catalogue order, once per label
    of its own dimension: (variable, condition label such as "attack=topk@grad" or "", its
    float64 (sample, method) DataArray). Select a method with .sel({"method": m}): `method` is
    a keyword of .sel."""
    for var in (v for v in variable_names() if v in ds):
        da = ds[var].astype("float64")
        extra = [d for d in da.dims if d not in ("sample", "method")]
        if not extra:
            yield var, "", da
            continue
        for v in da[extra[0]].values:
            yield var, f"{extra[0]}={_label(v)}", da.sel({extra[0]: v})


def _label(v) -> str:
    return f"{float(v):g}" if isinstance(v, float | np.floating) else str(v)


def comparisons(ds) -> dict[str, np.ndarray]:
    """Every (metric, condition, method, reference) comparison of a `metrics` Dataset: one
    `compare` table per metric and condition, over the registry's method pairs; columns as the
    store's `stats` group holds them."""
    pairs = method_pairs([str(v) for v in ds["method"].values])
    rows = []
    for var, label, sub in conditions(ds):
        table = compare(
            lambda m, sub=sub: sub.sel({"method": m}).values, pairs, higher_is_better(var)
        )
        rows += [{"metric": var, "condition": label, **row} for row in table]
    return {
        k: np.asarray([r[k] for r in rows], dtype=object if k in STATS_TEXT else float)
        for k in (*STATS_TEXT, *STATS_NUMBERS)
    }

"""Paired comparisons of methods (DANCE A19): mean difference, standard error, a one-sided
paired t-test in the direction the metric favours, Holm's correction across the pairs of one
table, and the method pairs of METHODS.md."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats

from .errors import SalauditError
from .registry import split_name

# Whether a higher value of a metric is better. The sanity-check similarities (to the maps of
# a randomised model) are better low; the rank similarities between clean and attacked maps
# are better high.
HIGHER_IS_BETTER: dict[str, bool] = {
    "fidelity": False,
    "sensitivity": False,
    "retrieval_adv": True,
    "retrieval_clean": True,
    "r_score": True,
    "deletion": False,
    "preservation": True,
    "loc": True,
    "energy_game": True,
    "positive_percentage": True,
    "concentration": True,
    "box_accuracy": True,
    "spearman": True,
    "topk_intersection": True,
    "sanity_ssim": False,
    "sanity_spearman": False,
    "sanity_spearman_abs": False,
}

# robust method -> the base methods it is compared with
ROBUST_REFERENCES: dict[str, tuple[str, ...]] = {
    "big": ("ig",),
    "agi": ("ig",),
    "bsm": ("grad",),
    "relex": ("grad", "ig", "smoothgrad"),
}


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


def compare(
    values_of: Callable[[str], np.ndarray], pairs: list[tuple[str, str]], higher_is_better: bool
) -> list[dict]:
    """One table: per (method, reference) pair with any paired values, the means, `paired_test`
    and the Holm-corrected p-value across the table's rows. `values_of(method)` gives a
    method's per-sample values."""
    rows = []
    for m, r in pairs:
        a, b = values_of(m), values_of(r)
        row = {"method": m, "reference": r, "mean": _mean(a), "reference_mean": _mean(b)}
        row |= paired_test(a, b, higher_is_better)
        if row["n"]:
            rows.append(row)
    for row, p in zip(rows, holm([row["p_value"] for row in rows]), strict=True):
        row["p_holm"] = float(p)
    return rows


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


def reference_methods(name: str, available: list[str]) -> list[str]:
    """The methods `name` is compared with, among `available`: a decoy-enhanced
    `<gen>-<base>` with `<base>`; `big` and `agi` with `ig`; `bsm` with `grad`; `relex` with
    `grad`, `ig` and `smoothgrad`; anything else with nothing."""
    base, generator, _ = split_name(name)
    refs = (base,) if generator is not None else ROBUST_REFERENCES.get(name, ())
    return [r for r in refs if r in available]


def method_pairs(available: list[str]) -> list[tuple[str, str]]:
    """Every (method, reference) pair among `available`, in the order of `available`."""
    return [(m, r) for m in available for r in reference_methods(m, available)]

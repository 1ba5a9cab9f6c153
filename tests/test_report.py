"""The report: statistics recomputed independently with scipy, every section rendered in
headless Chromium, and sections whose data is missing saying so."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from browser import require_chromium, visit
from PIL import Image
from scipy import stats

from salaudit.flows.cli import main
from salaudit.pipeline.audit import audit_direct
from salaudit.pipeline.spec import parse_spec
from salaudit.report.html import SECTIONS, fmt, write_report

# Every section's data in a few minutes on 2 cores: 6 samples in two shards, a decoy-enhanced
# and a blurred method with their populations kept, the robust methods, an attack on the maps
# and pgd, every metric family (the sanity check included).
FULL = {
    "selection": {"mode": "first", "n": 6},
    "methods": {
        "grad": {},
        "ig": {"n_steps": 8},
        "dance-grad": {},
        "blur-grad": {},
        "relex": {"n_noise": 8, "iterations": 20},
        "bsm": {},
        "big": {"n_steps": 8},
    },
    "decoys": {"dance": {"stride": 3}, "blur": {"stride": 3}},
    "boundary": {"finders": ["pgd"]},
    "keep_decoys": True,
    "attacks": ["topk@grad", "pgd"],
    "attack_params": {"topk": {"steps": 5}, "pgd": {"steps": 3}},
    "radii": [8],
    "metrics": ["all"],
    "shard_size": 3,
}

# METHODS.md, written out again here rather than imported: which way each metric is better,
# and which method is compared with which.
LOWER_IS_BETTER = {"fidelity", "sensitivity", "deletion", "sanity_ssim", "sanity_spearman"}
LOWER_IS_BETTER |= {"sanity_spearman_abs", "road_morf"}  # ROAD MoRF: the prediction should go
ROBUST = {"big": ["ig"], "agi": ["ig"], "bsm": ["grad"], "relex": ["grad", "ig", "smoothgrad"]}
GENERATORS = ("dance-mean", "dance", "blur", "constant", "noise")


def references(method: str, methods: list[str]) -> list[str]:
    for g in GENERATORS:
        if method.startswith(g + "-") and method[len(g) + 1 :] in methods:
            return [method[len(g) + 1 :]]
    return [r for r in ROBUST.get(method, []) if r in methods]


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment, the textbook loop."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("full") / "store")
    audit_direct(parse_spec({**FULL, "store": {"url": url}}), progress=False)
    return url


@pytest.fixture(scope="module")
def full_report(full_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report"
    report = write_report(full_store, str(out))
    return out, report


@pytest.mark.slow
def test_statistics_equal_scipy_on_the_stored_metrics(full_store, full_report):
    out, _ = full_report
    metrics = xr.open_zarr(full_store, group="metrics", chunks=None)
    methods = [str(m) for m in metrics["method"].values]
    means = {(r["metric"], r["condition"], r["method"]): r for r in read_csv(out / "methods.csv")}
    pairs = {
        (r["metric"], r["condition"], r["method"], r["reference"]): r
        for r in read_csv(out / "comparisons.csv")
    }
    page = (out / "index.html").read_text()
    assert "<td>metric baseline</td><td>mean (the data&#x27;s mean colour)</td>" in page
    checked_means = checked_pairs = 0
    for var in metrics.data_vars:
        if str(var).startswith("decoy_validity"):
            continue
        da = metrics[var].astype(float)
        extra = [d for d in da.dims if d not in ("sample", "method")]
        labels = [None] if not extra else list(da[extra[0]].values)
        for label in labels:
            sub = da if label is None else da.sel({extra[0]: label})
            cond = (
                ""
                if label is None
                else f"{extra[0]}={label:g}"
                if isinstance(label, float | np.floating)  # numeric labels (radius, percentage)
                else (f"{extra[0]}={label}")
            )
            for m in methods:
                v = sub.sel({"method": m}).values
                v = v[~np.isnan(v)]
                if v.size == 0:
                    assert (var, cond, m) not in means
                    continue
                row = means[(var, cond, m)]
                assert int(row["n"]) == v.size
                np.testing.assert_allclose(float(row["mean"]), v.mean(), rtol=1e-12)
                if v.size > 1:
                    np.testing.assert_allclose(
                        float(row["standard_error"]), stats.sem(v), rtol=1e-12
                    )
                assert f"{fmt(v.mean())} ± " in page
                checked_means += 1
            table = []
            for m in methods:
                for r in references(m, methods):
                    a, b = sub.sel({"method": m}).values, sub.sel({"method": r}).values
                    keep = ~(np.isnan(a) | np.isnan(b))
                    if keep.sum() < 2:
                        continue
                    alternative = "less" if var in LOWER_IS_BETTER else "greater"
                    test = stats.ttest_rel(a[keep], b[keep], alternative=alternative)
                    d = a[keep] - b[keep]
                    table.append((m, r, d.mean(), stats.sem(d), test.pvalue))
            finite = [t for t in table if np.isfinite(t[4])]
            corrected = dict(
                zip([(m, r) for m, r, *_ in finite], holm([t[4] for t in finite]), strict=True)
            )
            for m, r, diff, se, p in table:
                row = pairs[(var, cond, m, r)]
                np.testing.assert_allclose(float(row["mean_difference"]), diff, rtol=1e-12)
                np.testing.assert_allclose(float(row["standard_error"]), se, rtol=1e-12)
                np.testing.assert_allclose(float(row["p_value"]), p, rtol=1e-10, equal_nan=True)
                if (m, r) in corrected:
                    np.testing.assert_allclose(float(row["p_holm"]), corrected[(m, r)], rtol=1e-10)
                checked_pairs += 1
    assert checked_means > 100 and checked_pairs > 50


@pytest.mark.slow
def test_localisation_means_equal_the_energy_game_of_the_stored_maps(full_store, full_report):
    """EG = sum of the positive channel-summed map inside the box / its sum everywhere (BIG
    appendix B.1), from the maps and boxes, against the report's table."""
    out, _ = full_report
    maps = xr.open_zarr(full_store, group="maps", chunks=None)
    boxes = xr.open_zarr(full_store, group="inputs", chunks=None)["bbox"].values
    means = {
        r["method"]: float(r["mean"])
        for r in read_csv(out / "methods.csv")
        if r["metric"] == "energy_game"
    }
    for m in ("grad", "ig", "dance-grad", "big"):
        positive = np.clip(maps[m].values.sum(1), 0, None)
        inside = np.array(
            [p[y0:y1, x0:x1].sum() for p, (y0, x0, y1, x1) in zip(positive, boxes, strict=True)]
        )
        np.testing.assert_allclose(means[m], np.mean(inside / positive.sum((1, 2))), rtol=1e-5)


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(full_report, tmp_path):
    require_chromium()
    out, report = full_report
    shot = tmp_path / "top.png"
    page = visit((out / "index.html").as_uri(), shot)
    assert page.problems == []
    assert page.section_ids == list(SECTIONS)
    assert len(page.images) >= 15
    assert all(i["complete"] and i["naturalWidth"] > 100 for i in page.images), page.images
    for title in SECTIONS.values():
        assert title in page.text
    assert report.missing == {}  # every section had its data
    for words in ("relex", "bsm", "big", "dance-grad − grad", "topk@grad", "blur", "pool1"):
        assert words in page.text
    # the run's record: its stage timings (one row per stage), no failures, the versions
    for words in ("Stage timings", "maps:decoys-dance", "attack:pgd", "None: every unit"):
        assert words in page.text
    assert "orchestrator\tin-process" in page.text
    top = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert top.shape == (900, 1280) and top.std() > 20  # the top of the report, not a blank page


def test_a_store_of_maps_alone_gets_a_report_that_says_what_is_missing(tmp_path, capsys):
    store = str(tmp_path / "maps")
    args = ["explain", "--methods", "grad", "--limit", "2", "--store", store, "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["report", "--store", store]) == 0
    printed = capsys.readouterr().out
    index = Path(f"{store}-report/index.html")
    assert f"report of {store} in {index}" in printed
    html = index.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert "No audit record" in html
    assert "<td>metric baseline</td><td>none (no metrics)</td>" in html
    for words in ("No metrics in this store: salaudit evaluate", "No attacks in this store"):
        assert words in html and words in printed
    assert "sanity: Not computed" in printed and "decoys: No decoy populations" in printed
    tiles = Path(f"{store}-report") / "figures" / "maps"
    assert {"0-image.png", "0-0.png", "1-0.png"} <= {p.name for p in tiles.iterdir()}


def test_report_errors_name_the_problem(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path / "nothing")]) == 2
    assert "no salaudit store at" in capsys.readouterr().err
    assert main(["report", "--store", "s3://bucket-root-only"]) == 2
    assert "is a bucket's root" in capsys.readouterr().err

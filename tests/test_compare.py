"""Audits over time: `salaudit compare` against scipy on two stores with a planted regression,
the spec's compare field and checkpoint placeholders, and the checkpoint watermark."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import yaml
import zarr
from scipy import stats

from salaudit.errors import SalauditError
from salaudit.flows.cli import main
from salaudit.pipeline.audit import audit_direct
from salaudit.pipeline.spec import parse_spec
from salaudit.report.compare import compare_stores
from salaudit.store.checkpoints import Watermark, list_checkpoints, new_checkpoints

SPEC = {
    "selection": {"mode": "random", "n": 6},
    "methods": {"grad": {}, "ig": {"n_steps": 4}},
    "metrics": ["fidelity"],
    "shard_size": 6,
    "retries": 0,
    "report": False,
}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("compare") / "baseline")
    audit_direct(parse_spec({**SPEC, "store": {"url": url}}), progress=False)
    return url


def planted(baseline: str, tmp_path, shift: float, method: str = "grad") -> str:
    """A copy of `baseline` whose fidelity has small noise added, and `method`'s is shifted by
    `shift` too."""
    url = str(tmp_path / "current")
    shutil.copytree(baseline, url)
    metrics = zarr.open_group(url, mode="r+")["metrics"]
    methods = [str(m) for m in metrics["method"][:]]
    values = metrics["fidelity"][:]
    values += np.random.default_rng(0).normal(0, 0.02, values.shape)
    values[:, methods.index(method)] += shift
    metrics["fidelity"][:] = values
    return url


def fidelity(url: str) -> dict[str, np.ndarray]:
    metrics = zarr.open_group(url, mode="r")["metrics"]
    values = metrics["fidelity"][:].astype("float64")
    return {str(m): values[:, i] for i, m in enumerate(metrics["method"][:])}


def test_a_planted_regression_is_named_and_its_test_equals_scipy(baseline, tmp_path, capsys):
    current = planted(baseline, tmp_path, shift=0.2)  # fidelity: lower is better
    assert main(["compare", baseline, current, "--threshold", "fidelity=0.1"]) == 1
    out = capsys.readouterr().out
    assert "1 regression(s): fidelity grad: worse by" in out
    regressed = [line for line in out.splitlines() if line.endswith("REGRESSED")]
    assert len(regressed) == 1 and regressed[0].split()[:2] == ["fidelity", "grad"]

    a, b = fidelity(baseline), fidelity(current)
    rows = {c.method: c for c in compare_stores(baseline, current, {"fidelity": 0.1}).changes}
    p = [stats.ttest_rel(b[m], a[m], alternative="greater").pvalue for m in ("grad", "ig")]
    holm = [0.0, 0.0]  # Holm's step-down, by hand for two p-values
    low, high = np.argsort(p)
    holm[low] = min(1.0, 2 * p[low])
    holm[high] = max(holm[low], min(1.0, p[high]))
    for m, p_holm in zip(("grad", "ig"), holm, strict=True):
        np.testing.assert_allclose(rows[m].change, np.mean(b[m] - a[m]), rtol=1e-12)
        np.testing.assert_allclose(rows[m].standard_error, stats.sem(b[m] - a[m]), rtol=1e-12)
        np.testing.assert_allclose(rows[m].p_holm, p_holm, rtol=1e-10)
        assert rows[m].baseline == pytest.approx(a[m].mean()) and rows[m].n == 6
    assert rows["grad"].regressed and not rows["ig"].regressed


@pytest.mark.parametrize(
    "shift, threshold",
    [(0.2, "fidelity=0.5"), (-0.2, "fidelity=0.1"), (0.0, "fidelity=0")],
    ids=["within-threshold", "an-improvement", "unchanged"],
)
def test_no_regression_exits_zero(baseline, tmp_path, capsys, shift, threshold):
    current = planted(baseline, tmp_path, shift=shift)
    assert main(["compare", baseline, current, "--threshold", threshold]) == 0
    assert "no regression (2 gated rows of 2)" in capsys.readouterr().out


def test_thresholds_from_a_spec(baseline, tmp_path, capsys):
    current = planted(baseline, tmp_path, shift=0.2)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"compare": {"thresholds": {"fidelity": 0.1}}}))
    assert main(["compare", baseline, current, "--spec", str(spec)]) == 1
    assert "1 regression(s): fidelity grad" in capsys.readouterr().out
    assert main(["compare", baseline, current, "--spec", str(spec), "--alpha", "1e-30"]) == 0
    assert main(["compare", baseline, current, "--alpha", "5"]) == 2
    assert "alpha 5 is not a significance level" in capsys.readouterr().err


def test_without_thresholds_it_reports_and_passes(baseline, tmp_path, capsys):
    current = planted(baseline, tmp_path, shift=0.2)
    assert main(["compare", baseline, current]) == 0
    out = capsys.readouterr().out
    assert "fidelity" in out and "no regression (0 gated rows of 2)" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--threshold", "fidelity"], "bad --threshold 'fidelity'; write METRIC=MAX_WORSENING"),
        (["--threshold", "accuracy=0.1"], "threshold for unknown metric(s) accuracy; valid:"),
        (["--threshold", "fidelity=-1"], "must be >= 0"),
        (["--threshold", "deletion=0.1"], "threshold for deletion, which the two stores do not"),
    ],
)
def test_bad_thresholds_fail_naming_the_fix(baseline, capsys, args, words):
    assert main(["compare", baseline, baseline, *args]) == 2
    assert words in capsys.readouterr().err


def test_only_the_shared_samples_are_paired(tmp_path):
    first = {**SPEC, "selection": {"mode": "first", "n": 6}, "methods": {"grad": {}}}
    six, four = str(tmp_path / "six"), str(tmp_path / "four")
    audit_direct(parse_spec({**first, "store": {"url": six}}), progress=False)
    audit_direct(parse_spec({**first, "limit": 4, "store": {"url": four}}), progress=False)
    comparison = compare_stores(six, four)
    assert [(c.method, c.n, c.change) for c in comparison.changes] == [("grad", 4, 0.0)]
    assert comparison.notes == ["2 sample(s) scored in only one store are left out"]
    assert comparison.changes[0].baseline == pytest.approx(fidelity(four)["grad"].mean())


def test_stores_without_metrics_or_of_other_data_are_refused(baseline, tmp_path, capsys):
    assert main(["compare", baseline, str(tmp_path / "nothing")]) == 2
    assert "no salaudit store at" in capsys.readouterr().err
    maps_only = str(tmp_path / "maps-only")
    shutil.copytree(baseline, maps_only)
    shutil.rmtree(os.path.join(maps_only, "metrics"))
    with pytest.raises(SalauditError, match="holds no metrics; run salaudit evaluate"):
        compare_stores(baseline, maps_only)
    other = str(tmp_path / "other")
    shutil.copytree(baseline, other)
    zarr.open_group(other, mode="r+").attrs["data_fingerprint"] = "another"
    with pytest.raises(SalauditError, match="audit different data"):
        compare_stores(baseline, other)


def test_the_spec_compare_field_and_checkpoint_placeholders():
    spec = parse_spec(
        {
            "model": "builtin:digit-scenes-cnn?weights={checkpoint}",
            "store": {"url": "s3://b/audits/{checkpoint_name}"},
            "compare": {"baseline": "s3://b/audits/base", "thresholds": {"fidelity": 0.05}},
        }
    )
    filled = spec.for_checkpoint("s3://b/ckpt/epoch-7.v2.pt")
    assert filled.model == "builtin:digit-scenes-cnn?weights=s3://b/ckpt/epoch-7.v2.pt"
    assert filled.store.url == "s3://b/audits/epoch-7.v2"
    assert filled.compare.thresholds == {"fidelity": 0.05} and filled.compare.alpha == 0.05
    with pytest.raises(SalauditError, match="field model names {checkpoint}, but no checkpoint"):
        spec.for_checkpoint(None)
    with pytest.raises(SalauditError, match="compare.thresholds: threshold for unknown metric"):
        parse_spec({"compare": {"thresholds": {"speed": 1}}})


def test_an_audit_of_a_spec_naming_a_checkpoint_needs_one(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"store": {"url": "s3://b/audits/{checkpoint_name}"}}))
    assert main(["audit", str(spec)]) == 2
    assert "spec field store.url names {checkpoint}" in capsys.readouterr().err


def test_new_checkpoints_are_those_past_the_watermark(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name, t in [("a.pt", 100), ("b.pt", 200), ("notes.txt", 300)]:
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (t, t))
    listing = list_checkpoints(str(folder))
    assert sorted(os.path.basename(u) for u in listing) == ["a.pt", "b.pt"]
    new, mark = new_checkpoints(listing, Watermark())
    assert [os.path.basename(u) for u in new] == ["a.pt", "b.pt"] and mark.time == 200
    assert new_checkpoints(listing, mark)[0] == []  # nothing new
    (folder / "c.pt").write_bytes(b"x")  # as new as the watermark, not seen yet
    os.utime(folder / "c.pt", (200, 200))
    (folder / "d.pt").write_bytes(b"x")
    os.utime(folder / "d.pt", (250, 250))
    new, mark2 = new_checkpoints(list_checkpoints(str(folder)), Watermark.from_dict(mark.to_dict()))
    assert [os.path.basename(u) for u in new] == ["c.pt", "d.pt"] and mark2.time == 250
    with pytest.raises(SalauditError, match="watched prefix .* does not exist"):
        list_checkpoints(str(tmp_path / "missing"))


def test_an_audit_scores_under_its_metric_baseline_and_compare_refuses_a_mix(baseline, tmp_path):
    url = str(tmp_path / "zero")
    audit_direct(
        parse_spec({**SPEC, "metric_baseline": "zero", "store": {"url": url}}), progress=False
    )
    assert zarr.open_group(url, mode="r")["metrics"].attrs["metric_baseline"] == "zero"
    assert zarr.open_group(baseline, mode="r")["metrics"].attrs["metric_baseline"] == "mean"
    assert not np.allclose(fidelity(url)["grad"], fidelity(baseline)["grad"])
    with pytest.raises(SalauditError, match="under the mean metric baseline, .* under zero"):
        compare_stores(baseline, url)

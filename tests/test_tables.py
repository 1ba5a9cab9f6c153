"""Tables through salaudit: the builtin breast-cancer table and MLP, P = 1 decoys over
features, the methods against Captum and completeness, the store's dims and the report, and bad
tables refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from browser import require_chromium, visit
from captum.attr import Saliency

import salaudit.flows.audit  # noqa: F401  (Prefect's log handler binds at first import)
from salaudit.engine.batching import predictions
from salaudit.errors import SalauditError
from salaudit.flows.cli import main
from salaudit.inputs.data import load_dataset
from salaudit.inputs.kinds import from_grid, grid_shape, kind_of, to_grid
from salaudit.inputs.models import load_model
from salaudit.methods.decoys import make_decoys, masks_for
from salaudit.methods.registry import get_method
from salaudit.pipeline.run import check_kinds
from salaudit.pipeline.spec import TABULAR_SPEC, parse_spec
from salaudit.report.html import write_report

TABLE = ["--model", "builtin:breast-cancer-mlp", "--data", "builtin:breast-cancer"]


@pytest.fixture(scope="module")
def mlp():
    return load_model("builtin:breast-cancer-mlp")


@pytest.fixture(scope="module")
def rows(mlp):
    batch = load_dataset("builtin:breast-cancer").load(np.arange(16))
    return batch.image, predictions(mlp, batch.image, 64)


def test_the_builtin_table_is_minmax_scaled_on_its_training_split():
    train = load_dataset("builtin:breast-cancer?split=train")
    test = load_dataset("builtin:breast-cancer")
    assert len(train) + len(test) == 569 and train.image_shape == (30,)
    x = train.load(np.arange(len(train))).image
    assert torch.equal(x.amin(0), torch.zeros(30)) and torch.equal(x.amax(0), torch.ones(30))
    xt = test.load(np.arange(len(test))).image
    assert xt.min() >= 0 and xt.max() <= 1
    assert train.feature_names[0] == "mean radius" and len(test.feature_names) == 30
    assert test.class_names == ["malignant", "benign"]


def test_the_mlp_classifies_the_test_split(mlp):
    test = load_dataset("builtin:breast-cancer")
    batch = test.load(np.arange(len(test)))
    accuracy = (predictions(mlp, batch.image, 256) == batch.label).float().mean()
    assert mlp.kind == "table" and accuracy >= 0.9


def test_the_grid_puts_features_and_tokens_on_positions():
    table, text = torch.rand(2, 5), torch.rand(2, 7, 3)
    assert kind_of((5,)) == "table" and kind_of((7, 3)) == "text"
    assert to_grid(table).shape == (2, *grid_shape((5,))) == (2, 1, 1, 5)
    assert to_grid(text).shape == (2, *grid_shape((7, 3))) == (2, 3, 1, 7)
    assert torch.equal(to_grid(text)[1, :, 0, 4], text[1, 4])  # token 4's vector at position 4
    assert torch.equal(from_grid(to_grid(table), (5,)), table)
    assert torch.equal(from_grid(to_grid(text), (7, 3)), text)
    stacked = torch.rand(2, 4, 7, 3)  # leading dims (sample, decoy) kept
    assert torch.equal(from_grid(to_grid(stacked, (7, 3)), (7, 3)), stacked)


@pytest.mark.parametrize("generator, decoys", [("dance", 60), ("dance", 20), ("noise", 30)])
def test_decoys_differ_from_x_only_inside_their_masks(mlp, rows, generator, decoys):
    x, _ = rows
    method = get_method(f"{generator}-grad", decoys={"decoys": decoys}).resolved(mlp)
    found = make_decoys(mlp, x, method.decoys)
    plan = masks_for(mlp, method.decoys)
    inside = plan.masks[:, 0, :][found.mask_index]  # (K, F): each decoy's features
    changed = found.population != x[:, None]
    assert found.population.shape == (len(x), decoys, 30)
    assert not (changed & ~inside).any()
    assert changed.any(-1).float().mean() > 0.5  # most decoys move something in their mask
    assert inside.sum(0).min() >= 1  # every feature is in some mask
    if generator == "dance":
        assert found.success.float().mean() >= 0.9


def test_constant_decoys_fill_their_masks_with_the_feature_means(mlp, rows):
    x, _ = rows
    method = get_method("constant-grad", decoys={"decoys": 30}).resolved(mlp)
    found = make_decoys(mlp, x, method.decoys)
    inside = masks_for(mlp, method.decoys).masks[:, 0, :][found.mask_index]
    means = mlp.baseline_colour.view(1, 1, 30).expand_as(found.population)
    assert torch.equal(found.population[:, inside], means[:, inside])
    assert torch.equal(mlp.baseline_colour, mlp.mean) and mlp.mean.shape == (1, 30)


def test_range_aggregation_is_max_minus_min_of_grad_over_the_population(mlp, rows):
    x, t = rows
    method = get_method("dance-grad", decoys={"decoys": 20}).resolved(mlp)
    population = make_decoys(mlp, x, method.decoys).population
    members = torch.cat([x[:, None], population], 1)  # the original is a member
    grads = get_method("grad")(mlp, members.flatten(0, 1), t.repeat_interleave(21)).view(-1, 21, 30)
    expected = grads.amax(1) - grads.amin(1)
    assert torch.allclose(method(mlp, x, t), expected, rtol=1e-5, atol=1e-7)
    mean = get_method("dance-mean-grad", decoys={"decoys": 20}).resolved(mlp)
    assert torch.allclose(mean(mlp, x, t), grads.mean(1), rtol=1e-5, atol=1e-7)


def test_ig_completeness_within_one_percent_on_the_mlp(mlp, rows):
    x, t = rows
    attribution = get_method("ig", {"n_steps": 32})(mlp, x, t)
    with torch.no_grad():
        gap = (mlp(x) - mlp(torch.zeros_like(x))).gather(1, t[:, None]).squeeze(1)
    total = attribution.sum(1)
    assert ((total - gap).abs() <= 0.01 * gap.abs()).all(), (total - gap).abs() / gap.abs()


def test_grad_matches_captums_saliency_on_the_mlp(mlp, rows):
    x, t = rows
    theirs = Saliency(mlp).attribute(x.clone(), target=t, abs=False)
    assert torch.allclose(get_method("grad")(mlp, x, t), theirs, rtol=1e-6, atol=1e-8)


def test_what_does_not_apply_to_tables_is_refused_naming_what_does(mlp):
    with pytest.raises(
        SalauditError, match="gradcam does not apply to table inputs.*grad, gradxinput, ig"
    ):
        get_method("gradcam").resolved(mlp)
    with pytest.raises(SalauditError, match="blur is defined for images only"):
        get_method("blur-grad").resolved(mlp)
    with pytest.raises(SalauditError, match="decoy patch 3 on table inputs"):
        get_method("dance-grad", decoys={"patch": 3, "stride": 1}).resolved(mlp)
    spec = parse_spec({"attacks": ["mass-center@grad"], "metrics": ["fidelity"]})
    with pytest.raises(SalauditError, match="attack mass-center@grad does not apply.*topk"):
        check_kinds(spec, "table")
    with pytest.raises(SalauditError, match="metric road does not apply.*fidelity"):
        check_kinds(parse_spec({"attacks": [], "metrics": ["road"]}), "table")
    check_kinds(parse_spec({"attacks": ["topk@grad", "pgd"], "metrics": ["fidelity"]}), "table")


def test_the_tabular_spec_parses_to_the_papers_p1_setting():
    import yaml

    spec = parse_spec(yaml.safe_load(TABULAR_SPEC))
    mlp = load_model(spec.model)
    dance = spec.method("dance-grad").resolved(mlp).decoys
    assert (dance.patch, dance.per_mask, dance.n_masks) == (1, 1, 30)  # one feature a mask
    assert {"constant-ig", "noise-smoothgrad", "dance-mean-ig"} <= set(spec.methods)


def test_a_table_audit_writes_feature_dims_and_a_report_with_its_bars(tmp_path):
    store = tmp_path / "t"
    argv = ["explain", *TABLE, "--methods", "grad,ig,dance-grad", "--decoy", "dance.decoys=20"]
    argv += ["--limit", "8", "--shard-size", "4", "--store", str(store), "--quiet"]
    assert main(argv) == 0
    assert main(["attack", "--store", str(store), "--attacks", "topk@grad", "--quiet"]) == 0
    assert main(["evaluate", "--store", str(store), "--quiet"]) == 0
    inputs = xr.open_zarr(store, group="inputs", chunks=None)
    maps = xr.open_zarr(store, group="maps", chunks=None)
    assert inputs["image"].dims == maps["grad"].dims == ("sample", "feature")
    names = load_dataset("builtin:breast-cancer").feature_names
    assert [str(f) for f in inputs["feature"].values] == names
    attacked = xr.open_zarr(store, group="attacks/topk@grad", chunks=None)
    assert attacked["image"].dims == ("sample", "feature")
    metrics = xr.open_zarr(store, group="metrics", chunks=None)
    assert {"fidelity", "deletion", "topk_intersection"} <= set(metrics.data_vars)
    assert "road_morf" not in metrics  # ROAD imputes from spatial neighbours: images only
    png = tmp_path / "one.png"
    sample = str(int(inputs["sample"].values[0]))
    assert main(["show", "--store", str(store), "--sample", sample, "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert main(["compare", str(store), str(store)]) == 0  # an audit against itself holds
    out = tmp_path / "report"
    write_report(str(store), str(out))
    bars = sorted((out / "figures" / "maps").glob("*.png"))
    assert len(bars) == 4
    require_chromium()
    page = visit((out / "index.html").as_uri())
    assert page.problems == []
    assert all(i["complete"] and i["naturalWidth"] > 100 for i in page.images), page.images
    assert "signed saliency per feature" in page.text and "dance-grad" in page.text


@pytest.mark.slow
def test_the_tabular_spec_audits_through_the_flow(tmp_path):
    import yaml

    spec = yaml.safe_load(TABULAR_SPEC)
    spec["selection"]["n"] = 16
    spec["store"] = {"url": str(tmp_path / "audit")}
    path = tmp_path / "tabular.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["audit", str(path), "--quiet"]) == 0
    stats = xr.open_zarr(tmp_path / "audit", group="stats", chunks=None)
    rows = {(str(m), str(r)) for m, r, v in zip(stats.method.values, stats.reference.values,
                                                  stats.metric.values, strict=True)
            if str(v) == "fidelity"}  # fmt: skip
    assert {("dance-grad", "grad"), ("constant-ig", "ig"), ("big", "ig")} <= rows
    assert (tmp_path / "audit-report" / "index.html").exists()


def _csv(path, values, columns=("a", "b", "c", "d")) -> str:
    import pandas as pd

    frame = pd.DataFrame(values, columns=list(columns))
    frame["y"] = [0, 1] * (len(values) // 2)
    frame.to_csv(path, index=False)
    return f"csv:{path}?label=y"


@pytest.mark.parametrize(
    "values, words",
    [
        ([[0.1, 0.2, np.nan, 0.4], [0.5, 0.5, 0.5, 0.5]], ["NaN", "columns [2]", "impute"]),
        ([[0.1, 0.2, 0.3, 0.4], [0.5, 7.0, 0.5, 0.5]], ["outside [0, 1]", "MinMax-scale"]),
    ],
)
def test_bad_tables_are_refused_before_anything_is_written(tmp_path, capsys, values, words):
    from test_bad_input import refused

    data = _csv(tmp_path / "t.csv", values)
    store = tmp_path / "s"
    argv = ["explain", "--model", "python:support:table_mlp?shape=4", "--data", data]
    refused(capsys, [*argv, "--methods", "grad", "--store", str(store), "--quiet"], *words)
    assert not store.exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--data", "builtin:breast-cancer"], ["tables of 30 features", "images of shape"]),
        ([*TABLE, "--methods", "gradcam"], ["gradcam does not apply to table inputs"]),
        (["--model", "python:support:table_mlp?shape=4", "--data", "builtin:breast-cancer"],
         ["tables of 30 features", "takes tables of 4 features"]),
    ],
)  # fmt: skip
def test_a_model_or_method_that_does_not_fit_the_table_is_refused(tmp_path, capsys, argv, words):
    from test_bad_input import refused

    store = tmp_path / "s"
    refused(capsys, ["explain", *argv, "--store", str(store), "--quiet"], *words)
    assert not store.exists()


def test_csv_and_parquet_tables_load_with_their_feature_names(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"x1": [0.0, 0.5, 1.0, 0.25], "x2": [1.0, 0.0, 0.5, 0.75]})
    frame["target"] = [0, 1, 1, 0]
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    for spec in (
        f"csv:{tmp_path}/t.csv?label=target",
        f"parquet:{tmp_path}/t.parquet?label=target",
    ):
        ds = load_dataset(spec)
        batch = ds.load([1, 3])
        assert ds.feature_names == ["x1", "x2"] and ds.image_shape == (2,)
        assert torch.equal(batch.image, torch.tensor([[0.5, 0.0], [0.25, 0.75]]))
        assert batch.label.tolist() == [1, 0] and ds.num_classes == 2
    with pytest.raises(SalauditError, match="no label column 'y'.*x1, x2, target"):
        load_dataset(f"csv:{tmp_path}/t.csv?label=y")

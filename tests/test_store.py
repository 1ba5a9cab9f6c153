"""The store contract: written by `explain`, read back with plain xarray, local and on S3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from salaudit import get_method
from salaudit.errors import SalauditError, StoreConflict
from salaudit.methods.gradients import Context
from salaudit.pipeline.explain import explain
from salaudit.store.store import Store
from support import explain_spec

METHODS = ["grad", "ig", "dance-grad", "dance-mean-grad", "blur-grad"]
FAST = {
    "params": {"ig": {"n_steps": 8}},
    "decoys": {"dance": {"stride": 3}, "blur": {"stride": 3}},
}


def run(store, methods=METHODS, n=4, fresh=False, **kw) -> dict:
    settings = {**FAST, **kw}
    generators = {m.split("-")[0] for m in methods}
    settings["decoys"] = {g: v for g, v in settings["decoys"].items() if g in generators}
    return explain(explain_spec(store, methods, n=n, **settings), fresh=fresh, progress=False)


def check_contract(url: str, n: int = 4) -> xr.DataTree:
    tree = xr.open_datatree(url, engine="zarr")
    inputs = tree["inputs"].ds
    assert inputs["image"].dims == ("sample", "channel", "y", "x")
    assert inputs["image"].shape == (n, 3, 32, 32) and inputs["image"].dtype == np.float32
    assert inputs["label"].dtype == np.int64 and inputs["prediction"].dims == ("sample",)
    assert inputs["bbox"].dims == ("sample", "corner")
    maps = tree["maps"].ds
    assert set(maps.data_vars) == set(METHODS)
    for name in METHODS:
        assert maps[name].dims == ("sample", "channel", "y", "x")
        assert maps[name].attrs["method"] == name and not np.isnan(maps[name].values).any()
    assert maps["ig"].attrs["n_steps"] == 8
    assert maps["dance-grad"].attrs["decoys"]["stride"] == 3
    dance = tree["decoys/dance"].ds
    k = dance.sizes["decoy"]
    assert dance["population"].dims == ("sample", "decoy", "channel", "y", "x")
    assert dance["population"].shape == (n, k, 3, 32, 32) and k % 2 == 1
    for diag in ("success", "representation_difference", "mean_abs_shift", "lambda"):
        assert dance[diag].dims == ("sample", "decoy")
    assert dance["mask"].values[0] == -1 and set(dance["sign"].values[1:]) == {-1, 1}
    assert tree["decoys/dance/saliency"].ds["grad"].dims == ("sample", "decoy", "channel", "y", "x")
    assert tree["decoys/blur"].ds.sizes["decoy"] == k == 33  # the budget's 32 decoys and x
    budget = maps["dance-grad"].attrs["decoys"]  # the budget and its packing, recorded
    # stride 3: origins 0, 3, ..., 27 and 29 per axis, 5, 5 and 1 of them per residue modulo 6
    # (0, 3, 5); the full spacing, 6, fits the 16 masks: 9 groups of 25, 5 or 1 positions, the
    # four of 25 split in two or three masks (at most 13 patches)
    assert (budget["decoys"], budget["spacing"], budget["per_mask"]) == (32, 6, 13)
    np.testing.assert_array_equal(dance["sample"].values, inputs["sample"].values)
    attrs = tree.attrs
    assert {"model_fingerprint", "data_fingerprint", "selection", "salaudit_version"} <= set(attrs)
    return tree


def test_explain_writes_the_contract_locally(tmp_path, model):
    out = run(tmp_path / "s", keep_decoys=True)
    assert out["samples"] == 4 and out["computed"] == len(METHODS)
    tree = check_contract(str(tmp_path / "s"))
    # maps equal the methods run directly on the stored images
    x = torch.from_numpy(tree["inputs"].ds["image"].values)
    target = torch.from_numpy(tree["inputs"].ds["prediction"].values)
    assert torch.equal(target, model(x).argmax(1))
    grad = get_method("grad")(model, x, target)
    assert np.allclose(tree["maps"].ds["grad"].values, grad.numpy(), atol=1e-6)
    # the population's first member is the image; the range map is its saliency's range
    dance = tree["decoys/dance"].ds
    np.testing.assert_array_equal(dance["population"].values[:, 0], x.numpy())
    sal = tree["decoys/dance/saliency"].ds["grad"].values
    np.testing.assert_allclose(
        tree["maps"].ds["dance-grad"].values, sal.max(1) - sal.min(1), atol=1e-6
    )
    np.testing.assert_allclose(tree["maps"].ds["dance-mean-grad"].values, sal.mean(1), atol=1e-6)


def test_explain_writes_the_contract_to_s3(bucket):
    url = f"{bucket}/runs/demo"
    run(url, keep_decoys=True)
    check_contract(url)
    assert xr.open_zarr(url, group="maps")["grad"].shape == (4, 3, 32, 32)


def test_a_rerun_computes_nothing_and_a_lost_region_is_recomputed(tmp_path):
    url = tmp_path / "s"
    run(url, methods=["grad", "ig"], n=6, shard_size=2)
    before = xr.open_zarr(url, group="maps", chunks=None)["ig"].values
    assert run(url, methods=["grad", "ig"], n=6, shard_size=2)["computed"] == 0
    store = Store(str(url))
    store.fs.rm(store._marker("maps/ig", 2, 4))
    store.write("maps/ig", 2, np.zeros((2, 3, 32, 32), np.float32))  # a crash mid-region
    assert run(url, methods=["grad", "ig"], n=6, shard_size=2)["computed"] == 1
    after = xr.open_zarr(url, group="maps", chunks=None)["ig"].values
    np.testing.assert_array_equal(before, after)


def test_adding_a_method_is_allowed(tmp_path):
    run(tmp_path / "s", methods=["grad"])
    out = run(tmp_path / "s", methods=["grad", "gradxinput"])
    assert out["computed"] == 1
    assert set(xr.open_zarr(tmp_path / "s", group="maps").data_vars) == {"grad", "gradxinput"}


def test_other_parameters_are_refused_and_nothing_is_written(tmp_path):
    url = tmp_path / "s"
    run(url, methods=["grad", "ig"])
    files = sorted(p.relative_to(url) for p in url.rglob("*"))
    with pytest.raises(StoreConflict, match="n_steps"):
        run(url, methods=["grad", "ig", "gradxinput"], params={"ig": {"n_steps": 9}})
    assert sorted(p.relative_to(url) for p in url.rglob("*")) == files
    out = run(url, methods=["ig"], params={"ig": {"n_steps": 9}}, fresh=True)
    assert out["computed"] == 1
    assert xr.open_zarr(url, group="maps")["ig"].attrs["n_steps"] == 9


def test_another_models_or_seeds_store_is_refused(tmp_path):
    url = tmp_path / "s"
    run(url, methods=["grad"])
    with pytest.raises(StoreConflict, match="seed"):
        run(url, methods=["grad"], seed=1)
    with pytest.raises(StoreConflict, match="model_fingerprint"):
        explain(
            explain_spec(url, ["grad"], model="python:support:linear_model"),
            progress=False,
        )


def test_shard_layout_does_not_change_results(tmp_path):
    methods = ["ig", "smoothgrad", "dance-grad"]
    run(tmp_path / "a", methods=methods, n=4, shard_size=4)
    run(tmp_path / "b", methods=methods, n=4, shard_size=2)
    a, b = (xr.open_zarr(tmp_path / s, group="maps", chunks=None) for s in "ab")
    for name in methods:
        scale = np.abs(a[name].values).max()
        assert np.abs(a[name].values - b[name].values).max() <= 1e-4 * scale, name


def test_bad_input_fails_before_anything_is_written(tmp_path):
    import zarr

    img = np.full((4, 3, 32, 32), 0.5, np.float32)
    img[2, 1, 3, 3] = np.nan
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("image", data=img)
    g.create_array("label", data=np.arange(4))
    store = tmp_path / "s"
    with pytest.raises(SalauditError, match=r"samples \[2\] contain NaN"):
        explain(explain_spec(store, ["grad"], data=f"zarr:{tmp_path / 'd.zarr'}", mode="first"))
    assert not store.exists()
    cases = [
        (["nope"], {}, {}, "unknown method 'nope'; valid: grad, gradxinput"),
        (["grad"], {"grad": {"steps": 3}}, {}, r"unknown parameter\(s\) \['steps'\] for grad"),
        (["gradcam"], {"gradcam": {"layer": "pool7"}}, {}, "layer 'pool7' is not in model"),
        (["dance-grad"], {}, {"dance": {"layer": "no"}}, "layer 'no' is not in model .* conv1"),
        (["blur-grad"], {}, {"blur": {"stride": 4}}, "between 1 and the patch size 3"),
    ]
    for methods, params, decoys, message in cases:
        with pytest.raises(SalauditError, match=message):
            spec = explain_spec(store, methods, mode="first", params=params, decoys=decoys)
            explain(spec, progress=False)
    assert not store.exists()


def test_context_keys_follow_the_dataset_index(tmp_path, model):
    """A sample's random maps do not depend on which other samples are selected."""
    run(tmp_path / "a", methods=["smoothgrad"], n=4)
    tree = xr.open_zarr(tmp_path / "a", group="inputs", chunks=None)
    idx = int(tree["sample"].values[1])
    x = torch.from_numpy(tree["image"].values[1:2])
    t = torch.from_numpy(tree["prediction"].values[1:2])
    alone = get_method("smoothgrad")(model, x, t, Context([f"0/{idx}/smoothgrad"]))
    stored = xr.open_zarr(tmp_path / "a", group="maps", chunks=None)["smoothgrad"].values[1]
    assert np.allclose(stored, alone[0].numpy(), atol=1e-5 * np.abs(stored).max())


def test_a_float16_store_holds_maps_and_populations_in_half_the_bytes(tmp_path):
    from salaudit.pipeline.audit import audit_direct
    from salaudit.pipeline.spec import parse_spec

    def audit(name: str, dtype: str):
        spec = {
            "selection": {"mode": "first", "n": 4},
            "methods": {"grad": {}, "dance-grad": {}},
            "decoys": {"dance": {"decoys": 4}},
            "attacks": ["topk@grad"],
            "attack_params": {"topk": {"steps": 2}},
            "metrics": ["fidelity"],
            "shard_size": 4,
            "cluster": "local",
            "keep_decoys": True,
            "store": {"url": str(tmp_path / name), "dtype": dtype},
        }
        audit_direct(parse_spec(spec), progress=False)
        return xr.open_datatree(tmp_path / name, engine="zarr"), Store(str(tmp_path / name))

    wide, wide_store = audit("wide", "float32")
    half, half_store = audit("half", "float16")
    for group, var in [
        ("maps", "grad"),
        ("maps", "dance-grad"),
        ("decoys/dance", "population"),
        ("decoys/dance/saliency", "grad"),
        ("attacks/topk@grad/maps", "grad"),
    ]:
        a, b = wide[group].ds[var].values, half[group].ds[var].values
        assert a.dtype == np.float32 and b.dtype == np.float16, (group, var)
        assert np.allclose(b, a.astype(np.float16), rtol=1e-3, atol=1e-7), (group, var)
    assert half["inputs"].ds["image"].dtype == np.float32  # the data stays as it was
    # metrics computed from the half maps agree with the float32 store's
    fidelity = "fidelity"
    np.testing.assert_allclose(
        half["metrics"].ds[fidelity].values, wide["metrics"].ds[fidelity].values, rtol=1e-2
    )
    size = lambda store, prefix: sum(  # noqa: E731
        v["size"] for k, v in store.listing().items() if k.startswith(prefix)
    )
    assert size(half_store, "decoys/") < 0.6 * size(wide_store, "decoys/")
    # a float32 run into a float16 store is refused, naming the setting
    spec = parse_spec(
        {"store": {"url": str(tmp_path / "half")}, "selection": {"mode": "first", "n": 4}}
    )
    with pytest.raises(StoreConflict, match=r"store dtype \(store.dtype\).*float16"):
        audit_direct(spec, progress=False)


def test_bfloat16_and_unknown_store_dtypes_are_refused_naming_the_choices():
    from salaudit.pipeline.spec import parse_spec

    with pytest.raises(SalauditError, match="bfloat16: zarr stores no bfloat16.*float16"):
        parse_spec({"store": {"url": "x", "dtype": "bfloat16"}})
    with pytest.raises(SalauditError, match="'int8': give one of float32, float16"):
        parse_spec({"store": {"url": "x", "dtype": "int8"}})

"""The notebook face: `salaudit.explain` in memory equals what an audit stores, and
`salaudit.open` reads a store as numpy-backed xarray."""

from __future__ import annotations

import dask.array
import numpy as np
import pytest
import torch

import salaudit
from salaudit.pipeline.explain import explain as explain_stage
from support import explain_spec

METHODS = {"grad": {}, "smoothgrad": {"n_samples": 4}, "dance-grad": {}}


def test_explain_in_memory_equals_the_store(tmp_path, model):
    store = tmp_path / "s"
    spec = explain_spec(store, list(METHODS), n=3, params=METHODS, decoys={"dance": {"stride": 3}})
    explain_stage(spec, progress=False)
    tree = salaudit.open(str(store))
    inputs, maps = tree["inputs"].ds, tree["maps"].ds
    assert not isinstance(maps["grad"].data, dask.array.Array)
    out = salaudit.explain(
        model,
        torch.from_numpy(inputs["image"].values),
        METHODS,
        decoys={"dance": {"stride": 3}},
        samples=inputs["sample"].values,
    )
    assert list(out.data_vars) == list(METHODS)
    assert out["grad"].dims == ("sample", "channel", "y", "x")
    np.testing.assert_array_equal(out["target"].values, inputs["prediction"].values)
    for name in METHODS:
        np.testing.assert_array_equal(out[name].values, maps[name].values, err_msg=name)
        assert out[name].attrs == maps[name].attrs
    other = salaudit.explain(model, inputs["image"].values, ["smoothgrad"], seed=1)
    assert not np.array_equal(other["smoothgrad"].values, out["smoothgrad"].values)


def test_explain_takes_a_module_and_refuses_bad_input(model):
    x = torch.rand(2, 3, 32, 32)
    out = salaudit.explain(model.net.eval(), x, ["gradxinput"], targets=[1, 2])
    assert out["gradxinput"].shape == (2, 3, 32, 32)
    with pytest.raises(salaudit.SalauditError, match="sample indices for 2 images"):
        salaudit.explain(model, x, ["grad"], samples=[0])
    with pytest.raises(salaudit.SalauditError, match="unknown method 'nope'"):
        salaudit.explain(model, x, ["nope"])
    with pytest.raises(salaudit.SalauditError, match="reference images"):
        salaudit.explain(model, x, ["expgrad"])

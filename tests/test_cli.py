"""The command line: explain and show, their acceptance runs, and their errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from salaudit.flows.cli import main


def fast(methods: str) -> list[str]:
    """Cheap settings (decoy stride 3, 8 IG steps) for what `methods` use."""
    names = methods.split(",")
    flags = []
    for generator in ("dance", "blur"):
        if any(n.startswith(f"{generator}-") for n in names):
            flags += ["--decoy", f"{generator}.stride=3"]
    return flags + (["--param", "ig.n_steps=8"] if "ig" in names else [])


def salaudit(*args: str) -> subprocess.CompletedProcess:
    """The installed console script (beside this interpreter), as a user runs it."""
    script = Path(sys.executable).parent / "salaudit"
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=3000)


def explain_16(methods: str, store: str, *extra: str) -> subprocess.CompletedProcess:
    """The issues' acceptance command: the default model and data, 16 images."""
    model, data = "builtin:digit-scenes-cnn", "builtin:digit-scenes"
    args = f"explain --model {model} --data {data} --methods {methods} --limit 16 --quiet"
    return salaudit(*args.split(), "--store", store, *extra)


def test_explain_and_show(tmp_path):
    store = str(tmp_path / "demo")
    code = main(
        [
            "explain",
            "--methods",
            "grad,ig,dance-grad",
            "--limit",
            "3",
            "--store",
            store,
            "--select",
            "stratified",
            "--quiet",
            *fast("grad,ig,dance-grad"),
        ]
    )
    assert code == 0
    samples = xr.open_zarr(store, group="maps")["sample"].values
    png = tmp_path / "s.png"
    assert main(["show", "--store", store, "--sample", str(samples[0]), "--out", str(png)]) == 0
    img = np.asarray(Image.open(png))
    # four panels side by side, each at least 160 px (the 32 px image enlarged 5 times)
    assert img.shape[1] >= 4 * 160 and img.shape[0] < 2 * 160 and img.std() > 10
    cyan = (np.abs(img[..., :3].astype(int) - [0, 229, 255]).max(2) < 40).any(0)
    runs = np.flatnonzero(np.diff(cyan.astype(int)) == 1)  # the box outlined on each panel
    assert len(runs) >= 4


def test_errors_name_the_problem_and_exit_2(tmp_path, capsys):
    store = str(tmp_path / "e")
    assert main(["explain", "--methods", "grad,nope", "--store", store, "--quiet"]) == 2
    assert "unknown method 'nope'; valid: grad, gradxinput" in capsys.readouterr().err
    assert main(["explain", "--model", "builtin:vgg", "--store", store, "--quiet"]) == 2
    assert "valid: builtin:digit-scenes-cnn" in capsys.readouterr().err
    assert (
        main(
            [
                "explain",
                "--methods",
                "dance-grad",
                "--decoy",
                "dance.layer=pool9",
                "--store",
                store,
                "--quiet",
            ]
        )
        == 2
    )
    assert "layer 'pool9' is not in model" in capsys.readouterr().err
    bad_finder = ["explain", "--methods", "bsm", "--boundary", "finders=pgd,fgsm", "--store", store]
    assert main(bad_finder) == 2
    assert "unknown boundary finder(s) ['fgsm']" in capsys.readouterr().err
    assert main(["explain", "--methods", "grad", "--limit", "2", "--store", store, "--quiet"]) == 0
    assert main(["show", "--store", store, "--sample", "99999", "--out", "x.png"]) == 2
    assert "sample 99999 is not in store" in capsys.readouterr().err


def test_console_script_is_installed():
    out = salaudit("explain", "--help")
    assert out.returncode == 0 and "--keep-decoys" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_acceptance_command(where, tmp_path, request):
    """The issue's command: six methods, 16 images, decoys kept, read back with xarray."""
    store = (
        str(tmp_path / "demo") if where == "local" else request.getfixturevalue("bucket") + "/demo"
    )
    out = explain_16("grad,ig,smoothgrad,dance-grad,dance-ig,blur-ig", store, "--keep-decoys")
    assert out.returncode == 0, out.stderr
    tree = xr.open_datatree(store, engine="zarr")
    assert set(tree["maps"].ds.data_vars) == {
        "grad",
        "ig",
        "smoothgrad",
        "dance-grad",
        "dance-ig",
        "blur-ig",
    }
    assert tree["maps"].ds.sizes["sample"] == 16
    assert set(tree["decoys/dance/saliency"].ds.data_vars) == {"grad", "ig"}
    assert set(tree["decoys/blur/saliency"].ds.data_vars) == {"ig"}
    assert not np.isnan(tree["maps"].ds["dance-ig"].values).any()


@pytest.mark.slow
def test_robust_acceptance_command(tmp_path):
    """The robust issue's command: relex, bsm, big, agi on 16 images; maps and boundary."""
    store = str(tmp_path / "robust")
    out = explain_16("relex,bsm,big,agi", store)
    assert out.returncode == 0, out.stderr
    assert "boundary search found no adversarial point for 0 of 16 samples" in out.stdout
    tree = xr.open_datatree(store, engine="zarr")
    maps = tree["maps"].ds
    assert set(maps.data_vars) == {"relex", "bsm", "big", "agi"}
    assert maps.sizes["sample"] == 16 and not np.isnan(maps["big"].values).any()
    boundary = tree["boundary"].ds
    assert set(boundary.data_vars) >= {"point", "distance", "success", "finder"}
    assert boundary["success"].values.all()
    assert boundary["finder"].attrs["codes"] == {"0": "none", "1": "pgd", "2": "cw", "3": "apgd"}

"""The catalogue of bad input and faults: each reaches the user as one line `salaudit: error:`
naming the problem and the fix, exit 2 for bad input (1 for a failed run), no traceback, and
the store it pointed at is unchanged array by array, or exactly repaired."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from PIL import Image

# Imported at collection (as in test_audit): Prefect binds its console log handler to the
# sys.stderr of its first import, which inside a capsys test is a stream closed after it.
import salaudit.flows.audit  # noqa: F401
from salaudit.flows.cli import main
from salaudit.pipeline.spec import AuditSpec

EXPLAIN = ["explain", "--methods", "grad,ig", "--param", "ig.n_steps=4", "--limit", "4"]
EXPLAIN += ["--shard-size", "2", "--quiet"]


def arrays(url) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(url), mode="r")
    return {p: n[...] for p, n in root.members(max_depth=None) if isinstance(n, zarr.Array)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a
    )


def refused(capsys, argv, *words, code: int = 2) -> str:
    """Run the CLI: it exits `code` with one error line holding `words`, no traceback."""
    assert main(argv) == code, argv
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("salaudit: ")]
    assert "Traceback" not in err, err
    assert lines and lines[0].startswith(("salaudit: error: ", "salaudit: interrupted")), err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished small store (grad and ig of 4 samples in shards of 2, scored)."""
    store = tmp_path_factory.mktemp("finished") / "s"
    assert main([*EXPLAIN, "--store", str(store)]) == 0
    assert main(["evaluate", "--store", str(store), "--metrics", "fidelity", "--quiet"]) == 0
    return store


@pytest.fixture
def store(finished, tmp_path) -> Path:
    copy = tmp_path / "s"
    shutil.copytree(finished, copy)
    return copy


def spec_file(tmp_path, **fields) -> str:
    path = tmp_path / "spec.yaml"
    data = {"methods": {"grad": {}}, "attacks": [], "store": {"url": str(tmp_path / "a")}}
    path.write_text(yaml.safe_dump({**data, "selection": {"n": 2}, **fields}))
    return str(path)


# --- specs --------------------------------------------------------------------------------------

SPECS = [
    ({"methods": {"gradd": {}}}, ["unknown method 'gradd'", "valid: grad"]),
    ({"methods": {"ig": {"steps": 3}}}, ["unknown parameter(s) ['steps'] for ig", "n_steps"]),
    ({"shard_size": 0}, ["shard_size", "greater than or equal to 1"]),
    ({"decoys": {"blur": {}}}, ["decoys", "blur", "no method uses"]),
    ({"cluster": "nowhere"}, ["cluster", "scheduler address"]),
    ({"store": {"url": "s3://b/x", "storage_options": {"key": "k"}}}, ["credentials"]),
    ({"store": {"url": "runs/{checkpoint_name}"}}, ["store.url", "{checkpoint}"]),
    ({"metrics": ["beauty"]}, ["unknown metric(s) ['beauty']", "fidelity"]),
    ({"attacks": ["blur@grad"]}, ["unknown attack 'blur'", "topk"]),
    ({"attacks": ["topk@relex"]}, ["relex has no differentiable path", "smoothgrad"]),
    ({"compare": {"baseline": "/no/such/store"}}, ["compare.baseline", "/no/such/store"]),
    ({"seed": "x"}, ["seed", "integer"]),
    ({"colour": "red"}, ["colour", "unknown field"]),
]


@pytest.mark.parametrize("fields, words", SPECS)
def test_bad_specs(tmp_path, capsys, fields, words):
    refused(capsys, ["audit", spec_file(tmp_path, **fields), "--quiet"], *words)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "text, words",
    [
        (None, ["no spec file", "salaudit init"]),
        ("", ["is empty", "salaudit init"]),
        ("methods: [grad\n", ["not valid YAML"]),
        ("- grad\n", ["mapping of spec fields"]),
    ],
)
def test_bad_spec_files(tmp_path, capsys, text, words):
    path = tmp_path / "spec.yaml"
    if text is not None:
        path.write_text(text)
    refused(capsys, ["plan", str(path)], *words)


def test_init_defaults_are_the_models(tmp_path):
    assert main(["init", str(tmp_path / "s.yaml")]) == 0
    loaded = yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert AuditSpec.model_validate(loaded) == AuditSpec()


# --- flags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--shard-size", "0"], ["shard_size", "greater than or equal to 1"]),
        (["--param", "nodot"], ["bad --param 'nodot'", "NAME.KEY=VALUE"]),
        (["--param", "smoothgrad.n_samples=3"], ["--param for smoothgrad", "--methods"]),
        (
            ["--methods", "ig,dance-grad", "--decoy", "dance.foo=1"],
            ["unknown key(s) foo", "stride"],
        ),
        (["--param", "ig.n_steps=x"], ["n_steps='x' of ig is not a whole number"]),
        (
            ["--methods", "ig,dance-grad", "--decoy", "dance.stride=x"],
            ["stride='x' is not a whole"],
        ),
        (["--methods", "ig,bsm", "--boundary", "cw_lr=fast"], ["cw_lr='fast' is not a number"]),
        (["--select", "best"], ["unknown selection 'best'", "stratified"]),
        (["--limit", "0"], ["number of samples must be at least 1"]),
    ],
)
def test_bad_explain_flags_write_nothing(tmp_path, capsys, extra, words):
    refused(capsys, [*EXPLAIN, "--store", str(tmp_path / "x"), *extra], *words)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["attack", "--attacks", "topk@dance-grad"], ["no differentiable path"]),
        (["attack", "--attacks", "pgd", "--radii", "a,b"], ["radii"]),
        (["evaluate", "--metrics", "nope"], ["unknown metric(s) nope", "fidelity"]),
        (["evaluate", "--metrics", "sensitivity"], ["needs what store", "salaudit attack"]),
    ],
)
def test_bad_stage_flags_leave_the_store_alone(store, capsys, argv, words):
    before = arrays(store)
    refused(capsys, [*argv, "--store", str(store), "--quiet"], *words)
    assert same(before, arrays(store))


def test_bad_thresholds(store, capsys):
    refused(capsys, ["compare", str(store), str(store), "--threshold", "x"], "METRIC=MAX")
    refused(capsys, ["compare", str(store), str(store), "--threshold", "accuracy=1"], "unknown")


# --- models and weights ---------------------------------------------------------------------------


def weights(tmp_path, name: str, data: bytes | None = None, obj=None) -> str:
    path = tmp_path / name
    if obj is not None:
        torch.save(obj, path)
    else:
        path.write_bytes(data)
    return str(path)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/salaudit-evil-ran",))


@pytest.mark.parametrize(
    "model, words",
    [
        ("keras:resnet", ["unknown model spec", "torchvision:"]),
        ("torchvision:resnet18", ["needs ?weights=", "nothing is downloaded"]),
        ("torchvision:resnet18?weights=/no/such.pt", ["weights file /no/such.pt does not exist"]),
        ("builtin:digit-scenes-cnn?weights={empty}", ["is empty (0 bytes)"]),
        ("builtin:digit-scenes-cnn?weights={garbage}", ["not a state dict of tensors"]),
        ("builtin:digit-scenes-cnn?weights={evil}", ["loads without running code"]),
        ("builtin:digit-scenes-cnn?weights={wrong}", ["does not fit builtin:digit-scenes-cnn"]),
        ("python:no_such_module:f", ["cannot import python:no_such_module:f", "importable"]),
        ("python:support:NOT_CALLABLE", ["not a callable factory"]),
        ("python:support:raising_factory", ["raised RuntimeError", "fix the factory"]),
        ("python:support:tiny_conv?shape=3x5x5", ["cannot take inputs of shape (3, 5, 5)"]),
        ("python:support:not_a_classifier?shape=3x32x32", ["logit vector per image"]),
    ],
)
def test_bad_models_write_nothing(tmp_path, capsys, model, words):
    files = {
        "empty": weights(tmp_path, "empty.pt", b""),
        "garbage": weights(tmp_path, "garbage.pt", os.urandom(64)),
        "evil": weights(tmp_path, "evil.pt", pickle.dumps({"x": Evil()})),
        "wrong": weights(tmp_path, "wrong.pt", obj={"fc.weight": torch.zeros(2, 2)}),
    }
    err = refused(
        capsys, [*EXPLAIN, "--model", model.format(**files), "--store", str(tmp_path / "x")], *words
    )
    assert "weights_only=False" not in err
    assert not Path("/tmp/salaudit-evil-ran").exists()
    assert not (tmp_path / "x").exists()


# --- data ---------------------------------------------------------------------------------------


def folder(tmp_path, bad: bytes | None = None) -> Path:
    root = tmp_path / "folder"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    if bad is not None:
        (root / "a" / "broken.png").write_bytes(bad)
    return root


def zarr_data(tmp_path, labels=None, image=None) -> str:
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array(
        "image", data=np.full((4, 3, 32, 32), 0.5, np.float32) if image is None else image
    )
    if labels is not False:
        g.create_array("label", data=np.arange(4) if labels is None else labels)
    return f"zarr:{tmp_path / 'd.zarr'}"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda t: f"folder:{t / 'none'}", ["does not exist or is not a folder"]),
        (lambda t: f"folder:{folder(t, b'GIF89a' + bytes(20))}", ["cannot read image", "broken"]),
        (lambda t: f"folder:{folder(t, bytes(300))}", ["cannot read image", "a/broken.png"]),
        (lambda t: zarr_data(t, labels=False), ["lacks array(s) ['label']"]),
        (lambda t: zarr_data(t, labels=np.array([0.0, 1.5, 2, 3])), ["float64", "integer"]),
        (lambda t: zarr_data(t, labels=np.array([0, -1, 2, 3])), ["hold -1"]),
        (
            lambda t: zarr_data(t, image=np.full((4, 3, 8, 8), 0.5, np.float32)),
            ["shape (3, 8, 8)", "takes (3, 32, 32)"],
        ),
        (
            lambda t: zarr_data(t, image=np.full((4, 3, 32, 32), np.nan, np.float32)),
            ["contain NaN"],
        ),
        (lambda t: "builtin:cifar", ["unknown builtin data 'cifar'"]),
        (lambda t: f"folder:{folder(t)}?mode=L", ["shape (1, 32, 32)", "add ?mode=RGB"]),
        (lambda t: f"folder:{folder(t)}?resize=40", ["(3, 40, 40)", "?resize=32&crop=32"]),
        (lambda t: f"folder:{folder(t)}?boxes=box.json", ["box.json does not exist", "relative"]),
    ],
)
def test_bad_data_writes_nothing(tmp_path, capsys, make, words):
    argv = [*EXPLAIN, "--data", make(tmp_path), "--select", "first", "--store", str(tmp_path / "x")]
    refused(capsys, argv, *words)
    assert not (tmp_path / "x").exists()


# --- stores -------------------------------------------------------------------------------------


def test_store_paths_that_cannot_be_a_store(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    refused(capsys, [*EXPLAIN, "--store", str(tmp_path / "file")], "is a file, not a folder")
    refused(capsys, [*EXPLAIN, "--store", str(tmp_path / "file/s")], "lies under the file")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no unwritable folder")
def test_an_unwritable_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    refused(capsys, [*EXPLAIN, "--store", str(locked / "s")], "is not writable")


def test_a_damaged_root_metadata_is_named_and_left_alone(store, capsys):
    meta = store / "zarr.json"
    meta.write_text(meta.read_text()[:200])
    before = meta.read_bytes()
    refused(capsys, [*EXPLAIN, "--store", str(store)], "zarr.json is damaged", "--fresh")
    refused(capsys, ["verify", str(store)], "zarr.json is damaged")
    assert meta.read_bytes() == before


def test_a_damaged_array_metadata_is_restored(store, finished, capsys):
    meta = store / "maps/grad/zarr.json"
    meta.write_text(meta.read_text()[:100])
    assert main(["verify", str(store)]) == 1
    assert "maps/grad/zarr.json damaged" in capsys.readouterr().out
    assert main([*EXPLAIN, "--store", str(store)]) == 0
    assert same(arrays(finished), arrays(store))


def test_another_run_is_refused_naming_what_the_store_holds(store, capsys):
    before = arrays(store)
    seed = [*EXPLAIN, "--store", str(store), "--seed", "1"]
    refused(capsys, seed, "another sample selection", "'seed': 1", "builtin:digit-scenes-cnn")
    err = refused(
        capsys, [*EXPLAIN, "--store", str(store), "--model", "python:support:linear_model"]
    )
    assert "model builtin:digit-scenes-cnn on data builtin:digit-scenes" in err
    explain = [*EXPLAIN[:4], "ig.n_steps=9", *EXPLAIN[5:]]
    refused(capsys, [*explain, "--store", str(store)], "maps/ig computed with", "--fresh")
    assert same(before, arrays(store))


@pytest.mark.parametrize("damage", ["delete", "garbage"])
@pytest.mark.parametrize("where", ["maps/grad/c/1/0/0/0", "inputs/image/c/0/0/0/0"])
def test_a_lost_or_damaged_chunk_is_found_and_exactly_recomputed(
    store, finished, capsys, damage, where
):
    chunk = store / where
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(os.urandom(chunk.stat().st_size))
    assert main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert where in out and "samples [" in out
    assert main([*EXPLAIN, "--store", str(store)]) == 0
    assert "damaged" in capsys.readouterr().out
    assert main(["evaluate", "--store", str(store), "--metrics", "fidelity", "--quiet"]) == 0
    assert same(arrays(finished), arrays(store))
    assert main(["verify", str(store)]) == 0


def test_verify_repair_recomputes_the_region_and_what_read_it(store, finished, capsys):
    (store / "maps/ig/c/0/0/0/0").unlink()
    (store / "metrics/fidelity/c/1/0").write_bytes(b"\x00" * 5)
    assert main(["verify", str(store), "--repair", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "maps/ig samples [0, 2)" in out and "metrics/fidelity" in out
    assert same(arrays(finished), arrays(store))
    assert main(["verify", str(store)]) == 0


def test_metrics_are_never_computed_from_lost_maps(store, capsys):
    """Maps lost after their marker went away are not scored: the metric waits."""
    shutil.rmtree(store / "_salaudit/done/maps/grad")
    shutil.rmtree(store / "_salaudit/done/metrics")
    shutil.rmtree(store / "metrics/fidelity/c")
    (store / "maps/grad/c/0/0/0/0").unlink()
    assert main(["evaluate", "--store", str(store), "--metrics", "fidelity", "--quiet"]) == 0
    fidelity = zarr.open_group(str(store), mode="r")["metrics/fidelity"][...]
    assert np.isnan(fidelity[:, 0]).all() and np.isfinite(fidelity[:, 1]).all()


def test_reading_a_region_whose_chunk_vanished_is_an_integrity_error(store):
    from salaudit.pipeline.explain import reopen
    from salaudit.store.integrity import IntegrityError

    run = reopen(str(store), device="cpu")
    (store / "maps/grad/c/1/0/0/0").unlink()
    with pytest.raises(IntegrityError, match=r"maps/grad samples \[2, 4\) holds .* NaN"):
        run.read("maps/grad", 2, 4)


def test_a_busy_store_is_refused_before_prefect_starts(store, tmp_path, capsys):
    from salaudit.store.lease import Lease

    before = arrays(store)
    lease = Lease(str(store)).acquire(holder="someone else's audit")
    try:
        spec = spec_file(tmp_path, store={"url": str(store)}, selection={"n": 4}, shard_size=2)
        refused(capsys, ["audit", spec, "--quiet"], "in use by another audit", "lease_wait")
    finally:
        lease.release()
    assert same(before, arrays(store))


# --- object storage -----------------------------------------------------------------------------


def test_object_storage_faults(tmp_path, capsys, s3_endpoint):
    refused(capsys, [*EXPLAIN, "--store", "s3://no-such-bucket/s"], "bucket 'no-such-bucket'")
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    refused(capsys, [*EXPLAIN, "--store", "s3://b/s"], "cannot reach or write store", "endpoint")


def test_missing_credentials(tmp_path, capsys, s3_endpoint, bucket):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.pop(key, None)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    os.environ["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    refused(capsys, [*EXPLAIN, "--store", f"{bucket}/s"], "credentials")


# --- clusters and Prefect -------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_refused_before_anything_is_written(tmp_path, capsys):
    spec = spec_file(tmp_path, cluster=f"tcp://127.0.0.1:{_closed_port()}")
    refused(capsys, ["audit", spec, "--quiet"], "cannot reach the Dask scheduler", "dask worker")
    assert not (tmp_path / "a").exists()


def test_a_cuda_cluster_without_gpus(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(capsys, ["audit", spec_file(tmp_path, cluster="cuda"), "--quiet"], "NVML finds no GPU")


def test_deploy_needs_a_prefect_api_that_answers(tmp_path, capsys):
    os.environ.pop("PREFECT_API_URL", None)
    refused(capsys, ["deploy", spec_file(tmp_path), "--name", "n"], "PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_closed_port()}/api"
    refused(capsys, ["deploy", spec_file(tmp_path), "--name", "n"], "does not answer")


def test_a_temporary_server_that_does_not_start_in_time_names_the_fix(tmp_path, capsys):
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "0.2"
    refused(
        capsys,
        ["audit", spec_file(tmp_path), "--quiet"],
        "did not answer within",
        "PREFECT_API_URL",
    )


def test_a_refusal_inside_the_flow_is_one_line_without_prefects_traceback(store, tmp_path, capsys):
    """With lease_wait the busy store is refused by the flow itself, after its wait."""
    from salaudit.store.lease import Lease

    before = arrays(store)
    spec = spec_file(
        tmp_path, store={"url": str(store)}, selection={"n": 4}, shard_size=2, lease_wait=1
    )
    lease = Lease(str(store)).acquire(holder="someone else's audit")
    try:
        err = refused(capsys, ["audit", spec, "--quiet"], "in use by another audit")
    finally:
        lease.release()
    assert "ERROR" not in err
    assert same(before, arrays(store))


def test_metrics_keep_the_baseline_they_were_computed_with(store, capsys, tmp_path):
    """A store scored under the mean baseline records it and refuses another; a fresh one
    scored under zero records zero, and its fidelity differs."""
    import xarray as xr

    before = zarr.open_group(str(store), mode="r")["metrics/fidelity"][:]
    argv = ["evaluate", "--store", str(store), "--metrics", "fidelity", "--quiet"]
    refused(capsys, [*argv, "--baseline", "zero"], "under the mean baseline", "asks zero")
    np.testing.assert_array_equal(
        zarr.open_group(str(store), mode="r")["metrics/fidelity"][:], before
    )
    assert xr.open_zarr(str(store), group="metrics").attrs["metric_baseline"] == "mean"

    other = tmp_path / "zero"
    assert main([*EXPLAIN, "--store", str(other)]) == 0
    assert main(["evaluate", "--store", str(other), "--metrics", "fidelity", "--quiet",
                 "--baseline", "zero"]) == 0  # fmt: skip
    assert main(["evaluate", "--store", str(other), "--metrics", "fidelity", "--quiet"]) == 0
    metrics = xr.open_zarr(str(other), group="metrics")
    assert metrics.attrs["metric_baseline"] == "zero"
    assert not np.allclose(metrics["fidelity"].values, before)

"""The orchestrated audit: spec, lease, plan, and the flow on real Dask workers, a real Prefect
API and a real S3 server (moto's)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

# Imported here, at collection, on purpose: Prefect binds its console log handler to the
# sys.stderr of the moment it is first imported. Imported inside a test using capsys, that is
# the test's capture stream, closed afterwards, and every later flow fails logging to it.
from salaudit.errors import AuditFailed, SalauditError
from salaudit.flows.audit import run_audit
from salaudit.flows.cluster import cluster_environment
from salaudit.pipeline.audit import Stage, Unit, audit_direct, prepare_audit
from salaudit.pipeline.spec import load_spec, parse_spec
from salaudit.store.lease import Lease, StoreBusy
from salaudit.store.store import Store

SMALL = {
    "selection": {"mode": "random", "n": 8},
    "methods": {"grad": {}, "ig": {"n_steps": 4}, "dance-grad": {}},
    "decoys": {"dance": {"stride": 3}},
    "attacks": ["topk@grad", "pgd"],
    "attack_params": {"topk": {"steps": 5}, "pgd": {"steps": 3}},
    "radii": [8],
    "metrics": ["fidelity", "sensitivity", "retrieval"],
    "shard_size": 4,
    "cluster": "local",
    "workers": 2,
    "retries": 0,
}


def small(url: str, **changes) -> dict:
    return {**SMALL, "store": {"url": url}, **changes}


# --- the spec ----------------------------------------------------------------------------------


def test_default_spec_parses_and_init_writes_it(tmp_path):
    from salaudit.flows.cli import main

    spec = load_spec(None)
    assert spec.attacks and spec.methods and spec.store.url == "runs/audit"
    path = tmp_path / "audit.yaml"
    assert main(["init", str(path)]) == 0
    assert load_spec(path) == spec
    assert main(["init", str(path)]) == 2  # never overwrites without --force


@pytest.mark.parametrize(
    "change, words",
    [
        ({"selection": {"mode": "sorted"}}, ["selection.mode", "'first', 'random' or"]),
        ({"shard_size": 0}, ["shard_size", "greater than or equal to 1"]),
        ({"colour": "red"}, ["colour", "unknown field", "valid fields", "shard_size"]),
        ({"methods": {"gradd": {}}}, ["methods", "unknown method 'gradd'", "valid"]),
        ({"methods": {"ig": {"steps": 3}}}, ["unknown parameter", "n_steps"]),
        ({"attacks": ["topk@relex"]}, ["attacks", "no differentiable path", "grad"]),
        ({"metrics": ["beauty"]}, ["metrics", "beauty", "fidelity"]),
        ({"cluster": "big"}, ["cluster", "auto, local, cuda", "tcp://"]),
        ({"store": {"url": "s3://b/x", "storage_options": {"secret": "s"}}}, ["AWS_SECRET"]),
        ({"decoys": {"blur": {}}}, ["decoys", "blur", "no method uses"]),
        ({"decoys": {"dance": {"stride": 9}}}, ["methods.dance-grad", "stride 9", "patch size"]),
    ],
)
def test_spec_errors_name_the_field_and_what_it_allows(change, words):
    with pytest.raises(SalauditError) as info:
        parse_spec({**SMALL, **change})
    for word in words:
        assert word in str(info.value), str(info.value)


def test_spec_file_errors(tmp_path):
    with pytest.raises(SalauditError, match="salaudit init"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(SalauditError, match="mapping"):
        load_spec(tmp_path / "bad.yaml")


def test_plan_units_and_their_dependencies(tmp_path):
    run, plan = prepare_audit(parse_spec(small(str(tmp_path / "s"))), progress=False)
    units = plan.units()
    assert plan.regions == [(0, 4), (4, 8)]
    assert set(plan.groups) == {"grad", "ig", "decoys-dance"}
    assert len(units) == 2 * (1 + 3 + 2 + 1)
    metrics = next(u for u in units if u.stage is Stage.METRICS and u.start == 4)
    assert {u.kind for u in plan.needs(metrics)} == {
        "inputs",
        "maps:grad",
        "maps:ig",
        "maps:decoys-dance",
        "attack:topk@grad",
        "attack:pgd",
    }
    assert all(u.start == 4 for u in plan.needs(metrics))
    assert plan.needs(Unit(Stage.ATTACK, 0, 4, "pgd")) == [Unit(Stage.INPUTS, 0, 4)]
    for u in units:  # every unit comes after what it needs
        assert all(units.index(d) < units.index(u) for d in plan.needs(u))
    # the template is laid out and nothing is computed
    assert run.store.has("attacks/pgd/image") and run.store.has("metrics/fidelity")
    assert not run.store.done_regions("inputs")


def test_cli_plan_prints_shards_passes_time_and_size(tmp_path, capsys):
    from salaudit.flows.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(small(str(tmp_path / "never-written"))))
    assert main(["plan", str(path), "--samples", "1000"]) == 0
    out = capsys.readouterr().out
    for words in ("audit of 1000 samples", "250 shards", "objects as written", "calibrated in"):
        assert words in out
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    for words in ("2 shards", "14 units (tasks)", "images", "estimated time", "storage"):
        assert words in out
    assert not (tmp_path / "never-written").exists()
    assert main(["plan", str(path), "--samples", "0"]) == 2
    assert "--samples 0: give a number of samples of at least 1" in capsys.readouterr().err


def test_a_missing_bucket_fails_before_any_work(bucket):
    from salaudit.store.store import check_reachable

    with pytest.raises(SalauditError, match="bucket 'no-such-bucket' .* does not exist"):
        check_reachable("s3://no-such-bucket/audit")
    check_reachable(f"{bucket}/audit")  # there: no error


@pytest.mark.slow  # botocore retries the connection for about 15 s
def test_an_unreachable_endpoint_or_missing_credentials_fail_naming_the_fix(monkeypatch):
    import s3fs

    from salaudit.store.store import check_reachable

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    closed = {"endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(
        SalauditError, match="(?s)cannot reach or write store.*EndpointConnection.*endpoint"
    ):
        check_reachable("s3://b/x", closed)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    s3fs.S3FileSystem.clear_instance_cache()  # the first call's file system held credentials
    with pytest.raises(SalauditError, match="NoCredentialsError.*AWS_ACCESS_KEY_ID"):
        check_reachable("s3://b/x", closed)


# --- the lease -----------------------------------------------------------------------------------


def check_lease(url: str) -> None:
    first = Lease(url).acquire(holder="first")
    with pytest.raises(StoreBusy, match="in use by another audit.*first"):
        Lease(url).acquire(wait=0, holder="second")
    first.release()
    second = Lease(url).acquire(holder="second")
    assert second.read()["holder"] == "second"
    second.release()
    assert Lease(url).read() is None


def test_lease_local(tmp_path):
    check_lease(str(tmp_path / "store"))


def test_lease_on_s3(bucket):
    check_lease(f"{bucket}/store")


def test_lease_waits_for_its_holder_and_takes_over_an_expired_one(tmp_path):
    url = str(tmp_path / "store")
    first = Lease(url).acquire(holder="first")
    threading.Timer(1.5, first.release).start()
    stamp = time.monotonic()
    Lease(url).acquire(wait=30, holder="second").release()
    assert time.monotonic() - stamp >= 1.0
    crashed = Lease(url, ttl=0.5).acquire(holder="crashed")
    crashed._stop.set()  # it stops renewing, as a killed process would
    time.sleep(1.0)
    Lease(url).acquire(wait=0, holder="next").release()


def test_fresh_keeps_the_lease(tmp_path):
    url = str(tmp_path / "store")
    Store.open(url, {"seed": 0})
    lease = Lease(url).acquire(holder="me")
    Store.open(url, {"seed": 1}, fresh=True)
    assert Lease(url).read()["holder"] == "me"
    assert Store(url).attrs()["seed"] == 1
    lease.release()


# --- the flow on real workers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api():
    """A real Prefect API (a temporary server) that the flow and its workers report to."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
        yield PREFECT_API_URL.value()
        os.environ.pop("PREFECT_API_URL")


def run_flow(spec: dict, fresh: bool = False) -> dict:
    return run_audit(parse_spec(spec), fresh=fresh, progress=False)


def open_tree(url: str) -> xr.DataTree:
    return xr.open_datatree(url, engine="zarr", chunks=None)


def assert_same_store(a: str, b: str) -> None:
    """Every variable of every group equal within 1e-4 (relative), NaNs in the same places."""
    ta, tb = open_tree(a), open_tree(b)
    groups = sorted(g for g in ta.groups if ta[g].ds.data_vars)
    assert groups == sorted(g for g in tb.groups if tb[g].ds.data_vars)
    for g in groups:
        for name, va in ta[g].ds.data_vars.items():
            vb = tb[g].ds[name]
            if va.dtype.kind in "fc":
                np.testing.assert_allclose(va.values, vb.values, rtol=1e-4, atol=1e-6, err_msg=g)
            else:
                np.testing.assert_array_equal(va.values, vb.values, err_msg=f"{g}/{name}")


@pytest.fixture(scope="module")
def direct_store(tmp_path_factory):
    """The same audit through the library directly, in this process."""
    url = str(tmp_path_factory.mktemp("direct") / "store")
    audit_direct(parse_spec(small(url)), progress=False)
    return url


def marker_times(url: str) -> dict[str, float]:
    store = Store(url)
    files = store.fs.find(f"{store.path}/_salaudit/done")
    return {f: json.loads(store.fs.cat_file(f))["time"] for f in files}


@pytest.mark.slow
def test_flow_on_two_workers_into_s3_equals_the_library(prefect_api, bucket, direct_store):
    from prefect import get_client

    url = f"{bucket}/audit"
    environment = dict(os.environ)
    out = run_flow(small(url))
    assert out["failed"] == {} and out["samples"] == 8
    assert dict(os.environ) == environment  # no OMP_NUM_THREADS=1 left by the nanny
    assert len(out["recomputed_units"]) == 14
    tree = open_tree(url)  # plain xarray on the object store
    assert tree["maps"].ds["dance-grad"].shape == (8, 3, 32, 32)
    assert set(tree["metrics"].ds["method"].values) == {"grad", "ig", "dance-grad"}
    assert_same_store(url, direct_store)
    # the units ran on two worker processes and reported to the flow's API
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
        names = {r.name for r in runs}
        assert {"inputs[0:4]", "maps:decoys-dance[4:8]", "metrics[0:4]"} <= names
        artifacts = {a.key: a for a in client.read_artifacts()}
        assert {"salaudit-progress", "salaudit-report", "salaudit-fidelity"} <= set(artifacts)
        assert {"salaudit-sensitivity", "salaudit-retrieval-adv"} <= set(artifacts)
        # each unit's own progress: its shards and the rows through the model, counted
        units = [a.description or "" for a in client.read_artifacts() if a.type == "progress"]
        shown = re.compile(
            r"maps:decoys-dance\[4:8\]: \d+/\d+ shards, [\d,]+ rows through the model"
        )
        assert any(shown.fullmatch(d) for d in units), units
        headline = artifacts["salaudit-report"].data
        assert f"{url}-report/index.html" in headline and "| dance-grad | " in headline
        fidelity = json.loads(artifacts["salaudit-fidelity"].data)
        assert {r["method"] for r in fidelity} == {"grad", "ig", "dance-grad"}
        assert next(r for r in fidelity if r["method"] == "dance-grad")["compared_with"] == "grad"
    # the report lies beside the store on the object store, its figures with it
    assert out["report"] == f"{url}-report/index.html"
    fs = Store(url).fs
    page = fs.cat_file(out["report"].removeprefix("s3://")).decode()
    assert "None: every unit completed." in page and "dance-grad − grad" in page
    figures = fs.ls(f"{url.removeprefix('s3://')}-report/figures", detail=False)
    assert {"maps", "robustness.png", "box-fidelity.png"} <= {f.rsplit("/", 1)[1] for f in figures}
    tiles = fs.ls(f"{url.removeprefix('s3://')}-report/figures/maps", detail=False)
    assert {"0-image.png", "0-0.png"} <= {f.rsplit("/", 1)[1] for f in tiles}


@pytest.mark.slow
def test_a_failed_shard_leaves_the_rest_and_a_rerun_recomputes_only_it(
    prefect_api, tmp_path, monkeypatch, dataset
):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from salaudit.inputs.selection import Selection, select_samples

    spec = small(
        str(tmp_path / "store"),
        model="python:support:poisoned_cnn",
        methods={"grad": {}, "ig": {"n_steps": 4}},
        decoys={},
        attacks=["topk@grad"],
        metrics=["fidelity", "sensitivity"],
    )
    poisoned = select_samples(dataset, Selection("random", 8, seed=0))[5]  # in shard [4, 8)
    flag = tmp_path / "poison.json"
    flag.write_text(json.dumps([float(dataset.load([poisoned]).image.sum())]))
    monkeypatch.setenv("SALAUDIT_TEST_POISON", str(flag))
    failure = r"(?s)5 of 10 units failed.*inputs\[4:8\]: RuntimeError: poisoned"
    with pytest.raises(AuditFailed, match=failure):
        run_flow(spec)
    store = Store(spec["store"]["url"])
    assert store.done_regions("inputs") == [(0, 4)]
    report = Path(f"{store.url}-report/index.html").read_text()  # the failures, reported
    assert "inputs[4:8]" in report and "RuntimeError: poisoned image" in report
    assert store.audit_records()[-1]["failed"]["inputs[4:8]"].startswith("RuntimeError")
    assert store.done_regions("metrics/fidelity/grad") == [(0, 4)]
    first = marker_times(store.url)
    flag.unlink()
    out = run_flow(spec)
    assert all(u.endswith("[4:8]") for u in out["recomputed_units"])
    second = marker_times(store.url)
    assert all(second[f] == t for f, t in first.items())  # shard [0, 4) untouched

    def regions(markers):  # region markers: not the coordinates' (layout) or the statistics'
        return [f for f in markers if "/done/layout/" not in f and "/done/stats/" not in f]

    assert len(regions(second)) == 2 * len(regions(first))
    out = run_flow(spec)
    assert out["recomputed_units"] == [] and marker_times(store.url) == second
    assert out["submitted"] == 0  # a finished audit submits nothing: the store says it is done
    with get_client(sync_client=True) as client:
        record = store.audit_records()[-1]
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[record["flow_run"]["id"]]))
        )
        assert [r.name.rsplit("-", 1)[0] for r in runs] == ["report"]  # no unit's task run


@pytest.mark.slow
def test_two_audits_at_once_one_refuses_and_neither_corrupts(tmp_path, direct_store):
    url = str(tmp_path / "store")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(small(url), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("PREFECT_API_URL", None)  # each starts its own temporary API, as a user's would
    cmd = [sys.executable, "-m", "salaudit.flows.cli", "audit", str(path), "--quiet"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errors = "".join(err for _, err in outs)
    assert codes == [0, 2], errors
    assert "in use by another audit" in errors
    assert_same_store(url, direct_store)


@pytest.mark.slow
def test_local_workers_keep_malloc_defaults_and_the_environment_is_restored():
    from distributed import Client, LocalCluster

    before = dict(os.environ)
    with (
        cluster_environment(),
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        worker_env = next(iter(client.run(lambda: dict(os.environ)).values()))
    assert "MALLOC_TRIM_THRESHOLD_" not in worker_env  # torch ~1.4x slower with it
    assert worker_env["OMP_NUM_THREADS"] == "1"  # the rest of Dask's settings stay
    assert dict(os.environ) == before


@pytest.fixture
def external_cluster(tmp_path):
    """A `dask scheduler` and two `dask worker` processes (no nanny: a kill is final), one
    torch thread each so they share the cores."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [bin_dir / "dask", "scheduler", "--port", str(port), "--no-dashboard"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [
                    bin_dir / "dask",
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
    yield address, procs[1:]
    for p in procs:
        p.kill()
        p.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_external_scheduler_gives_the_same_store(
    prefect_api, external_cluster, tmp_path, direct_store
):
    address, _ = external_cluster
    url = str(tmp_path / "store")
    out = run_flow(small(url, cluster=address))
    assert out["failed"] == {}
    assert_same_store(url, direct_store)


@pytest.mark.slow
def test_a_worker_killed_mid_shard_the_audit_completes_equal(
    prefect_api, external_cluster, tmp_path, direct_store
):
    from distributed import Client

    address, workers = external_cluster
    url = str(tmp_path / "store")
    killed = {}

    def kill_a_busy_worker():
        with Client(address) as client:
            pids = client.run(os.getpid)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                busy = [w for w, tasks in client.processing().items() if tasks]
                if busy and Store(url).exists() and Store(url).done_regions("inputs"):
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed["worker"] = busy[0]
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=kill_a_busy_worker)
    thread.start()
    out = run_flow(small(url, cluster=address, retries=2))
    thread.join()
    assert killed, "no worker was busy to kill"
    assert out["failed"] == {}
    assert_same_store(url, direct_store)


@pytest.mark.slow
@pytest.mark.gpu
def test_the_audit_on_local_cuda_cluster_equals_the_cpu_library(
    prefect_api, tmp_path, direct_store
):
    import torch

    from salaudit.flows.cluster import gpu_count

    if not torch.cuda.is_available() or not gpu_count():
        pytest.skip("needs a CUDA GPU that NVML finds (dask-cuda's LocalCUDACluster)")
    url = str(tmp_path / "store")
    out = run_flow(small(url, cluster="cuda", workers=None, device="cuda"))
    assert out["failed"] == {} and out["samples"] == 8
    devices = Store(url).audit_records()[-1]["devices"]  # the GPUs' model names
    assert devices and "cpu" not in devices
    gpu, cpu = open_tree(url), open_tree(direct_store)
    for name in ("grad", "ig", "dance-grad"):  # the same maps, up to float reordering
        np.testing.assert_allclose(
            gpu["maps"].ds[name].values, cpu["maps"].ds[name].values, rtol=1e-3, atol=1e-5
        )

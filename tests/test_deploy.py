"""Scheduled audits against real servers on localhost: `prefect server start` (SQLite), process
workers started here, the Prefect UI in headless Chromium, and moto's S3 server for a watched
checkpoint prefix."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest
import torch
import yaml
import zarr
from browser import chromium, visit

from salaudit.store.store import Store

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
POOL = "salaudit-test"
SPEC = {
    "selection": {"mode": "random", "n": 4},
    "methods": {"grad": {}, "ig": {"n_steps": 4}},
    "metrics": ["fidelity"],
    "shard_size": 4,
    "cluster": "local",
    "workers": 1,
    "retries": 0,
}
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free port with its own SQLite database; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api,  # the UI's pages call this API (default: port 4200)
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 (open while the server runs)
    proc = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()}")
        time.sleep(1)
    yield api
    proc.terminate()
    proc.wait(30)
    log.close()


def environment(api: str, home: Path) -> dict[str, str]:
    """The environment of the CLI and worker processes: this API, a profile of their own."""
    return {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(home),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def run(args: list, env: dict[str, str], timeout: float = 120) -> str:
    out = subprocess.run(
        [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


@contextlib.contextmanager
def client(api: str):
    """A Prefect client of the server at `api`, in this process."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as c:
        yield c


def deploy_and_run_once(env, spec_path: Path, name: str, *options: str) -> UUID:
    """`salaudit deploy`, `prefect deployment run`, then a process worker's --run-once."""
    out = run(
        [BIN / "salaudit", "deploy", spec_path, "--name", name, "--pool", POOL, *options], env
    )
    assert f"in work pool {POOL}" in out
    out = run([BIN / "prefect", "deployment", "run", f"salaudit-scheduled-audit/{name}"], env)
    run_id = UUID(re.search(r"UUID: ([0-9a-f-]{36})", out).group(1))
    run([BIN / "prefect", "worker", "start", "--pool", POOL, "--run-once"], env, timeout=600)
    return run_id


def audit_subflow(api: str, run_id: UUID):
    """The `salaudit-audit` flow run that the scheduled run started."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with client(api) as c:
        children = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
            )
        )
    assert len(children) == 1
    return children[0]


def artifacts_of(api: str, flow_run_id: UUID) -> dict:
    with client(api) as c:
        return {a.key: a for a in c.read_artifacts() if a.flow_run_id == flow_run_id}


@pytest.fixture(scope="module")
def nightly(server, tmp_path_factory):
    """A cron deployment of a small audit, run once by a process worker."""
    root = tmp_path_factory.mktemp("nightly")
    env = environment(server, root / "home")
    spec = {**SPEC, "store": {"url": str(root / "store")}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_id = deploy_and_run_once(env, root / "spec.yaml", "nightly", "--cron", "0 2 * * *")
    return {"run_id": run_id, "store": str(root / "store"), "env": env, "root": root}


def test_deploy_creates_a_cron_deployment_with_a_concurrency_limit(server, nightly):
    with client(server) as c:
        d = c.read_deployment_by_name("salaudit-scheduled-audit/nightly")
        pool = c.read_work_pool(POOL)
    assert [s.schedule.cron for s in d.schedules] == ["0 2 * * *"]
    assert d.global_concurrency_limit.limit == 1
    assert d.work_pool_name == POOL and pool.type == "process"
    assert d.entrypoint == "salaudit.flows.deploy.scheduled_audit"
    assert d.parameters["spec"]["store"]["url"] == nightly["store"]


def test_a_worker_runs_the_deployment_to_completed_with_its_artifacts(server, nightly):
    with client(server) as c:
        parent = c.read_flow_run(nightly["run_id"])
    assert parent.state.type.value == "COMPLETED", parent.state
    child = audit_subflow(server, nightly["run_id"])
    assert child.state.type.value == "COMPLETED"
    artifacts = artifacts_of(server, child.id)
    assert {"salaudit-progress", "salaudit-report", "salaudit-fidelity"} <= set(artifacts)
    report = f"{nightly['store']}-report/index.html"
    assert report in artifacts["salaudit-report"].data and Path(report).is_file()
    assert "| grad |" in artifacts["salaudit-report"].data
    maps = Store(nightly["store"]).dataset("maps")
    assert maps["ig"].shape == (4, 3, 32, 32) and np.isfinite(maps["ig"].values).all()


def test_the_run_and_its_artifacts_in_the_prefect_ui(server, nightly, tmp_path):
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium (.ci/run installs it)")
        pytest.skip("no /usr/bin/chromium here: apt-get install chromium")
    ui = server.removesuffix("/api")
    child = audit_subflow(server, nightly["run_id"])
    page = visit(
        f"{ui}/runs/flow-run/{child.id}",
        tmp_path / "run.png",
        height=1000,
        steps=(("wait", child.name), ("click", "Artifacts"), ("wait", "salaudit-report")),
    )
    assert "Completed" in page.text and "salaudit-progress" in page.text
    assert "salaudit-fidelity" in page.text and "Parent Run" in page.text
    assert (tmp_path / "run.png").stat().st_size > 20_000
    if os.environ.get("SALAUDIT_UI_SCREENSHOT"):  # docs/prefect-ui-run.png is made this way
        shutil.copy(tmp_path / "run.png", os.environ["SALAUDIT_UI_SCREENSHOT"])
    with client(server) as c:
        parent = c.read_flow_run(nightly["run_id"])
    page = visit(f"{ui}/runs/flow-run/{parent.id}", steps=(("wait", parent.name),))
    assert "Completed" in page.text


def test_a_regression_against_the_baseline_fails_the_run_and_the_cli(server, nightly):
    root = nightly["root"]
    baseline = str(root / "baseline")  # the same audit, with a planted better fidelity for grad
    shutil.copytree(nightly["store"], baseline)
    metrics = zarr.open_group(baseline, mode="r+")["metrics"]
    grad = [str(m) for m in metrics["method"][:]].index("grad")
    values = metrics["fidelity"][:]
    values[:, grad] -= 0.3 + np.random.default_rng(0).normal(0, 0.02, values.shape[0])
    metrics["fidelity"][:] = values
    compare = {"baseline": baseline, "thresholds": {"fidelity": 0.1}}
    spec = {**SPEC, "store": {"url": nightly["store"]}, "compare": compare}
    (root / "gate.yaml").write_text(yaml.safe_dump(spec))

    run_id = deploy_and_run_once(nightly["env"], root / "gate.yaml", "gate")
    with client(server) as c:
        assert c.read_flow_run(run_id).state.type.value == "FAILED"
    child = audit_subflow(server, run_id)
    assert child.state.type.value == "FAILED" and "fidelity grad" in child.state.message
    comparison = artifacts_of(server, child.id)["salaudit-comparison"].data
    assert "1 regression(s): fidelity grad: worse by" in comparison
    row = next(line for line in comparison.splitlines() if line.startswith("| fidelity |  | grad"))
    assert row.endswith("| **yes** |")
    # the same spec through `salaudit audit`: a release gate's non-zero exit code
    out = subprocess.run(
        [BIN / "salaudit", "audit", root / "gate.yaml", "--quiet"],
        env=nightly["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 1, out.stderr
    assert "salaudit: regression:" in out.stderr and "fidelity grad" in out.stderr


def test_deploy_refuses_a_bad_cron_and_a_missing_server(server, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = environment(server, tmp_path / "home")
    args = [BIN / "salaudit", "deploy", spec, "--name", "x", "--cron", "every night"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--cron 'every night' is not a cron expression" in out.stderr
    env.pop("PREFECT_API_URL")
    out = subprocess.run(args[:-2], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "set PREFECT_API_URL" in out.stderr


def test_a_new_checkpoint_under_a_watched_prefix_triggers_an_audit(server, bucket, tmp_path):
    from salaudit.inputs.training import builtin_checkpoint
    from salaudit.store.store import Store as S

    env = environment(server, tmp_path / "home")
    fs = S(bucket).fs
    ckpt = tmp_path / "ckpt.pt"
    torch.save(builtin_checkpoint("digit-scenes-cnn"), ckpt)
    fs.put(str(ckpt), f"{bucket}/checkpoints/old.pt")  # there before: never audited
    spec = {
        **SPEC,
        "model": "builtin:digit-scenes-cnn?weights={checkpoint}",
        "store": {"url": f"{bucket}/audits/{{checkpoint_name}}"},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run(
        [BIN / "salaudit", "deploy", tmp_path / "spec.yaml", "--name", "on-checkpoint"]
        + ["--pool", POOL, "--watch", f"{bucket}/checkpoints", "--every", "3600"],
        env,
    )
    with client(server) as c:
        audit = c.read_deployment_by_name("salaudit-scheduled-audit/on-checkpoint")
        watcher = c.read_deployment_by_name("salaudit-watch-checkpoints/on-checkpoint-watch")
        automations = c.read_resource_related_automations(f"prefect.deployment.{audit.id}")
    assert [s.schedule.interval.total_seconds() for s in watcher.schedules] == [3600]
    assert [a.trigger.expect for a in automations] == [{"salaudit.checkpoint.created"}]

    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 (open while the worker runs)
    worker = subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", POOL],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        fs.put(str(ckpt), f"{bucket}/checkpoints/epoch-2.pt")
        run(
            [
                BIN / "prefect",
                "deployment",
                "run",
                "salaudit-watch-checkpoints/on-checkpoint-watch",
            ],
            env,
        )
        triggered = wait_for_a_final_run(server, audit.id, timeout=420)
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
    assert triggered.state.type.value == "COMPLETED", (tmp_path / "worker.log").read_text()
    assert triggered.parameters["checkpoint"] == f"{bucket}/checkpoints/epoch-2.pt"
    maps = S(f"{bucket}/audits/epoch-2").dataset("maps")
    assert maps["grad"].shape == (4, 3, 32, 32)
    assert not fs.exists(f"{bucket}/audits/old")


def wait_for_a_final_run(api: str, deployment_id: UUID, timeout: float):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with client(api) as c:
            runs = c.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
        done = [r for r in runs if r.state and r.state.type.value in FINAL]
        if done:
            return done[0]
        time.sleep(2)
    pytest.fail(f"no run of deployment {deployment_id} finished in {timeout:.0f} s")


def test_serve_registers_its_schedule_and_runs_until_stopped(server, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "store": {"url": "relative/store"}}))
    env = environment(server, tmp_path / "home")
    args = [BIN / "salaudit", "serve", spec, "--name", "served", "--cron", "0 3 * * *"]
    proc = subprocess.Popen([str(a) for a in args], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            with client(server) as c:
                try:
                    d = c.read_deployment_by_name("salaudit-scheduled-audit/served")
                    break
                except Exception:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
            time.sleep(1)
        assert [s.schedule.cron for s in d.schedules] == ["0 3 * * *"]
        assert d.parameters["spec"]["store"]["url"] == str(tmp_path / "relative/store")
        assert proc.poll() is None  # it serves until stopped
    finally:
        proc.terminate()
        proc.wait(60)

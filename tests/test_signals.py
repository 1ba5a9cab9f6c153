"""Signals: kill -9 of `salaudit audit` leaves none of the processes it started (the temporary
Prefect server, Dask's workers) running; Ctrl-C ends a run with one line, no traceback, and
a later run finishes what it left, equal to a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

SCRIPT = Path(sys.executable).parent / "salaudit"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_kill_9_of_an_audit_leaves_none_of_its_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    audit = subprocess.Popen(
        [str(SCRIPT), "audit", "--limit", "4", "--store", str(tmp_path / "s"), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started, seen = time.monotonic(), {}
    while time.monotonic() - started < 240:  # until the server and both workers run
        children = psutil.Process(audit.pid).children(recursive=True)
        seen |= {p.pid: " ".join(p.cmdline()) for p in children if alive(p.pid)}
        names = " ".join(seen.values())
        if "uvicorn" in names and names.count("multiprocessing") + names.count("spawn") >= 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the audit never started its server and workers: {seen}")
    audit.send_signal(signal.SIGKILL)
    audit.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in seen):
        time.sleep(0.5)
    left = {pid: cmd for pid, cmd in seen.items() if alive(pid)}
    assert not left, f"still running after kill -9 of the audit: {left}"


def arrays(url) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(url), mode="r")
    return {p: n[...] for p, n in root.members(max_depth=None) if isinstance(n, zarr.Array)}


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_and_a_rerun_finishes_the_store(tmp_path):
    args = ["explain", "--methods", "grad,smoothgrad,dance-grad", "--limit", "6"]
    args += ["--shard-size", "2", "--decoy", "dance.stride=3", "--quiet"]
    store = tmp_path / "s"
    run = subprocess.Popen(
        [str(SCRIPT), *args, "--store", str(store)], stderr=subprocess.PIPE, text=True
    )
    while not (store / "_salaudit/done/maps/smoothgrad").exists():  # mid-run
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    err = run.communicate(timeout=60)[1]
    assert run.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("salaudit: interrupted")
    done = subprocess.run([str(SCRIPT), *args, "--store", str(store)], capture_output=True)
    assert done.returncode == 0, done.stderr
    clean_store = tmp_path / "c"
    clean = subprocess.run([str(SCRIPT), *args, "--store", str(clean_store)], capture_output=True)
    assert clean.returncode == 0
    a, b = arrays(store), arrays(tmp_path / "c")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k

"""The Prefect task of an audit: one unit (a stage on one shard of samples) on a Dask worker.

The task takes the spec, the unit's stage and index range and the store's identity, never
arrays; it attaches to the store once per worker process (the model loads once), fills its
region, writes done-markers and returns a small dict. Transient faults (object storage, a lost
worker, CUDA out of memory, retried with half the micro-batch) are retried with jitter; bad
input fails at once. The cache key covers the code, the model and data fingerprints, the
spec's method configuration, the store (and its generation) and the region.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.runtime import task_run

from salaudit.errors import SalauditError
from salaudit.pipeline.audit import AuditPlan, Unit, attach_audit, device_name, run_unit
from salaudit.pipeline.run import Run
from salaudit.pipeline.spec import AuditSpec
from salaudit.version import __version__

NOT_IDENTITY = {"cluster", "workers", "device", "retries", "lease_wait", "report"}
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
TRANSIENT_NAMES = {
    "KilledWorker",
    "CommClosedError",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ResponseStreamingError",
}


@cache
def code_version() -> str:
    """The package version and a digest of the library's and the tasks' source (every module of
    every subpackage): a changed line is another version."""
    digest = hashlib.sha256(__version__.encode())
    for package in ("salaudit", "salaudit.tasks"):
        folder = Path(__import__(package, fromlist=["_"]).__file__).parent
        for path in sorted(folder.rglob("*.py")):
            inside = path.relative_to(folder)
            if package == "salaudit" and inside.parts[0] in ("tasks", "flows"):
                continue  # a wheel puts them inside the package: tasks counted on their own
            digest.update(str(inside).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def unit_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    """Path-safe (hex only): code, fingerprints, store generation, method config, region."""
    spec = {k: v for k, v in parameters["spec"].items() if k not in NOT_IDENTITY}
    spec["store"] = parameters["spec"]["store"]["url"]
    payload = [code_version(), parameters["identity"], spec, parameters["unit"]]
    return "salaudit-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_transient(error: BaseException) -> bool:
    """Whether a retry may succeed: storage and network faults, a lost worker, GPU memory."""
    if isinstance(error, SalauditError):
        return False
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    if type(error).__name__ in TRANSIENT_NAMES:
        return True
    if isinstance(error, OSError):
        return not isinstance(error, PERMANENT_OS_ERRORS)
    return isinstance(error, (ConnectionError, TimeoutError))


def retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as error:  # the task's own exception
        return is_transient(error)
    return False


@cache
def _attached(spec_json: str) -> tuple[Run, AuditPlan]:
    """The run and plan of a spec in this worker process: the model and data load once, the
    audit is planned once."""
    return attach_audit(AuditSpec.model_validate_json(spec_json))


def _set_threads(threads: int | None) -> None:
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@task(
    name="audit-unit",
    task_run_name="{unit[label]}",
    cache_key_fn=unit_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=2,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def audit_unit(
    spec: dict[str, Any], unit: dict[str, Any], identity: dict[str, str], threads: int | None = None
) -> dict[str, Any]:
    """Fill one unit of the audit; returns what it computed and where it ran."""
    _set_threads(threads)
    run, plan = _attached(AuditSpec.model_validate(spec).model_dump_json())
    attempt = task_run.run_count or 1
    if attempt > 1:  # a retry after CUDA ran out of memory runs in smaller micro-batches
        run = dataclasses.replace(run, micro_batch=max(1, run.micro_batch >> (attempt - 1)))
    out = run_unit(run, plan, Unit.from_dict(unit))
    return {**out, "pid": os.getpid(), "attempt": attempt, "device": device_name(run.device)}


@task(name="report", persist_result=False)
def write_report_task(url: str, out: str, storage_options: dict[str, Any] | None = None):
    """The audit's HTML report (in the flow's process: it reads only the store)."""
    from salaudit.report.html import write_report

    return write_report(url, out, storage_options)

"""The Prefect task of an audit: one unit (a stage on one or several shards) on a Dask worker.

The task takes the spec as one JSON string (parsed once per worker process, where the model
loads once), the unit and the store's identity, never arrays; it fills the unit's shards,
writes their done-markers and returns a small dict. The store's done-markers, not a Prefect
cache, say what is done: the flow submits only what is missing, and no result is persisted.
Transient faults (object storage, a lost worker, CUDA out of memory, retried with half the
micro-batch) are retried with jitter; bad input fails at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import cache
from typing import Any

import torch
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import task_run

from salaudit.errors import SalauditError
from salaudit.pipeline.audit import AuditPlan, Unit, attach_audit, device_name, run_unit
from salaudit.pipeline.run import Run
from salaudit.pipeline.spec import AuditSpec

PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
TRANSIENT_NAMES = {
    "KilledWorker",
    "CommClosedError",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ResponseStreamingError",
}


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
def _attached(spec_json: str, identity_json: str) -> tuple[Run, AuditPlan]:
    """The run and plan of a spec in this worker process: the model and data load once, the
    audit is planned once."""
    spec = AuditSpec.model_validate_json(spec_json)
    return attach_audit(spec, identity=json.loads(identity_json))


def _set_threads(threads: int | None) -> None:
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@task(
    name="audit-unit",
    task_run_name="{unit[label]}",
    persist_result=False,
    retries=2,
    retry_delay_seconds=2,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def audit_unit(
    spec: str, unit: dict[str, Any], identity: str, threads: int | None = None
) -> dict[str, Any]:
    """Fill one unit of the audit (`spec` and `identity` as JSON); returns what it computed and
    where it ran."""
    _set_threads(threads)
    run, plan = _attached(spec, identity)
    attempt = task_run.run_count or 1
    if attempt > 1:  # a retry after CUDA ran out of memory runs in smaller micro-batches
        run = dataclasses.replace(run, micro_batch=max(1, run.micro_batch >> (attempt - 1)))
    out = run_unit(run, plan, Unit.from_dict(unit), UnitProgress(unit["label"]))
    return {**out, "pid": os.getpid(), "attempt": attempt, "device": device_name(run.device)}


class UnitProgress:
    """The unit's own progress artifact in the Prefect UI: shards done, and rows through the
    model as they go (a long shard shows its rows counting up); created on the first report."""

    def __init__(self, label: str):
        self.label, self.id = label, None

    def __call__(self, rows: int, done: int, shards: int) -> None:
        percent = 100.0 * done / max(1, shards)
        text = f"{self.label}: {done}/{shards} shards, {rows:,} rows through the model"
        if self.id is None:
            self.id = create_progress_artifact(percent, description=text)
        else:
            update_progress_artifact(self.id, percent, description=text)


@task(name="report", persist_result=False)
def write_report_task(url: str, out: str, storage_options: dict[str, Any] | None = None):
    """The audit's HTML report (in the flow's process: it reads only the store)."""
    from salaudit.report.html import write_report

    return write_report(url, out, storage_options)

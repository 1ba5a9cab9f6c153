"""The audit flow: one spec, prepared once, fanned out as (stage, shard) tasks over Dask.

The flow holds the store's lease, prepares the model and the store's template before any
fan-out, submits each unit once the units it reads have completed (`pipeline.scheduler`: a
failed unit skips only its own shard's dependants), updates a progress artifact as units
finish, records the audit (timings, failures, versions) in the store, computes the statistics
and ends with the report: the HTML beside the store and its artifacts (`flows.artifacts`).
"""

from __future__ import annotations

import functools
import json
import queue
import sys
import time
from collections.abc import Callable
from typing import Any

from prefect import flow
from prefect.states import Failed

from salaudit.errors import AuditFailed, RegressionFound, SalauditError
from salaudit.flows import artifacts
from salaudit.flows.cluster import (
    cluster_environment,
    describe,
    gpu_slots,
    task_runner,
    worker_count,
    worker_threads,
)
from salaudit.pipeline.audit import AuditPlan, Unit, audit_record, finish, prepare_audit
from salaudit.pipeline.checks import warnings
from salaudit.pipeline.scheduler import Scheduler
from salaudit.pipeline.spec import AuditSpec, parse_spec
from salaudit.report.compare import compare_stores, metrics_store
from salaudit.store.lease import Lease
from salaudit.store.store import Store, check_reachable
from salaudit.tasks.units import audit_unit, write_report_task


def expected_failures(fn: Callable) -> Callable:
    """A flow whose refusals (bad input, a busy store, failed units, a regression) end it in a
    Failed state with their message, not behind an ERROR-level traceback; calling the flow
    still raises them."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SalauditError, AuditFailed, RegressionFound) as error:
            return Failed(message=str(error).splitlines()[0], data=error)

    return run


@flow(name="salaudit-audit", log_prints=True)
@expected_failures
def audit(spec: dict[str, Any], fresh: bool = False, progress: bool = False) -> dict[str, Any]:
    """Audit a model as `spec` says (the fields of salaudit's audit spec)."""
    parsed = parse_spec(spec).for_checkpoint(None)  # refused while it names {checkpoint}
    check_reachable(parsed.store.url, parsed.store.storage_options)
    if parsed.compare.baseline:  # before any work: a missing baseline is bad input
        metrics_store(parsed.compare.baseline, parsed.storage_options())
    lease = Lease(parsed.store.url, parsed.store.storage_options)
    lease.acquire(parsed.lease_wait, holder=_holder())
    try:
        return _audit(parsed, fresh, progress)
    finally:
        lease.release()


def _audit(spec: AuditSpec, fresh: bool, progress: bool) -> dict[str, Any]:
    started = time.time()
    run, plan = prepare_audit(spec, fresh, progress, _workers(spec))
    attrs = run.store.attrs()
    identity = {k: attrs.get(k, "") for k in ("model_fingerprint", "data_fingerprint", "store_id")}
    results, failures = _fan_out(spec, plan, identity, run.store, progress)
    found = warnings(run.store)
    for line in found:
        print(f"salaudit: warning: {line}")
    record = audit_record(
        spec,
        started,
        results,
        failures,
        orchestrator=describe(spec),
        flow_run=artifacts.flow_run(),
        warnings=found,
    )
    run.store.record_audit(record)
    summary = {
        "store": run.store.url,
        "samples": len(run.samples),
        "units": len(plan.units()),
        "computed": sum(len(r["computed"]) for r in results.values()),
        "submitted": sum(not r.get("done") for r in results.values()) + len(failures),
        "recomputed_units": sorted(u.label for u, r in results.items() if r["computed"]),
        "failed": record["failed"],
        "notes": plan.notes,
        "repaired": run.repaired,
        "warnings": found,
        "model_fingerprint": identity["model_fingerprint"],
        "report": None,
    }
    if failures:
        lines = "\n".join(f"  {label}: {why}" for label, why in summary["failed"].items())
        try:  # the report of what is there, failures included; its own error must not hide them
            summary["report"] = _report(spec, run.store.url)
        except Exception as error:
            print(f"salaudit: the report of the failed audit failed too: {error}")
        raise AuditFailed(
            f"{len(failures)} of {summary['units']} units failed (the rest are written; "
            f"running the same audit again recomputes only what is missing):\n{lines}"
        )
    finish(run, plan, bool(summary["recomputed_units"]))
    summary["report"] = _report(spec, run.store.url)
    if spec.compare.baseline:
        summary["comparison"] = _compare(spec, run.store.url)
    return summary


def _compare(spec: AuditSpec, url: str) -> str:
    """Compare with the spec's baseline: a markdown artifact of the changes, the verdict; raises
    RegressionFound (a failed flow run) naming what regressed beyond its threshold."""
    c = spec.compare
    comparison = compare_stores(c.baseline, url, c.thresholds, c.alpha, spec.storage_options())
    artifacts.comparison_artifact(comparison, url)
    print(f"salaudit: against the baseline {c.baseline}: {comparison.verdict()}")
    if comparison.regressions:
        raise RegressionFound(f"{url} against {c.baseline}: {comparison.verdict()}")
    return comparison.verdict()


def _report(spec: AuditSpec, url: str) -> str | None:
    """The report task, then its artifacts. Returns where the report is (None: the spec asks
    for none)."""
    out = spec.report_url()
    if out is None:
        return None
    report = write_report_task(url, out, spec.storage_options())
    artifacts.report_artifacts(report, url)
    return report.location


def _workers(spec: AuditSpec) -> int:
    """The workers units are sized for: the local cluster's, or those of the scheduler."""
    from distributed import get_client

    try:
        return worker_count(spec) or len(get_client().scheduler_info()["workers"]) or 1
    except ValueError:
        return 1


def _fan_out(spec: AuditSpec, plan: AuditPlan, identity, store: Store, progress: bool):
    """Submit each unit the store's done-markers (one listing) do not vouch for, as soon as
    the units it reads have completed; a failed unit marks its dependants as not run. Returns
    every outcome (done units: nothing computed, `done`) and failure."""
    from tqdm.auto import tqdm

    units, done = plan.units(), store.done_markers()
    schedule = Scheduler(units, plan.needs)
    shown = artifacts.Progress(len(units), store.url)
    bar = tqdm(total=len(units), desc="audit", unit="unit", disable=not progress, file=sys.stderr)
    task = audit_unit.with_options(retries=spec.retries)
    payload, threads = spec.model_dump_json(), worker_threads(spec)
    identity_json = json.dumps(identity, sort_keys=True)
    finished: queue.Queue = queue.Queue()
    running: dict[Any, Unit] = {}
    results: dict[Unit, dict] = {}

    def release(ready: list[Unit]) -> None:
        while ready:
            unit = ready.pop(0)
            if plan.is_done(unit, done):  # never submitted: the store says it is complete
                results[unit] = {"stage": unit.kind, "computed": [], "done": True}
                ready += schedule.done(unit)[0]
                bar.update(1)
                continue
            future = task.submit(payload, unit.to_dict(), identity_json, threads)
            running[future] = unit
            future.add_done_callback(finished.put)

    with gpu_slots():
        release(schedule.ready())
        while running:
            future = finished.get()
            unit = running.pop(future)
            error = None
            try:
                results[unit] = future.result()
            except Exception as e:
                error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            released, skipped = schedule.done(unit, error)
            release(released)
            bar.update(1 + len(skipped))
            shown.update(len(results) + len(schedule.failed))
    shown.update(len(results) + len(schedule.failed), final=True)
    bar.close()
    return results, schedule.failed


def _holder() -> str:
    from prefect.runtime import flow_run

    return f"flow run {flow_run.name or flow_run.id}"


def run_audit(spec: AuditSpec, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the audit flow on its cluster (bad input raises before any work starts)."""
    with cluster_environment():
        return audit.with_options(task_runner=task_runner(spec))(
            spec.model_dump(mode="json"), fresh=fresh, progress=progress
        )

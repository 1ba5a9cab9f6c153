"""The audit flow: one spec, prepared once, fanned out as (stage, shard) tasks over Dask.

The flow holds the store's lease, prepares the model and the store's template before any
fan-out, submits each unit once the units it reads have completed (a failed unit skips only
its own shard's dependants), updates a progress artifact as units finish, records the audit
(timings, failures, versions) in the store, computes the statistics and ends with the report:
the HTML beside the store, a markdown artifact of its headline and a table artifact per metric.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import dask
from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect_dask import DaskTaskRunner

from salaudit.audit import AuditPlan, Unit, audit_record, finish, prepare_audit, unit_done
from salaudit.auditspec import AuditSpec, parse_spec
from salaudit.compare import compare_stores, metrics_store
from salaudit.errors import RegressionFound, SalauditError
from salaudit.lease import Lease
from salaudit.report import MetricTable, Report
from salaudit.store import check_reachable
from salaudit.tasks.units import audit_unit, write_report_task

CPU_WORKERS = 2


class AuditFailed(RuntimeError):
    """Some units failed; the others are written and a re-run recomputes only the rest."""


# --- the cluster ------------------------------------------------------------------------------


def gpu_count() -> int:
    """GPUs NVML finds (0 where there is no NVML or no GPU)."""
    try:
        from dask_cuda.utils import get_n_gpus

        return int(get_n_gpus())
    except Exception:
        return 0


def task_runner(spec: AuditSpec) -> DaskTaskRunner:
    """The Dask task runner of `spec.cluster`: dask-cuda where NVML finds GPUs, a local
    process cluster otherwise, or the scheduler at an address."""
    if "://" in spec.cluster:
        return DaskTaskRunner(address=spec.cluster)
    gpus = gpu_count()
    if spec.cluster == "cuda" and not gpus:
        raise SalauditError("cluster: cuda asked for, but NVML finds no GPU; use local or auto")
    if spec.cluster == "cuda" or (spec.cluster == "auto" and gpus):
        kwargs = {"resources": {"GPU": 1}, "threads_per_worker": 1}
        if spec.workers:
            kwargs["n_workers"] = spec.workers
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster", cluster_kwargs=kwargs)
    kwargs = {"n_workers": spec.workers or CPU_WORKERS, "threads_per_worker": 1, "processes": True}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def worker_count(spec: AuditSpec) -> int | None:
    """Worker processes of a local cluster: as asked, else one per GPU, else CPU_WORKERS
    (None: an external cluster has what it has)."""
    if "://" in spec.cluster:
        return None
    return spec.workers or gpu_count() or CPU_WORKERS


def worker_threads(spec: AuditSpec) -> int | None:
    """Torch threads per worker of a local cluster, so workers share the cores without
    oversubscribing them (None: an external cluster's workers keep their own setting)."""
    workers = worker_count(spec)
    return max(1, (os.cpu_count() or 1) // workers) if workers else None


def _gpu_slots() -> contextlib.AbstractContextManager:
    """One unit per GPU where every worker declares `GPU` (dask-cuda workers here, or
    `dask worker --resources GPU=1`); no annotation otherwise, so nothing waits forever."""
    from distributed import get_client

    try:
        workers = get_client().scheduler_info()["workers"].values()
    except ValueError:
        return contextlib.nullcontext()
    if workers and all("GPU" in w.get("resources", {}) for w in workers):
        return dask.annotate(resources={"GPU": 1})
    return contextlib.nullcontext()


# --- the flow ---------------------------------------------------------------------------------


@flow(name="salaudit-audit", log_prints=True)
def audit(spec: dict[str, Any], fresh: bool = False, progress: bool = False) -> dict[str, Any]:
    """Audit a model as `spec` says (the fields of salaudit's audit spec)."""
    parsed = parse_spec(spec).for_checkpoint(None)  # refused while it names {checkpoint}
    check_reachable(parsed.store.url, parsed.store.storage_options)
    if parsed.compare.baseline:  # before any work: a missing baseline is bad input
        metrics_store(parsed.compare.baseline, parsed.store.storage_options or None)
    lease = Lease(parsed.store.url, parsed.store.storage_options)
    lease.acquire(parsed.lease_wait, holder=_holder())
    try:
        return _audit(parsed, fresh, progress)
    finally:
        lease.release()


def _audit(spec: AuditSpec, fresh: bool, progress: bool) -> dict[str, Any]:
    started = time.time()
    run, plan = prepare_audit(spec, fresh, progress)
    attrs = run.store.attrs()
    identity = {k: attrs.get(k, "") for k in ("model_fingerprint", "data_fingerprint", "store_id")}
    threads = worker_threads(spec)
    results, failures = _fan_out(spec, plan, identity, threads, run.store, progress)
    record = audit_record(
        spec, started, results, failures, orchestrator=_orchestrator(spec), flow_run=_flow_run()
    )
    run.store.record_audit(record)
    summary = {
        "store": run.store.url,
        "samples": len(run.samples),
        "units": len(plan.units()),
        "computed": sum(len(r["computed"]) for r in results.values()),
        "recomputed_units": sorted(u.label for u, r in results.items() if r["computed"]),
        "failed": record["failed"],
        "notes": plan.notes,
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
    finish(run, plan)
    summary["report"] = _report(spec, run.store.url)
    if spec.compare.baseline:
        summary["comparison"] = _compare(spec, run.store.url)
    return summary


def _compare(spec: AuditSpec, url: str) -> str:
    """Compare with the spec's baseline: a markdown artifact of the changes, the verdict; raises
    RegressionFound (a failed flow run) naming what regressed beyond its threshold."""
    c = spec.compare
    comparison = compare_stores(
        c.baseline, url, c.thresholds, c.alpha, spec.store.storage_options or None
    )
    create_markdown_artifact(
        comparison.markdown(),
        key="salaudit-comparison",
        description=f"{url} against the baseline {c.baseline}",
    )
    print(f"salaudit: against the baseline {c.baseline}: {comparison.verdict()}")
    if comparison.regressions:
        raise RegressionFound(f"{url} against {c.baseline}: {comparison.verdict()}")
    return comparison.verdict()


def _report(spec: AuditSpec, url: str) -> str | None:
    """The report task, then its artifacts: the headline as markdown and a table per
    metric. Returns where the report is (None: the spec asks for none)."""
    out = spec.report_url()
    if out is None:
        return None
    report = write_report_task(url, out, spec.store.storage_options or None)
    create_markdown_artifact(
        _headline_markdown(report), key="salaudit-report", description=f"the audit of {url}"
    )
    for metric, rows in _metric_rows(report.tables).items():
        create_table_artifact(
            rows,
            key=f"salaudit-{metric.replace('_', '-')}",
            description=f"{metric}: per method mean, standard error and paired tests",
        )
    return report.location


def _metric_rows(tables: list[MetricTable]) -> dict[str, list[dict[str, Any]]]:
    """Per metric, one row per method and condition: mean, standard error and its paired
    comparisons (Holm-corrected p-values)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for t in tables:
        for r in t.methods:
            pairs = [p for p in t.pairs if p["method"] == r["method"]]
            out.setdefault(t.metric, []).append(
                {
                    "condition": t.condition,
                    "method": r["method"],
                    "n": r["n"],
                    "mean": _rounded(r["mean"]),
                    "standard_error": _rounded(r["standard_error"]),
                    "compared_with": ", ".join(p["reference"] for p in pairs),
                    "difference": ", ".join(f"{p['mean_difference']:.3g}" for p in pairs),
                    "p_holm": ", ".join(f"{p['p_holm']:.3g}" for p in pairs),
                }
            )
    return out


def _rounded(v: float) -> float | None:
    """4 significant digits; None (JSON null) for NaN."""
    return None if v != v else float(f"{v:.4g}")


def _headline_markdown(report: Report) -> str:
    rows = report.headline
    lines = [f"# salaudit audit\n\nReport: `{report.location}`\n"]
    if rows and len(rows[0]) > 1:
        header = list(rows[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
        lines.append(
            "\nMeans over samples; ↑ higher is better, ↓ lower is better; * beats its "
            "reference (one-sided paired t-test, Holm-corrected p < 0.05)."
        )
    for section, why in report.missing.items():
        lines.append(f"\n- {section}: {why}")
    return "\n".join(lines)


def _orchestrator(spec: AuditSpec) -> str:
    workers = worker_count(spec)
    return f"Prefect + Dask ({spec.cluster} cluster, {workers or 'external'} workers)"


def _flow_run() -> dict[str, str | None]:
    from prefect.runtime import flow_run

    return {"id": flow_run.id, "name": flow_run.name, "url": flow_run.ui_url}


def _fan_out(spec, plan: AuditPlan, identity, threads, store, progress):
    """Submit each unit as soon as the units it reads have completed; a failed unit marks its
    dependants as not run. Returns every outcome."""
    from tqdm.auto import tqdm

    units = plan.units()
    needs = {u: plan.needs(u) for u in units}
    dependants: dict[Unit, list[Unit]] = {}
    for unit in units:
        for need in needs[unit]:
            dependants.setdefault(need, []).append(unit)
    artifact = create_progress_artifact(
        0.0, key="salaudit-progress", description=f"units of the audit into {store.url}"
    )
    bar = tqdm(total=len(units), desc="audit", unit="unit", disable=not progress, file=sys.stderr)
    task = audit_unit.with_options(retries=spec.retries)
    payload = spec.model_dump(mode="json")
    finished: queue.Queue = queue.Queue()
    running: dict[Any, Unit] = {}
    results: dict[Unit, dict] = {}
    failures: dict[Unit, str] = {}

    def submit(unit: Unit) -> None:
        fresh = not unit_done(store, unit)  # the store, not the cache, says what is done
        future = task.with_options(refresh_cache=fresh).submit(
            payload, _unit_dict(unit), identity, threads
        )
        running[future] = unit
        future.add_done_callback(finished.put)

    with _gpu_slots():
        for unit in units:
            if not needs[unit]:
                submit(unit)
        while running:
            future = finished.get()
            unit = running.pop(future)
            try:
                results[unit] = future.result()
                if future.state.name == "Cached":  # found in the cache: nothing recomputed
                    results[unit] = {**results[unit], "computed": [], "cached": True}
            except Exception as error:
                failures[unit] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            for later in dependants.get(unit, []):
                if unit in failures and later not in failures:
                    failures[later] = "not run: a unit it reads failed"
                    bar.update()
                elif all(n in results for n in needs[later]):
                    submit(later)
            bar.update()
            update_progress_artifact(artifact, 100.0 * (len(results) + len(failures)) / len(units))
    bar.close()
    return results, failures


def _unit_dict(unit: Unit) -> dict[str, Any]:
    out = asdict(unit)
    out["names"] = list(unit.names)
    return out


def _holder() -> str:
    from prefect.runtime import flow_run

    return f"flow run {flow_run.name or flow_run.id}"


# --- entry point --------------------------------------------------------------------------------


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API the flow and its Dask workers report to: the configured one, else a
    temporary local server whose URL the workers inherit (never one server per worker)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the run's last logs, before their server goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@contextlib.contextmanager
def cluster_environment() -> Iterator[None]:
    """Where a local Dask cluster starts: its workers keep glibc's malloc defaults, and this
    process's environment is restored afterwards.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
    dynamic mmap threshold: every large torch buffer is mapped and unmapped afresh, and the
    model runs about 1.4x slower. The nanny also writes its settings (OMP_NUM_THREADS=1 and
    that one) into the environment of the process that starts it, which would slow every
    program this process starts later."""
    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_audit(spec: AuditSpec, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the audit flow on its cluster (bad input raises before any work starts)."""
    with cluster_environment():
        return audit.with_options(task_runner=task_runner(spec))(
            spec.model_dump(mode="json"), fresh=fresh, progress=progress
        )

"""Scheduled audits: the deployable audit flow, the checkpoint watcher, and `salaudit deploy`
and `salaudit serve`.

A deployment runs `scheduled_audit` (the audit flow on the spec's cluster, as a subflow) on a
cron schedule and, with a watched prefix, whenever the watcher reports a new checkpoint there:
the watcher, itself a small scheduled deployment, emits a `salaudit.checkpoint.created` event
per new file, and the audit deployment's trigger runs the audit with `checkpoint` set. Its
concurrency limit of 1 (enqueue on collision) keeps runs from overlapping.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from prefect import flow, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events import DeploymentEventTrigger, emit_event
from prefect.exceptions import ObjectNotFound
from prefect.types.entrypoint import EntrypointType
from prefect.variables import Variable

from salaudit.errors import SalauditError
from salaudit.flows.audit import expected_failures, run_audit
from salaudit.inputs.uris import is_remote
from salaudit.pipeline.spec import AuditSpec, parse_spec
from salaudit.store.checkpoints import Watermark, list_checkpoints, new_checkpoints

CHECKPOINT_EVENT = "salaudit.checkpoint.created"
DEFAULT_POOL = "salaudit-gpu"
DEFAULT_PATTERN = "*.pt"


@flow(name="salaudit-scheduled-audit", log_prints=True)
@expected_failures
def scheduled_audit(
    spec: dict[str, Any], checkpoint: str | None = None, fresh: bool = False
) -> dict[str, Any]:
    """Audit as `spec` says, on its cluster; `checkpoint` fills the spec's `{checkpoint}` and
    `{checkpoint_name}` placeholders (a checkpoint trigger sets it)."""
    parsed = parse_spec(spec).for_checkpoint(checkpoint)
    print(f"salaudit: auditing {parsed.model} into {parsed.store.url}")
    return run_audit(parsed, fresh=fresh, progress=False)


@flow(name="salaudit-watch-checkpoints", log_prints=True)
def watch_checkpoints(
    prefix: str, pattern: str = DEFAULT_PATTERN, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Emit a `salaudit.checkpoint.created` event for each checkpoint file under `prefix`
    that is new since the last look; returns their URLs. The first look (no watermark yet)
    only notes what is there: the checkpoints that land after it are audited."""
    name = watermark_variable(prefix, pattern)
    listing = list_checkpoints(prefix, pattern, storage_options)
    stored = Variable.get(name)
    new, mark = new_checkpoints(listing, Watermark.from_dict(stored))
    if stored is None:
        new = []
        print(f"salaudit: first look at {prefix}: {len(listing)} checkpoint(s), not audited")
    for url in new:
        emit_event(
            CHECKPOINT_EVENT,
            resource={"prefect.resource.id": f"salaudit.checkpoint.{url}"},
            payload={"checkpoint": url, "prefix": prefix},
        )
        print(f"salaudit: new checkpoint {url}")
    Variable.set(name, mark.to_dict(), overwrite=True)
    return new


def watermark_variable(prefix: str, pattern: str) -> str:
    """The Prefect variable holding a watched prefix's watermark."""
    digest = hashlib.sha1(f"{prefix.rstrip('/')}|{pattern}".encode()).hexdigest()[:16]
    return f"salaudit-watch-{digest}"


def require_api() -> str:
    """The configured Prefect API: a deployment in a temporary server would vanish with it."""
    from prefect.settings import PREFECT_API_URL

    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not url:
        raise SalauditError(
            "deployments live on a Prefect server: start one (prefect server start) and set "
            "PREFECT_API_URL, e.g. http://127.0.0.1:4200/api"
        )
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as error:
        raise SalauditError(
            f"the Prefect API at PREFECT_API_URL={url} does not answer ({type(error).__name__}: "
            f"{error}); start the server (prefect server start) or fix PREFECT_API_URL"
        ) from None
    return url


def check_cron(cron: str | None) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron) if cron else None
    except ValueError:
        raise SalauditError(
            f"--cron {cron!r} is not a cron expression; write five fields, e.g. '0 2 * * *' "
            "for 02:00 every day"
        ) from None


def ensure_pool(name: str) -> None:
    """Create a process work pool `name` unless one of any type exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"salaudit: created the process work pool {name}")


def deploy(
    spec: AuditSpec,
    name: str,
    cron: str | None = None,
    pool: str = DEFAULT_POOL,
    watch: str | None = None,
    every: float = 60,
    pattern: str = DEFAULT_PATTERN,
) -> dict[str, UUID]:
    """Create (or update) the audit deployment `name` in `pool`; with `watch`, also the
    watcher deployment `name`-watch and the audit's trigger on new checkpoints. The watcher
    starts from what the prefix holds now: only checkpoints that land later are audited.
    Relative local paths (the spec's, the watched prefix) are made absolute: a flow run's
    working directory is a scratch folder."""
    require_api()
    check_cron(cron)
    ensure_pool(pool)
    if watch and not is_remote(watch):
        watch = str(Path(watch).absolute())
    params = {"spec": spec.with_absolute_paths().model_dump(mode="json")}
    triggers = []
    if watch:
        triggers.append(
            DeploymentEventTrigger(
                name=f"{name}: new checkpoint under {watch}",
                expect={CHECKPOINT_EVENT},
                match={"prefect.resource.id": f"salaudit.checkpoint.{watch.rstrip('/')}/*"},
                parameters={"checkpoint": "{{ event.payload.checkpoint }}"},  # + the spec
            )
        )
    ids = {
        name: scheduled_audit.to_deployment(
            name=name,
            cron=cron,
            parameters=params,
            triggers=triggers,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE"),
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=f"salaudit audit of {spec.model} on {spec.data} into {spec.store.url}",
            tags=["salaudit"],
        ).apply(work_pool_name=pool)
    }
    if watch:
        storage = spec.store.storage_options or None
        Variable.unset(watermark_variable(watch, pattern))
        watch_checkpoints.fn(watch, pattern, storage)  # the first look, now
        ids[f"{name}-watch"] = watch_checkpoints.to_deployment(
            name=f"{name}-watch",
            interval=every,
            parameters={"prefix": watch, "pattern": pattern, "storage_options": storage},
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="CANCEL_NEW"),
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=f"looks for new {pattern} under {watch} every {every:g} s",
            tags=["salaudit"],
        ).apply(work_pool_name=pool)
    return ids


def serve(spec: AuditSpec, name: str, cron: str | None = None) -> None:
    """Run the audit on `cron` from this process (one box, no work pool) until stopped."""
    require_api()
    check_cron(cron)
    scheduled_audit.serve(
        name=name,
        cron=cron,
        parameters={"spec": spec.with_absolute_paths().model_dump(mode="json")},
        description=f"salaudit audit of {spec.model} on {spec.data} into {spec.store.url}",
        tags=["salaudit"],
        limit=1,
    )

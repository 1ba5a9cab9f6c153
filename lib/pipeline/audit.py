"""An audit: every stage of a spec, over a store's shard-aligned regions.

`prepare_audit` does the one-off work before any fan-out (the model trained and fingerprinted,
the data fingerprinted, every stage's template laid out) and plans the audit once;
`AuditPlan.units` lists the (stage, region) units an orchestrator fans out and `AuditPlan.needs`
their dependencies; `run_unit` fills one unit on a run attached to the store; `finish`
computes the statistics. `audit_direct` runs it all in this process: the library path the
orchestrated flow agrees with.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from bisect import bisect_left
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from ..errors import SalauditError
from ..inputs.data import load_dataset
from ..inputs.models import load_model
from ..methods.registry import Method
from ..store import schema
from ..store.lease import Lease, StoreBusy
from ..store.store import Store, check_reachable
from ..version import environment
from .attack import AttackJob, attack_jobs, layout_attacks, run_attack
from .evaluate import (
    Evaluation,
    evaluation_for,
    layout_metrics,
    metric_markers,
    run_metrics,
    statistics,
)
from .explain import prepare, run_inputs, run_maps
from .progress import Reporter, RowMeter
from .run import Run, attach
from .spec import AuditSpec

UNIT_SAMPLES = 1024  # the most samples one unit covers
UNITS_PER_WORKER = 16  # per stage: enough for a cluster's workers to balance their load


class Stage(StrEnum):
    """What a unit computes on its region."""

    INPUTS = "inputs"
    MAPS = "maps"
    ATTACK = "attack"
    METRICS = "metrics"


@dataclass(frozen=True)
class Unit:
    """One stage on samples [start, stop), one or several of the store's shards (each keeps its
    own done-marker, and its chunks a single writer): `group` names the maps group (methods
    that share decoys or a boundary search) or the attack; `names` are the group's methods or
    the metric families."""

    stage: Stage
    start: int
    stop: int
    group: str = ""
    names: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """The stage and group, e.g. `maps:decoys-dance` (what audit records time)."""
        return f"{self.stage.value}:{self.group}" if self.group else self.stage.value

    @property
    def label(self) -> str:
        return f"{self.kind}[{self.start}:{self.stop}]"

    def to_dict(self) -> dict[str, Any]:
        """The unit as a task's (JSON) parameter."""
        return {
            "stage": self.stage.value,
            "start": self.start,
            "stop": self.stop,
            "group": self.group,
            "names": list(self.names),
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        return cls(Stage(d["stage"]), d["start"], d["stop"], d["group"], tuple(d["names"]))


@dataclass
class AuditPlan:
    """What an audit computes on a prepared store (planned once, in the flow and per worker):
    each stage's units cover `unit_shards` consecutive shards (`regions`)."""

    spec: AuditSpec
    regions: list[tuple[int, int]]
    groups: dict[str, list[str]]  # group -> its methods (sharing decoys or a boundary search)
    attacks: list[AttackJob]
    evaluation: Evaluation | None
    unit_shards: int = 1

    @property
    def families(self) -> list[str]:
        return self.evaluation.names if self.evaluation else []

    @property
    def notes(self) -> list[str]:
        return self.evaluation.notes if self.evaluation else []

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """The sample ranges of the units: `unit_shards` shards each."""
        k, r = self.unit_shards, self.regions
        return [(r[i][0], r[min(i + k, len(r)) - 1][1]) for i in range(0, len(r), k)]

    def units(self) -> list[Unit]:
        """Every unit, each after the units it needs."""
        return [u for start, stop in self.blocks for u in self._region(start, stop)]

    def shards(self, unit: Unit) -> list[tuple[int, int]]:
        """The store's shards (regions) a unit covers."""
        starts = self._starts
        return self.regions[bisect_left(starts, unit.start) : bisect_left(starts, unit.stop)]

    @functools.cached_property
    def _starts(self) -> list[int]:
        return [start for start, _ in self.regions]

    def is_done(self, unit: Unit, done: set[tuple[str, int, int]]) -> bool:
        """Whether `done` (the store's done-markers, `Store.done_markers`) holds every marker
        of the unit's shards: metrics are done when every cell is."""
        if unit.stage is Stage.INPUTS:
            stages = [schema.inputs()]
        elif unit.stage is Stage.MAPS:
            stages = [schema.map_path(m) for m in unit.names]
        elif unit.stage is Stage.ATTACK:
            stages = [schema.attack(unit.group)]
        else:
            stages = self._metric_markers
        return all((s, *r) in done for r in self.shards(unit) for s in stages)

    @functools.cached_property
    def _metric_markers(self) -> list[str]:
        """Every metric cell's marker name (the same for each shard): listed once a plan."""
        return metric_markers(self.evaluation) if self.evaluation else []

    def needs(self, unit: Unit) -> list[Unit]:
        """The units of the same region that `unit` reads: inputs for every stage, and
        everything else of the region for metrics."""
        if unit.stage is Stage.INPUTS:
            return []
        region = self._region(unit.start, unit.stop)
        return region[:-1] if unit.stage is Stage.METRICS else region[:1]

    def _region(self, start: int, stop: int) -> list[Unit]:
        """The units of one region: inputs first, metrics (if any) last."""
        out = [Unit(Stage.INPUTS, start, stop)]
        out += [Unit(Stage.MAPS, start, stop, g, tuple(ms)) for g, ms in self.groups.items()]
        out += [Unit(Stage.ATTACK, start, stop, a.name) for a in self.attacks]
        if self.families:
            out.append(Unit(Stage.METRICS, start, stop, "", tuple(self.families)))
        return out


def unit_shards(regions: int, shard_size: int, workers: int = 1) -> int:
    """How many shards one unit covers: as many as leave UNITS_PER_WORKER units per stage for
    each worker, and no more than UNIT_SAMPLES samples (at least one shard). 10^6 samples in
    shards of 16 on 8 GPUs: 64 shards (1,024 samples) a unit, 977 units a stage."""
    spread = -(-regions // (UNITS_PER_WORKER * max(1, workers)))
    return max(1, min(spread, UNIT_SAMPLES // shard_size))


def method_groups(methods: list[Method]) -> dict[str, list[str]]:
    """Methods that share work go together: one decoy configuration, one boundary search;
    every other method is a group of its own."""
    groups: dict[str, list[str]] = {}
    for m in methods:
        label = f"decoys-{m.decoys.generator}" if m.decoys else "boundary" if m.boundary else m.name
        groups.setdefault(label, []).append(m.name)
    return groups


def plan_audit(spec: AuditSpec, run: Run, workers: int = 1) -> AuditPlan:
    """The audit of `spec` on a laid-out store: its units' groups, attacks and metrics, units
    sized for `workers` (`unit_shards`)."""
    attacks = attack_jobs(spec.attacks, spec.attack_params, spec.radii) if spec.attacks else []
    evaluation = (
        evaluation_for(run, spec.metrics, spec.metric_baseline) if spec.metrics != [] else None
    )
    k = unit_shards(len(run.regions), run.store.attrs()["shard_size"], workers)
    return AuditPlan(spec, run.regions, method_groups(run.methods), attacks, evaluation, k)


def preflight(spec: AuditSpec, fresh: bool = False) -> None:
    """The checks an audit can make before any cluster or Prefect starts, none of which
    writes: the store's place (reachable, writable), the baseline to compare with, another
    audit's lease, and the store's identity against this spec's model, data and selection."""
    spec.for_checkpoint(None)
    check_reachable(spec.store.url, spec.storage_options())
    if spec.compare.baseline:
        baseline = Store(spec.compare.baseline, spec.storage_options())
        if not baseline.exists() or not baseline.has(schema.METRICS):
            raise SalauditError(
                f"compare.baseline {spec.compare.baseline} holds no audit's metrics; give the "
                "store of an earlier audit of the same data"
            )
    holder = Lease(spec.store.url, spec.storage_options()).holder()
    if holder and spec.lease_wait == 0:
        raise StoreBusy(holder)
    store = Store(spec.store.url, spec.storage_options())
    if store.exists() and not fresh:
        model, dataset = load_model(spec.model, progress=False), load_dataset(spec.data)
        identity = {
            "model_fingerprint": model.fingerprint,
            "data_fingerprint": dataset.fingerprint,
            "selection": spec.sample_selection().to_dict(),
            "seed": spec.seed,
            "precision": spec.precision,
        }
        store.check_identity(identity, {"model": spec.model, "data": spec.data})


def prepare_audit(spec: AuditSpec, fresh: bool = False, progress: bool = True, workers: int = 1):
    """(run, plan): everything loaded and checked, every template laid out, nothing computed;
    units sized for `workers`."""
    run = prepare(spread_shards(spec, workers, fresh), fresh, progress, attacks=True)
    if spec.attacks:
        layout_attacks(run, attack_jobs(spec.attacks, spec.attack_params, spec.radii))
    plan = plan_audit(spec, run, workers)
    if plan.evaluation:
        layout_metrics(plan.evaluation)
    return run, plan


def spread_shards(spec: AuditSpec, workers: int, fresh: bool = False) -> AuditSpec:
    """The spec with shards small enough that each of `workers` gets one where the selection
    is smaller than a shard per worker (4 samples, 2 workers: shards of 2). Only for a new
    store: an existing one keeps its layout."""
    n = spec.sample_selection().n
    if not n or n >= spec.shard_size * workers:
        return spec
    if Store(spec.store.url, spec.storage_options()).exists() and not fresh:
        return spec
    return spec.model_copy(update={"shard_size": max(1, -(-n // workers))})


def attach_audit(
    spec: AuditSpec, micro_batch: int | None = None, identity: dict | None = None
) -> tuple[Run, AuditPlan]:
    """The run and plan a worker fills units of (the store laid out by `prepare_audit`, whose
    `identity` the flow checked)."""
    run = attach(spec, micro_batch, identity)
    return run, plan_audit(spec, run)


def run_unit(
    run: Run, plan: AuditPlan, unit: Unit, report: Reporter | None = None, bar: bool = False
) -> dict:
    """Fill one unit, shard by shard; finished shards (done-markers) are skipped. The rows
    through the model are shown on a bar (`bar`) and handed to `report` as they go. Returns a
    small summary (what it computed, how many seconds it took, the rows)."""
    started = time.perf_counter()
    computed = []
    regions = plan.shards(unit)
    with RowMeter(run.model, len(regions), report, bar, desc=f"{unit.label}") as meter:
        for region in regions:
            run.store.forget_writes()
            computed += _fill(run, plan, unit, region)
            meter.shard_done()
    return {
        "rows": meter.rows,
        "stage": unit.kind,
        "start": unit.start,
        "stop": unit.stop,
        "computed": computed,
        "seconds": time.perf_counter() - started,
    }


def _fill(run: Run, plan: AuditPlan, unit: Unit, region: tuple[int, int]) -> list[str]:
    """One shard of a unit's stage; returns what it computed."""
    if unit.stage is Stage.INPUTS:
        return [] if run_inputs(run, *region)["skipped"] else [Stage.INPUTS.value]
    if unit.stage is Stage.MAPS:
        group = dataclasses.replace(run, methods=[m for m in run.methods if m.name in unit.names])
        return run_maps(group, *region)["computed"]
    if unit.stage is Stage.ATTACK:
        return run_attack(run, next(a for a in plan.attacks if a.name == unit.group), *region)
    return run_metrics(dataclasses.replace(plan.evaluation, run=run), *region)


def finish(run: Run, plan: AuditPlan, changed: bool = True) -> dict[str, np.ndarray] | None:
    """Statistics over every sample, written to `stats` where a unit `changed` the store or
    they are missing (None when no metrics were asked)."""
    if not plan.evaluation:
        return None
    table = statistics(plan.evaluation)
    if changed or not run.store.done_regions(schema.STATS):
        schema.write_stats(run.store, table)
    return table


def audit_record(
    spec: AuditSpec,
    started: float,
    outcomes: dict[Unit, dict],
    failures: dict[Unit, str],
    **extra,
) -> dict:
    """What the report shows of one audit: its spec, when it ran, the seconds each stage's
    units took (summed over units; those the store found done count none), failures, where
    it ran and on what versions."""
    seconds: dict[str, float] = {}
    for unit, out in outcomes.items():
        if not out.get("done"):
            seconds[unit.kind] = seconds.get(unit.kind, 0.0) + float(out.get("seconds", 0.0))
    finished = time.time()
    return {
        "started": started,
        "finished": finished,
        "seconds": finished - started,
        "spec": spec.model_dump(mode="json"),
        "units": len(outcomes) + len(failures),
        "computed_units": sum(bool(o.get("computed")) for o in outcomes.values()),
        "done_units": sum(bool(o.get("done")) for o in outcomes.values()),
        "stage_seconds": seconds,
        "failed": {u.label: why for u, why in failures.items()},
        "devices": sorted({str(o["device"]) for o in outcomes.values() if o.get("device")}),
        "environment": environment(),
        **extra,
    }


def audit_direct(spec: AuditSpec, fresh: bool = False, progress: bool = True) -> dict:
    """The whole audit in this process, unit after unit, recorded in the store; returns a
    summary."""
    from tqdm.auto import tqdm

    started = time.time()
    run, plan = prepare_audit(spec, fresh, progress)
    outcomes, device = {}, device_name(run.device)
    for unit in tqdm(plan.units(), desc="audit", disable=not progress, file=sys.stderr):
        outcomes[unit] = {**run_unit(run, plan, unit, bar=progress), "device": device}
    finish(run, plan, any(o["computed"] for o in outcomes.values()))
    run.store.record_audit(audit_record(spec, started, outcomes, {}, orchestrator="in-process"))
    computed = sum(len(o["computed"]) for o in outcomes.values())
    return {"store": run.store.url, "samples": len(run.samples), "computed": computed}


def device_name(device) -> str:
    """`cpu`, or the CUDA device's model name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type

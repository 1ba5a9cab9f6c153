"""An audit: every stage of a spec, over a store's shard-aligned regions.

`prepare_audit` does the one-off work before any fan-out (the model trained and fingerprinted,
the data fingerprinted, every stage's template laid out); `AuditPlan.units` lists the
(stage, region) units an orchestrator fans out and `AuditPlan.needs` their dependencies;
`run_unit` fills one unit on a run attached to the store; `finish` computes the statistics.
`audit_direct` runs it all in this process: the library path the orchestrated flow agrees with.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import zarr

from .attack_stage import AttackPlan, layout_attacks, plan_attacks, run_attack
from .auditspec import AuditSpec, StoreSpec
from .evaluate import layout_metrics, plan_evaluation, run_metrics, statistics, write_statistics
from .explain import Run, attach, prepare, run_inputs, run_maps
from .registry import Method
from .store import Store
from .version import environment


@dataclass(frozen=True)
class Unit:
    """One stage on samples [start, stop): `inputs`, `maps:<group>`, `attack:<name>` or
    `metrics`; `names` are the group's methods or the metric families."""

    stage: str
    start: int
    stop: int
    names: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.stage}[{self.start}:{self.stop}]"


@dataclass
class AuditPlan:
    """What an audit computes on a prepared store."""

    spec: AuditSpec
    regions: list[tuple[int, int]]
    groups: dict[str, list[str]]  # group -> its methods (sharing decoys or a boundary search)
    attacks: list[AttackPlan]
    families: list[str]
    notes: list[str]

    def units(self) -> list[Unit]:
        """Every unit, each after the units it needs."""
        return [u for start, stop in self.regions for u in self._region(start, stop)]

    def needs(self, unit: Unit) -> list[Unit]:
        """The units of the same region that `unit` reads: inputs for every stage, and
        everything else of the region for metrics."""
        if unit.stage == "inputs":
            return []
        region = self._region(unit.start, unit.stop)
        return region[:-1] if unit.stage == "metrics" else region[:1]

    def _region(self, start: int, stop: int) -> list[Unit]:
        """The units of one region: inputs first, metrics (if any) last."""
        out = [Unit("inputs", start, stop)]
        out += [Unit(f"maps:{g}", start, stop, tuple(ms)) for g, ms in self.groups.items()]
        out += [Unit(f"attack:{a.name}", start, stop) for a in self.attacks]
        if self.families:
            out.append(Unit("metrics", start, stop, tuple(self.families)))
        return out


def unit_done(store: Store, unit: Unit) -> bool:
    """Whether the store's done-markers say `unit` is complete (metrics: never assumed, their
    cells are checked one by one inside the unit)."""
    kind, _, name = unit.stage.partition(":")
    region = (unit.start, unit.stop)
    if kind == "inputs":
        return store.is_done("inputs", *region)
    if kind == "maps":
        return all(store.is_done(f"maps/{m}", *region) for m in unit.names)
    if kind == "attack":
        return store.is_done(f"attacks/{name}", *region)
    return False


def method_groups(methods: list[Method]) -> dict[str, list[str]]:
    """Methods that share work go together: one decoy configuration, one boundary search;
    every other method is a group of its own."""
    groups: dict[str, list[str]] = {}
    for m in methods:
        label = f"decoys-{m.decoys.generator}" if m.decoys else "boundary" if m.boundary else m.name
        groups.setdefault(label, []).append(m.name)
    return groups


def prepare_audit(spec: AuditSpec, fresh: bool = False, progress: bool = True):
    """(run, plan): everything loaded and checked, every template laid out, nothing computed."""
    run = prepare(spec.explain_config(fresh), progress)
    attacks = plan_attacks(spec.attacks, spec.attack_params, spec.radii) if spec.attacks else []
    if attacks:
        layout_attacks(run, attacks)
    families, notes = [], []
    if spec.metrics != []:
        ev = plan_evaluation(run, spec.metrics)
        layout_metrics(ev)
        families, notes = ev.families, ev.notes
    plan = AuditPlan(spec, run.regions, method_groups(run.methods), attacks, families, notes)
    return run, plan


def attach_run(spec: AuditSpec, micro_batch: int | None = None) -> Run:
    """The run a worker fills units of (the store laid out by `prepare_audit`)."""
    return attach(spec.explain_config(), micro_batch)


def run_unit(run: Run, spec: AuditSpec, unit: Unit) -> dict:
    """Fill one unit; finished parts (done-markers) are skipped. Returns a small summary (what
    it computed, how many seconds it took)."""
    kind, _, name = unit.stage.partition(":")
    region = (unit.start, unit.stop)
    started = time.perf_counter()
    if kind == "inputs":
        computed = [] if run_inputs(run, *region)["skipped"] else ["inputs"]
    elif kind == "maps":
        group = dataclasses.replace(run, methods=[m for m in run.methods if m.name in unit.names])
        computed = run_maps(group, *region)["computed"]
    elif kind == "attack":
        plans = plan_attacks(spec.attacks, spec.attack_params, spec.radii)
        computed = run_attack(run, next(p for p in plans if p.name == name), *region)
    elif kind == "metrics":
        computed = run_metrics(plan_evaluation(run, list(unit.names)), *region)
    else:
        raise ValueError(f"unknown stage {unit.stage!r}")
    return {
        "stage": unit.stage,
        "start": unit.start,
        "stop": unit.stop,
        "computed": computed,
        "seconds": time.perf_counter() - started,
    }


def finish(run: Run, plan: AuditPlan) -> dict[str, np.ndarray] | None:
    """Statistics over every sample, written to `stats` (None when no metrics were asked)."""
    if not plan.families:
        return None
    ev = plan_evaluation(run, plan.families)
    table = statistics(ev)
    write_statistics(ev, table)
    return table


def audit_record(
    spec: AuditSpec,
    started: float,
    outcomes: dict[Unit, dict],
    failures: dict[Unit, str],
    **extra,
) -> dict:
    """What the report shows of one audit: its spec, when it ran, the seconds each stage's
    units took (summed over shards; units found in a cache count none), failures, where it
    ran and on what versions."""
    seconds: dict[str, float] = {}
    for unit, out in outcomes.items():
        if not out.get("cached"):
            seconds[unit.stage] = seconds.get(unit.stage, 0.0) + float(out.get("seconds", 0.0))
    finished = time.time()
    return {
        "started": started,
        "finished": finished,
        "seconds": finished - started,
        "spec": spec.model_dump(mode="json"),
        "units": len(outcomes) + len(failures),
        "computed_units": sum(bool(o.get("computed")) for o in outcomes.values()),
        "cached_units": sum(bool(o.get("cached")) for o in outcomes.values()),
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
        outcomes[unit] = {**run_unit(run, spec, unit), "device": device}
    finish(run, plan)
    run.store.record_audit(audit_record(spec, started, outcomes, {}, orchestrator="in-process"))
    computed = sum(len(o["computed"]) for o in outcomes.values())
    return {"store": run.store.url, "samples": len(run.samples), "computed": computed}


def device_name(device) -> str:
    """`cpu`, or the CUDA device's model name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


# --- planning without running ---------------------------------------------------------------


@dataclass
class Estimate:
    """What an audit will do, from a one-sample calibration on this machine."""

    samples: int
    shards: int
    units: int
    stage_seconds: dict[str, float]  # per sample
    model_rows: dict[str, int]  # images through the model (forward), per sample
    bytes_per_sample: int  # uncompressed
    stored_bytes_per_sample: int  # as written (compressed) by the calibration

    @property
    def seconds(self) -> float:
        return self.samples * sum(self.stage_seconds.values())


def estimate(spec: AuditSpec, samples: int) -> Estimate:
    """Time one sample through every stage of `spec` in a scratch store on this machine,
    counting the images each stage sends through the model, and scale to `samples`."""
    with tempfile.TemporaryDirectory(prefix="salaudit-plan-") as scratch:
        probe = spec.model_copy(update={"limit": 1, "store": StoreSpec(url=f"{scratch}/store")})
        run, plan = prepare_audit(probe, progress=False)
        rows: dict[str, int] = {}
        seconds: dict[str, float] = {}
        counter = {"rows": 0}
        hook = run.model.register_forward_pre_hook(
            lambda _m, args: counter.__setitem__("rows", counter["rows"] + len(args[0]))
        )
        try:
            for unit in plan.units():
                stage = unit.stage.split(":")[0] if unit.stage != "metrics" else "metrics"
                counter["rows"], stamp = 0, time.perf_counter()
                run_unit(run, probe, unit)
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - stamp
                rows[stage] = rows.get(stage, 0) + counter["rows"]
        finally:
            hook.remove()
        full, stored = _sizes(run.store)
    shard = spec.shard_size
    shards = -(-samples // shard)
    units = len(plan.units()) * shards
    return Estimate(samples, shards, units, seconds, rows, full, stored)


def _sizes(store: Store) -> tuple[int, int]:
    """(uncompressed bytes, stored bytes) of the arrays of a one-sample store."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the markers folder is no Zarr node
        members = store.root("r").members(max_depth=None)
    full = sum(node.nbytes for _, node in members if isinstance(node, zarr.Array))
    stored = sum(store.fs.du(store.path, total=False).values())
    return int(full), int(stored)

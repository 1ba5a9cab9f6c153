"""`salaudit plan`'s estimate: every stage of a spec timed on this machine on one sample and
on a few, in scratch stores, so each stage has a cost per shard (one call's fixed part) and a
cost per sample; scaled to the audit's shards and samples, spread over its workers, plus the
flow's start and its cost per unit; bytes counted as the store writes them (metadata once,
done-markers per shard, chunks per sample)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import torch

from ..store.schema import MARKERS
from ..store.store import Store
from .audit import prepare_audit, run_unit, unit_shards
from .spec import AuditSpec, StoreSpec

PROBE_SAMPLES = 4  # the larger calibration (the smaller is one sample)
# The audit flow's own costs, measured on a 2-core machine by benchmarks/orchestration.py
# (docs/benchmarks.md, 2026-12-02): its fixed start (the Dask cluster, workers importing torch
# and loading the model, teardown), 15.8 s, and its cost per submitted unit, about 0.09 s.
FLOW_START_SECONDS = 16.0
FLOW_UNIT_SECONDS = 0.09


@dataclass
class Probe:
    """One calibration: seconds and model rows per stage, and bytes by kind, of `samples`."""

    samples: int
    stages: int  # units of one shard
    seconds: dict[str, float]
    rows: dict[str, int]
    chunks: int  # bytes of array chunks
    metadata: int  # bytes of zarr.json files
    markers: int  # bytes of done-markers


@dataclass
class Estimate:
    """What an audit will do, from two calibrations on this machine."""

    samples: int
    shards: int
    units: int
    parallel: float  # workers at once (each calibrated as one: its torch threads)
    stage_shard_seconds: dict[str, float]  # per shard (a call's fixed part)
    stage_sample_seconds: dict[str, float]  # per sample
    model_rows: dict[str, float]  # images through the model (forward), per sample
    bytes_fixed: int  # metadata, written once
    bytes_per_shard: float  # done-markers and a shard's fixed part of its chunks
    bytes_per_sample: float  # chunks, as written (compressed)

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Each stage's compute over the whole audit, on one worker."""
        return {
            s: self.shards * self.stage_shard_seconds[s] + self.samples * per
            for s, per in self.stage_sample_seconds.items()
        }

    @property
    def seconds(self) -> float:
        """Wall time: the flow's start, the compute spread over the workers, the units."""
        compute = sum(self.stage_seconds.values()) / self.parallel
        return FLOW_START_SECONDS + compute + FLOW_UNIT_SECONDS * self.units

    @property
    def stored_bytes(self) -> float:
        return (
            self.bytes_fixed
            + self.shards * self.bytes_per_shard
            + (self.samples * self.bytes_per_sample)
        )


def estimate(
    spec: AuditSpec, samples: int, workers: int = 1, threads: int | None = None
) -> Estimate:
    """Calibrate `spec` on one sample and on PROBE_SAMPLES (at most a shard), with `threads`
    torch threads as a worker has them, after a warm-up probe, and scale to `samples` on
    `workers` (units sized as the flow sizes them)."""
    shard = spec.shard_size
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)  # as one worker runs
    try:
        _probe(spec, 1)  # warm-up: first calls (allocations, lazy initialisation) not counted
        small = _probe(spec, 1)
        large = _probe(spec, min(PROBE_SAMPLES, shard, samples)) if samples > 1 else small
    finally:
        torch.set_num_threads(saved)
    extra = max(1, large.samples - small.samples)
    per_sample = {
        s: max(0.0, (large.seconds[s] - small.seconds[s]) / extra) if large is not small else t
        for s, t in small.seconds.items()
    }
    per_shard = {s: max(0.0, small.seconds[s] - per_sample[s]) for s in small.seconds}
    chunk = (large.chunks - small.chunks) / extra if large is not small else small.chunks
    shards = -(-samples // shard)
    blocks = -(-shards // unit_shards(shards, shard, workers))
    return Estimate(
        samples=samples,
        shards=shards,
        units=small.stages * blocks,
        parallel=float(max(1, min(workers, blocks))),
        stage_shard_seconds=per_shard,
        stage_sample_seconds=per_sample,
        model_rows={s: r / large.samples for s, r in large.rows.items()},
        bytes_fixed=small.metadata,
        bytes_per_shard=small.markers + max(0.0, small.chunks - chunk),
        bytes_per_sample=max(0.0, chunk),
    )


def _probe(spec: AuditSpec, samples: int) -> Probe:
    """Every unit of `spec` on `samples` samples (one shard) in a scratch store, timed."""
    with tempfile.TemporaryDirectory(prefix="salaudit-plan-") as scratch:
        probe = spec.model_copy(
            update={"limit": samples, "store": StoreSpec(url=f"{scratch}/store")}
        )
        run, plan = prepare_audit(probe, progress=False)
        rows: dict[str, int] = {}
        seconds: dict[str, float] = {}
        counter = {"rows": 0}
        hook = run.model.register_forward_pre_hook(
            lambda _m, args: counter.__setitem__("rows", counter["rows"] + len(args[0]))
        )
        try:
            for unit in plan.units():
                stage = unit.stage.value
                counter["rows"], stamp = 0, time.perf_counter()
                run_unit(run, plan, unit)
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - stamp
                rows[stage] = rows.get(stage, 0) + counter["rows"]
        finally:
            hook.remove()
        return Probe(samples, len(plan.units()), seconds, rows, *_sizes(run.store))


def _sizes(store: Store) -> tuple[int, int, int]:
    """(chunk, metadata, done-marker) bytes of a store, as stored."""
    chunks = metadata = markers = 0
    for key, info in store.listing().items():
        if key.startswith(MARKERS + "/"):
            markers += info["size"]
        elif key.endswith("zarr.json"):
            metadata += info["size"]
        elif not key.startswith("_salaudit/"):
            chunks += info["size"]
    return chunks, metadata, markers

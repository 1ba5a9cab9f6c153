"""The order units run in (`pipeline.scheduler`), without Prefect or Dask."""

from __future__ import annotations

import tracemalloc

from salaudit.pipeline.attack import attack_jobs
from salaudit.pipeline.audit import (
    UNIT_SAMPLES,
    AuditPlan,
    Stage,
    Unit,
    method_groups,
    spread_shards,
    unit_shards,
)
from salaudit.pipeline.scheduler import NOT_RUN, Scheduler
from salaudit.pipeline.spec import AuditSpec

NEEDS = {"a": [], "b": ["a"], "c": ["a"], "d": ["a", "b", "c"], "e": []}


def drive(schedule: Scheduler, fail: set[str]) -> list[str]:
    """Run released units in order, failing those in `fail`; returns the order run."""
    order, ready = [], list(schedule.ready())
    while ready:
        unit = ready.pop(0)
        order.append(unit)
        released, _ = schedule.done(unit, "boom" if unit in fail else None)
        ready += released
    return order


def test_units_run_after_what_they_read():
    schedule = Scheduler(NEEDS, NEEDS.__getitem__)
    assert schedule.ready() == ["a", "e"]
    order = drive(schedule, set())
    assert sorted(order) == sorted(NEEDS) and schedule.finished and not schedule.failed
    for unit, needs in NEEDS.items():
        assert all(order.index(n) < order.index(unit) for n in needs)


def test_a_failure_skips_only_its_dependants():
    schedule = Scheduler(NEEDS, NEEDS.__getitem__)
    order = drive(schedule, {"b"})
    assert set(order) == {"a", "b", "c", "e"}
    assert schedule.failed == {"b": "boom", "d": NOT_RUN} and schedule.finished
    schedule = Scheduler(NEEDS, NEEDS.__getitem__)
    assert drive(schedule, {"a"}) == ["a", "e"]
    assert set(schedule.failed) == {"a", "b", "c", "d"}
    assert [schedule.failed[u] for u in "bcd"] == [NOT_RUN] * 3


def test_an_audit_plans_units_the_scheduler_releases_by_region():
    plan = AuditPlan(AuditSpec(), [(0, 4), (4, 8)], {"grad": ["grad"]}, [], None)
    schedule = Scheduler(plan.units(), plan.needs)
    first = schedule.ready()
    assert [(u.stage, u.start) for u in first] == [(Stage.INPUTS, 0), (Stage.INPUTS, 4)]
    released, skipped = schedule.done(first[1], "lost worker")
    assert released == [] and [(u.stage, u.start) for u in skipped] == [(Stage.MAPS, 4)]
    released, _ = schedule.done(first[0])
    assert [(u.kind, u.start) for u in released] == [("maps:grad", 0)]


def test_a_unit_covers_consecutive_shards_and_is_done_when_each_is():
    regions = [(0, 4), (4, 8), (8, 10)]
    plan = AuditPlan(AuditSpec(), regions, {"grad": ["grad"]}, [], None, unit_shards=2)
    assert plan.blocks == [(0, 8), (8, 10)]
    units = plan.units()
    assert [(u.kind, u.start, u.stop) for u in units] == [
        ("inputs", 0, 8),
        ("maps:grad", 0, 8),
        ("inputs", 8, 10),
        ("maps:grad", 8, 10),
    ]
    maps = units[1]
    assert plan.shards(maps) == [(0, 4), (4, 8)]
    assert plan.needs(maps) == [units[0]]
    done = {("maps/grad", 0, 4)}
    assert not plan.is_done(maps, done)  # one of its two shards is not done
    assert plan.is_done(maps, done | {("maps/grad", 4, 8)})
    assert not plan.is_done(units[0], done | {("maps/grad", 4, 8)})


def test_unit_size_follows_the_workers_and_caps_the_samples():
    assert unit_shards(2, 8, workers=2) == 1  # the default audit: one shard a unit
    assert unit_shards(250, 8, workers=2) == 8  # 2,000 samples: 16 units a stage per worker
    assert unit_shards(62_500, 16, workers=8) == UNIT_SAMPLES // 16  # capped: 1,024 samples
    assert unit_shards(10, 2048, workers=1) == 1  # a shard larger than the cap: one a unit


def test_a_million_images_plan_fewer_than_20000_units():
    """The default audit of 10^6 images in shards of 16 on 8 GPUs: every stage's units
    partition the shards, at most 20,000 units in all, planned in under 500 MB."""
    spec = AuditSpec(shard_size=16)
    n = 10**6
    regions = [(s, min(s + 16, n)) for s in range(0, n, 16)]
    groups = method_groups([spec.method(m) for m in spec.methods])
    attacks = attack_jobs(spec.attacks, spec.attack_params, spec.radii)
    tracemalloc.start()
    plan = AuditPlan(spec, regions, groups, attacks, None, unit_shards(len(regions), 16, 8))
    units = plan.units()
    schedule = Scheduler(units, plan.needs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    metrics_units = len(plan.blocks)  # one a block besides (no evaluation planned here)
    assert len(units) + metrics_units <= 20_000, len(units) + metrics_units
    assert peak < 500 * 2**20
    assert len(schedule.ready()) == len(plan.blocks)  # the inputs units
    for kind in {u.kind for u in units}:
        spans = [(u.start, u.stop) for u in units if u.kind == kind]
        assert spans == plan.blocks  # each stage covers every shard once
    covered = [r for b in plan.blocks for r in plan.shards(Unit(Stage.INPUTS, *b))]
    assert covered == regions


def test_a_small_selection_is_cut_so_every_worker_gets_a_shard(tmp_path):
    spec = AuditSpec.model_validate({"store": {"url": str(tmp_path / "s")}, "limit": 4})
    assert spec.shard_size == 8
    assert spread_shards(spec, workers=2).shard_size == 2
    assert spread_shards(spec, workers=3).shard_size == 2  # shards of 2, 2: two busy workers
    assert spread_shards(spec, workers=1).shard_size == 4
    big = spec.model_copy(update={"limit": 16})
    assert spread_shards(big, workers=2) is big
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    assert spread_shards(spec, workers=2) is spec  # an existing store keeps its layout
    assert spread_shards(spec, workers=2, fresh=True).shard_size == 2

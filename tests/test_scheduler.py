"""The order units run in (`pipeline.scheduler`), without Prefect or Dask."""

from __future__ import annotations

from salaudit.pipeline.audit import AuditPlan, Stage
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

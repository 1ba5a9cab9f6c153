"""`salaudit verify`: a store checked against its done-markers (`store.integrity`), and
repaired: the damaged regions and what read them recomputed with the stages and parameters the
store records, then its statistics."""

from __future__ import annotations

from ..errors import SalauditError
from ..metrics.catalogue import family_of
from ..store import integrity, schema
from ..store.store import Store
from .attack import AttackJob, attack_jobs, run_attack
from .evaluate import evaluation_for, layout_metrics, run_metrics, statistics
from .explain import reopen, run_inputs, run_maps
from .run import Run


def open_store(url: str, storage_options: dict | None = None) -> Store:
    store = Store(url, storage_options)
    if not store.exists():
        raise SalauditError(f"no salaudit store at {url}; give the URL of an audit's store")
    return store


def verify(url: str, storage_options: dict | None = None) -> list[integrity.Problem]:
    """Every chunk the store's done-markers vouch for that is missing or changed (a damaged
    root metadata is an error of its own)."""
    store = open_store(url, storage_options)
    store.attrs()
    return integrity.verify(store)


def repair(
    url: str, storage_options: dict | None = None, device: str = "auto", progress: bool = False
) -> dict:
    """Recompute the damaged regions of the store at `url` and every region that read them:
    maps, attacks and metrics, each as the store records it; the statistics after them.
    Returns the problems found and what was recomputed."""
    store = open_store(url, storage_options)
    problems = integrity.verify(store)
    if not problems:
        return {"problems": [], "removed": [], "computed": []}
    removed = integrity.invalidate(store, problems)
    run = reopen(url, storage_options, device, progress, require_inputs=False)
    computed = []
    for start, stop in run.regions:
        if not run_inputs(run, start, stop)["skipped"]:
            computed.append(f"{schema.inputs()}[{start}:{stop}]")
        computed += run_maps(run, start, stop)["computed"]
    for job in stored_attacks(run):
        for start, stop in run.regions:
            computed += run_attack(run, job, start, stop)
    families = stored_families(store)
    if families:
        ev = evaluation_for(run, families)
        layout_metrics(ev)
        for start, stop in run.regions:
            computed += run_metrics(ev, start, stop)
        schema.write_stats(store, statistics(ev))
    return {"problems": problems, "removed": removed, "computed": computed}


def stored_attacks(run: Run) -> list[AttackJob]:
    """The attacks the store holds, with the parameters it records."""
    jobs = []
    for name in run.store.subgroups(schema.ATTACKS):
        attrs = run.store.array_attrs(schema.attack(name, "image"))
        params = {k: v for k, v in attrs.items() if k not in ("attack", "method", "method_params")}
        jobs += attack_jobs([name], {name: params})
    return jobs


def stored_families(store: Store) -> list[str]:
    """The metric families the store holds values of."""
    found = []
    for name in store.arrays(schema.METRICS):
        try:
            found.append(family_of(name).name)
        except KeyError:
            continue  # a coordinate (sample, method, attack, radius, ...)
    return list(dict.fromkeys(found))

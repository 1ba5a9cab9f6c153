"""The evaluate stage: the metrics of a store's maps and attacks, and their statistics.

Group `metrics`: one variable per metric of the catalogue, dims (sample, method) plus the
metric's own (`attack`, `radius`, `threshold`, `layer`, ...); `method` and `attack` are
labelled dimensions that later runs extend. Per-population metrics have no method:
`<family>_<generator>` (sample, decoy_<generator>). Group `stats`: one row per metric,
condition, method and reference (`metrics.stats.comparisons`). Regions are done-marked per
metric family and method (and attack); re-running computes only what is missing.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from ..attacks.catalogue import attack_info
from ..errors import SalauditError
from ..inputs.kinds import check_kind, to_grid
from ..inputs.models import on_grid
from ..methods.context import Context
from ..methods.registry import Method
from ..metrics.catalogue import Cell, Family, families, per_generator
from ..metrics.masks import check_metric_baseline
from ..metrics.stats import comparisons
from ..store import schema
from .explain import reopen
from .run import Run

NEXT_STAGE = {
    "attacks": "salaudit attack --store {url} --attacks topk@grad,mass-center@grad,target@grad",
    "prediction": "salaudit attack --store {url} --attacks pgd",
    "boxes": "data with bounding boxes (this data set has none)",
    "decoys": "salaudit explain --store {url} --keep-decoys with a decoy-enhanced method",
}


@dataclass
class Evaluation:
    """What an evaluate run computes: families, methods, attacks and each dim's labels."""

    run: Run
    families: list[Family]
    attacks: list[str]  # explanation attacks in the store (one cell each)
    prediction: str | None  # the prediction attack in the store (pgd), its dim a family's
    labels: dict[str, list]  # own dim -> labels
    generators: list[str]
    notes: list[str] = field(default_factory=list)
    attacked: dict[str, set[str]] = field(default_factory=dict)  # attack -> its maps' methods
    baseline: str = "mean"  # what replaces removed pixels (`masks.metric_baseline`)

    @property
    def methods(self) -> list[Method]:
        return self.run.methods

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.families]


def evaluation_for(run: Run, asked: list[str] | None, baseline: str | None = None) -> Evaluation:
    """Which families apply; an asked-for family that cannot be computed is an error naming
    what to run, a default one that cannot is skipped with a note. `baseline` (None: the one
    the store's metrics use, else `mean`) must be the store's metrics' own."""
    store, url, catalogue = run.store, run.store.url, families()
    baseline = metrics_baseline(store, baseline)
    names = list(catalogue) if asked in (None, ["all"]) else list(dict.fromkeys(asked))
    if asked is None:
        names = [n for n in names if catalogue[n].default]
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise SalauditError(
            f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(catalogue)} (or all)"
        )
    names, notes = _for_kind(run.model.kind, names, asked)
    groups = store.subgroups(schema.ATTACKS)
    explanation = [a for a in groups if attack_info(a).method]
    prediction = next((a for a in groups if not attack_info(a).method), None)
    generators = _generators(run)
    have = {
        "maps": True,
        "attacks": bool(explanation),
        "prediction": prediction is not None,
        "boxes": store.has(schema.inputs("bbox")),
        "decoys": bool(generators),
    }
    chosen = []
    for name in names:
        need = catalogue[name].needs
        if have[need]:
            chosen.append(catalogue[name])
        elif asked is None or asked == ["all"]:
            notes.append(f"{name}: not applicable (needs {NEXT_STAGE[need].format(url=url)})")
        else:
            raise SalauditError(
                f"metric {name} needs what store {url} lacks; run "
                f"{NEXT_STAGE[need].format(url=url)} first"
            )
    attacked = _attacked_maps(run, groups)
    for a, have_maps in attacked.items():
        missing = [m.name for m in run.methods if m.name not in have_maps]
        if missing:
            notes.append(
                f"{schema.attack(a)} holds no maps of {', '.join(missing)}: their {a} metrics stay "
                f"empty; salaudit attack --store {url} --attacks {a} adds them"
            )
    labels = {f.dim: f.labels(run.model) for f in catalogue.values() if f.labels}
    if prediction is not None:
        info = attack_info(prediction)
        labels[info.dim] = [float(r) for r in store.read(schema.attack(prediction, info.dim))]
    return Evaluation(
        run, chosen, explanation, prediction, labels, generators, notes, attacked, baseline
    )


def metrics_baseline(store, baseline: str | None) -> str:
    """The metric baseline an evaluation of `store` uses: `baseline`, or the one its metrics
    were computed with (`mean` for a store without metrics, or from before the choice). Another
    than the stored one is refused: one metrics group holds one baseline's scores."""
    held = None
    if store.has(schema.METRICS):
        attrs = store.node(schema.METRICS).attrs
        if schema.METRIC_BASELINE in attrs or store.arrays(schema.METRICS):
            held = schema.metric_baseline_of(attrs)
    chosen = check_metric_baseline(baseline or held or "mean")
    if held and chosen != held:
        raise SalauditError(
            f"store {store.url} holds metrics under the {held} baseline, this evaluation asks "
            f"{chosen}; evaluate a copy of the store (or another audit) with metric_baseline "
            f"{chosen}, or keep {held}"
        )
    return chosen


def _generators(run: Run) -> list[str]:
    """Decoy generators whose populations the store keeps (laid out: an audit plans their
    validity before they are written; a region is scored once its population is done)."""
    store = run.store
    return [g for g in store.subgroups(schema.DECOYS) if store.has(schema.decoys(g, "population"))]


def _attacked_maps(run: Run, attacks: list[str]) -> dict[str, set[str]]:
    """Per attack, the methods whose maps on its attacked images are in the store."""
    return {a: set(run.store.arrays(schema.attack_map(a))) for a in attacks}


# --- layout -------------------------------------------------------------------------------------


def layout_metrics(ev: Evaluation) -> None:
    """Create (or extend) the `metrics` group; single writer, before any region."""
    store, run = ev.run.store, ev.run
    shard, group = store.attrs()["shard_size"], schema.METRICS
    store.require_coordinate(group, "sample", run.samples)
    store.root().require_group(group).attrs[schema.METRIC_BASELINE] = ev.baseline
    store.require_labels(group, "method", [m.name for m in ev.methods])
    if any(f.dim == "attack" for f in ev.families):
        store.require_labels(group, "attack", ev.attacks)
    n_methods = len(store.labels(group, "method"))
    for fam in (f for f in ev.families if f.per_method):
        dims, lengths = ("method",), (n_methods,)
        if fam.dim == "attack":
            dims, lengths = ("method", "attack"), (n_methods, len(store.labels(group, "attack")))
        elif fam.dim:
            _fixed_coordinate(store, fam.dim, ev.labels[fam.dim])
            dims, lengths = ("method", fam.dim), (n_methods, len(ev.labels[fam.dim]))
        chunks = (
            1,
            *(1 if d == "attack" else n for d, n in zip(dims[1:], lengths[1:], strict=True)),
        )
        for var in fam.variables:
            attrs = {"higher_is_better": var.higher_is_better}
            schema.layout_metric(store, var.name, run.samples, shard, dims, lengths, chunks, attrs)
    for fam in (f for f in ev.families if not f.per_method):
        for g in ev.generators:
            k = store.shape(schema.decoys(g, "population"))[1]
            schema.layout_metric(
                store,
                per_generator(fam, g),
                run.samples,
                shard,
                (f"decoy_{g}",),
                (k,),
                (k,),
                {"units": fam.units},
            )
    store.consolidate()


def _for_kind(kind: str, names: list[str], asked: list[str] | None) -> tuple[list, list]:
    """The families among `names` that apply to `kind` inputs, and notes on those left out
    (one asked for by name is an error naming those that apply)."""
    catalogue, kept, notes = families(), [], []
    usable = [n for n, f in catalogue.items() if kind in f.kinds]
    for name in names:
        if kind in catalogue[name].kinds:
            kept.append(name)
        elif asked is None or asked == ["all"]:
            notes.append(f"{name}: not applicable to {kind} inputs")
        else:
            check_kind(kind, catalogue[name].kinds, f"metric {name}", usable)
    return kept, notes


def _fixed_coordinate(store, dim: str, labels: list) -> None:
    """Numeric labels (radii, percentages) as a float coordinate, any other as strings."""
    if all(isinstance(v, int | float) for v in labels):
        store.require_coordinate(schema.METRICS, dim, np.asarray(labels, dtype=float))
    else:
        store.require_labels(schema.METRICS, dim, [str(v) for v in labels])


# --- one region -----------------------------------------------------------------------------------


class _StoreSource:
    """What metric families read beyond the clean maps, from a region of the store (each array
    read once)."""

    def __init__(self, run: Run, start: int, stop: int):
        self.run = run
        self.read = functools.cache(lambda path: run.read(path, start, stop))
        self.grid = functools.cache(lambda path: to_grid(self.read(path), run.model.input_shape))

    def attacked(self, attack: str, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.grid(schema.attack(attack, "image")), self.grid(
            schema.attack_map(attack, method)
        )

    def boxes(self) -> torch.Tensor:
        return self.read(schema.inputs("bbox"))

    def population(self, generator: str) -> tuple[torch.Tensor, str]:
        path = schema.decoys(generator, "population")
        return self.grid(path), self.run.store.array_attrs(path)["layer"]


def run_metrics(ev: Evaluation, start: int, stop: int) -> list[str]:
    """Every missing metric cell of samples [start, stop); returns what was computed. Each
    array of the region is read from the store once. Families compute on the grid of positions
    (`inputs.kinds`; an image is its own)."""
    run, store = ev.run, ev.run.store
    source = _StoreSource(run, start, stop)
    x, target = source.grid(schema.inputs("image")), source.read(schema.inputs("prediction"))
    method_at = store.labels(schema.METRICS, "method")  # laid out by layout_metrics
    has_attacks = store.has(schema.metric("attack"))
    attack_at = store.labels(schema.METRICS, "attack") if has_attacks else {}
    base = dict(
        model=on_grid(run.model),
        x=x,
        target=target,
        baseline=ev.baseline,
        micro_batch=run.micro_batch,
        source=source,
        seed=run.spec.seed,
    )
    done = functools.cache(lambda stage: store.is_done(stage, start, stop))
    computed = []
    for fam in ev.families:
        if not fam.per_method:
            computed += _per_population(ev, fam, base, start, stop)
            continue
        for m, a, stage in _method_cells(ev, fam):
            reads = (schema.inputs(), schema.map_path(m.name))
            reads += (schema.attack(a), schema.attack_map(a, m.name)) if a else ()
            if done(stage) or not all(done(r) for r in reads):
                continue  # done, or never computed from what is not (or no longer) there
            cell = Cell(
                **base,
                keys=run.keys(start, stop, fam.name),
                method=m,
                e=source.grid(schema.map_path(m.name)),
                context=Context(run.keys(start, stop, m.name), run.micro_batch, run.references),
                labels=ev.labels.get(fam.dim, []),
                attack=a,
            )
            own = a if fam.dim == "attack" else None
            index = (method_at[m.name], *((attack_at[a],) if own else ()))
            for var, v in fam.compute(cell).items():
                store.write_cell(schema.metric(var), start, index, v.float().cpu().numpy())
            store.mark_done(stage, start, stop, reads)
            computed.append(stage)
    return computed


def metric_markers(ev: Evaluation) -> list[str]:
    """The done-marker of every metric cell a region gets: its metrics are done when all are."""
    out = []
    for fam in ev.families:
        if fam.per_method:
            out += [stage for _, _, stage in _method_cells(ev, fam)]
        else:
            out += [schema.metric_marker(fam.name, g) for g in ev.generators]
    return out


def _method_cells(ev: Evaluation, fam: Family) -> list[tuple[Method, str | None, str]]:
    """(method, attack or None, done-marker) of each cell a per-method family scores."""
    return [
        (m, a, schema.metric_marker(fam.name, m.name, a if fam.dim == "attack" else None))
        for m in ev.methods
        for a in _cells(ev, fam, m.name)
    ]


def _cells(ev: Evaluation, fam: Family, method: str) -> list[str | None]:
    """The attacks a family scores `method` under (None: it needs none); only attacks whose
    attacked images hold the method's maps."""
    if fam.needs == "attacks":
        return [a for a in ev.attacks if method in ev.attacked[a]]
    if fam.needs == "prediction":
        return [ev.prediction] if method in ev.attacked[ev.prediction] else []
    return [None]


def _per_population(ev: Evaluation, fam: Family, base: dict, start: int, stop: int) -> list[str]:
    store, done = ev.run.store, []
    for g in ev.generators:
        stage = schema.metric_marker(fam.name, g)
        if store.is_done(stage, start, stop) or not store.is_done(schema.decoys(g), start, stop):
            continue  # done, or its population is not written yet (a later evaluate scores it)
        (values,) = fam.compute(Cell(**base, generator=g)).values()
        store.write(schema.metric(per_generator(fam, g)), start, values.float().cpu().numpy())
        store.mark_done(stage, start, stop, (schema.inputs(), schema.decoys(g)))
        done.append(stage)
    return done


# --- statistics ---------------------------------------------------------------------------------


def statistics(ev: Evaluation) -> dict[str, np.ndarray]:
    """Every (metric, condition, method, reference) comparison of the stored metrics."""
    return comparisons(ev.run.store.dataset(schema.METRICS))


def evaluate(
    url: str,
    asked: list[str] | None = None,
    device: str = "auto",
    storage_options: dict | None = None,
    progress: bool = True,
    baseline: str | None = None,
) -> dict:
    """Run the evaluate stage on the store at `url` in this process; returns a summary with
    the statistics' table. `baseline`: the metric baseline (`evaluation_for`)."""
    from tqdm.auto import tqdm

    run = reopen(url, storage_options, device, progress)
    ev = evaluation_for(run, asked, baseline)
    layout_metrics(ev)
    computed = []
    for start, stop in tqdm(
        run.regions, desc="evaluate", unit="shard", disable=not progress, file=sys.stderr
    ):
        computed += run_metrics(ev, start, stop)
    table = statistics(ev)
    if computed or not run.store.done_regions(schema.STATS):  # new cells, or stats damaged
        schema.write_stats(run.store, table)
    return {
        "store": run.store.url,
        "samples": len(run.samples),
        "families": ev.names,
        "baseline": ev.baseline,
        "computed": len(computed),
        "notes": ev.notes,
        "table": table,
        "repaired": run.repaired,
    }

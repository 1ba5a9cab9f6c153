"""The explain stage: maps (and decoy populations) of selected samples, written to a store.

`prepare` checks everything and lays out the store's template before anything is computed;
`run_inputs` and `run_maps` each fill one region of samples and mark it done, so a shard-level
orchestrator can call them region by region; `explain` runs them all in one process; `reopen`
rebuilds the run behind an existing store for the later stages.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch

from ..engine.batching import logits
from ..engine.optim import per_row
from ..errors import SalauditError
from ..inputs.data import Dataset
from ..inputs.selection import Selection, select_samples
from ..methods.boundary_search import FINDER_CODES, Boundary, find_boundary
from ..methods.context import Context
from ..methods.decoys import DecoyConfig, Decoys, make_decoys, masks_for, members
from ..methods.registry import Method
from ..store import integrity, schema
from ..store.store import Store, check_reachable
from ..version import __version__
from .checks import warnings, write_logit_checks, write_map_checks
from .progress import RowMeter
from .run import Run, load_parts, make_run
from .spec import AuditSpec, parse_spec

VALIDATE_CHUNK = 256
VALIDATE_UPFRONT = 4096  # larger selections are validated as they stream


def prepare(
    spec: AuditSpec, fresh: bool = False, progress: bool = True, attacks: bool = False
) -> Run:
    """Load, select, validate and check everything (with `attacks`, the spec's attacks too),
    then open the store and lay out its template. Bad input raises here, before anything is
    written."""
    device, model, dataset, methods = load_parts(spec, progress, attacks)
    selection = spec.sample_selection()
    samples = select_samples(dataset, selection, model, device)
    _validate(dataset, samples)
    identity = {
        "model_fingerprint": model.fingerprint,
        "data_fingerprint": dataset.fingerprint,
        "selection": selection.to_dict(),
        "seed": spec.seed,
        "precision": spec.precision,
        "store_dtype": spec.store.dtype,
    }
    attrs = {
        "salaudit_version": __version__,
        "model": spec.model,
        "data": spec.data,
        "shard_size": spec.shard_size,
        "config": spec.recorded(),
        "label_names": dataset.class_names,
        "prediction_names": prediction_names(model, dataset),
    }
    check_reachable(spec.store.url, spec.storage_options())
    store = Store.open(
        spec.store.url,
        identity,
        attrs,
        fresh=fresh,
        storage_options=spec.storage_options(),
        run={"model": spec.model, "data": spec.data},
    )
    run = make_run(spec, model, dataset, methods, samples, store, device)
    run.repaired = undo_damage(store)
    _layout(run)
    return run


def prediction_names(model, dataset: Dataset) -> list[str] | None:
    """The names of the model's classes: its own, else the data's where they are as many."""
    if model.class_names:
        return model.class_names
    names = dataset.class_names
    return names if names and len(names) == model.num_classes else None


def undo_damage(store: Store) -> list[str]:
    """Check every done-marker against the store (`store.integrity`) and remove the markers of
    damaged regions and of what read them, so this run recomputes them; returns the problems."""
    problems = integrity.verify(store)
    integrity.invalidate(store, problems)
    return [p.line() for p in problems]


def reopen(
    url: str,
    storage_options: dict | None = None,
    device: str = "auto",
    progress: bool = False,
    methods: list[str] | None = None,
    require_inputs: bool = True,
) -> Run:
    """The run behind an existing store, its methods (all in `maps`, or `methods`) rebuilt
    from the parameters stored with their maps: what later stages (attack, evaluate) need
    (with `require_inputs`, a store whose inputs are not all written is refused)."""
    store = Store(url, storage_options)
    if not store.exists():
        raise SalauditError(f"there is no store at {url}; run salaudit explain --store {url} first")
    attrs = store.attrs()
    maps = store.root("r").get(schema.MAPS)
    params = {name: dict(maps[name].attrs) for name in (maps.array_keys() if maps else [])}
    params.pop("sample", None)
    if not params:
        raise SalauditError(f"store {url} holds no maps; run salaudit explain --store {url} first")
    missing = sorted(set(methods or []) - set(params))
    if missing:
        raise SalauditError(
            f"store {url} holds no maps of {', '.join(missing)} (it has {', '.join(params)}); "
            f"run salaudit explain --store {url} --methods {','.join(missing)} first"
        )
    data = _stored_spec(url, attrs, params, methods or sorted(params), device)
    data["store"]["storage_options"] = dict(storage_options or {})
    run = prepare(parse_spec(data, f"the spec of store {url}"), progress=progress)
    unwritten = [r for r in run.regions if not store.is_done(schema.inputs(), *r)]
    if unwritten and require_inputs:
        raise SalauditError(
            f"store {url} has unwritten inputs for samples {unwritten[0]}; finish salaudit "
            "explain on it first"
        )
    return run


def _stored_spec(url: str, attrs: dict, params: dict, names: list[str], device: str) -> dict:
    """The spec fields of a stored run: its identity from the root, each method's parameters
    (and its decoy and boundary settings) from its map's attributes."""
    selection = Selection(**attrs["selection"])
    data = {
        "model": attrs["model"],
        "data": attrs["data"],
        "selection": {
            "mode": selection.mode,
            "n": selection.n,
            "correct_only": selection.correct_only,
        },
        "seed": attrs["seed"],
        "methods": {},
        "decoys": {},
        "boundary": {},
        "store": {"url": url, "dtype": attrs.get("store_dtype", "float32")},
        "shard_size": attrs["shard_size"],
        "device": device,
        "precision": attrs.get("precision", "fp32"),
    }
    for name in names:
        p = dict(params[name])
        for key in ("method", "base", "aggregation"):
            p.pop(key, None)
        if "decoys" in p:
            stored = p.pop("decoys")
            data["decoys"][stored.pop("generator")] = stored
        if "boundary" in p:
            data["boundary"] = p.pop("boundary")
        data["methods"][name] = p
    return data


def _validate(dataset: Dataset, samples: np.ndarray) -> None:
    """Load every selected image once (up to VALIDATE_UPFRONT of them), so bad data fails
    before the store is touched. A larger selection is checked as it streams through the
    inputs stage: an unreadable image fails its unit, named, and is not retried."""
    chosen = samples if len(samples) <= VALIDATE_UPFRONT else samples[:VALIDATE_CHUNK]
    for start in range(0, len(chosen), VALIDATE_CHUNK):
        dataset.load(chosen[start : start + VALIDATE_CHUNK])


def _layout(run: Run) -> None:
    """Create (or check) every array the run writes; conflicts raise before any write."""
    store, samples, shape = run.store, run.samples, run.model.input_shape
    n, shard = len(samples), store.attrs()["shard_size"]
    maps = {m.name: m.store_params() for m in run.methods}
    populations = run.decoy_configs() if run.spec.keep_decoys else []
    for name, attrs in maps.items():
        store.check_array(schema.map_path(name), attrs, (n, *shape))
    for cfg in populations:
        k = len(_members(run, cfg)[0]) + 1
        store.check_array(schema.decoys(cfg.generator, "population"), cfg.params(), (n, k, *shape))
    features = run.dataset.feature_names
    schema.layout_inputs(store, samples, shape, shard, run.dataset.has_boxes, features)
    schema.layout_maps(store, samples, shape, shard, maps, run.spec.store.dtype)
    schema.layout_checks(store, samples, shard, list(maps))
    for cfg in populations:
        bases = list(dict.fromkeys(m.base for m in run.methods if m.decoys == cfg))
        schema.layout_decoys(
            store,
            samples,
            shape,
            shard,
            cfg.generator,
            cfg.params(),
            _members(run, cfg),
            bases,
            run.spec.store.dtype,
        )
    search = run.boundary_config()
    if search:
        schema.layout_boundary(
            store, samples, shape, shard, search.params(), search.finders, FINDER_CODES
        )
    store.consolidate()


def _members(run: Run, cfg: DecoyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each decoy's mask and sign (the original not included)."""
    mask, sign = members(cfg.generator, masks_for(run.model, cfg).n)
    return mask.numpy(), sign.numpy()


def _boundary(run: Run, x, target, start: int, stop: int) -> Boundary:
    """The boundary search of samples [start, stop): read back where done, else run and
    written with its done-marker (points NaN where none was found)."""
    store = run.store
    if store.is_done(schema.boundary(), start, stop):
        read = {f: run.read(schema.boundary(f), start, stop) for f in schema.BOUNDARY_FIELDS}
        found = Boundary(**read)
        found.point = torch.where(per_row(found.success, x), found.point, x)
        return found
    ctx = Context(run.keys(start, stop, "boundary"), run.micro_batch, run.references)
    found = find_boundary(run.model, x, target, run.boundary_config(), ctx)
    stored = {f: getattr(found, f) for f in schema.BOUNDARY_FIELDS}
    stored["point"] = torch.where(per_row(found.success, x), found.point, torch.nan)
    stored |= {f"distance_{name}": dist for name, dist in found.by_finder.items()}
    for name, value in stored.items():
        store.write(schema.boundary(name), start, value.cpu().numpy())
    store.mark_done(schema.boundary(), start, stop, reads=(schema.inputs(),))
    return found


def run_inputs(run: Run, start: int, stop: int) -> dict:
    """Write images, labels, clean predictions (and boxes) of samples [start, stop)."""
    if run.store.is_done(schema.inputs(), start, stop):
        return {"stage": "inputs", "start": start, "stop": stop, "skipped": True}
    batch = run.dataset.load(run.samples[start:stop])
    clean = logits(run.model, batch.image.to(run.device), run.micro_batch)
    run.store.write(schema.inputs("image"), start, batch.image.numpy())
    run.store.write(schema.inputs("label"), start, batch.label.numpy())
    run.store.write(schema.inputs("prediction"), start, clean.argmax(1).cpu().numpy())
    write_logit_checks(run.store, start, clean)
    if batch.bbox is not None:
        run.store.write(schema.inputs("bbox"), start, batch.bbox.numpy())
    if batch.words is not None:
        run.store.write(schema.inputs("word"), start, batch.words)
    if batch.padding is not None:
        run.store.write(schema.inputs("padding"), start, batch.padding)
    run.store.mark_done(schema.inputs(), start, stop)
    return {"stage": "inputs", "start": start, "stop": stop, "skipped": False}


def run_maps(run: Run, start: int, stop: int, on_method: Callable[[str], None] | None = None):
    """Compute and write every method's maps of samples [start, stop), decoys shared by the
    methods of one configuration; regions already marked done are skipped."""
    if not run.store.is_done(schema.inputs(), start, stop):
        raise RuntimeError(f"inputs of samples [{start}, {stop}) are not written yet")
    x, target = run.inputs(start, stop)
    tick = on_method or (lambda _name: None)
    done = []
    plain = [m for m in run.methods if m.decoys is None]
    todo = [m for m in plain if not run.store.is_done(schema.map_path(m.name), start, stop)]
    extra = {}
    if run.boundary_config() and (
        any(m.boundary for m in todo) or not run.store.is_done(schema.boundary(), start, stop)
    ):
        extra["boundary"] = _boundary(run, x, target, start, stop)
    for m in plain:
        if m in todo:
            ctx = Context(run.keys(start, stop, m.name), run.micro_batch, run.references, extra)
            write_map(run, m, start, stop, m(run.model, x, target, ctx))
            done.append(m.name)
        tick(m.name)
    for cfg in run.decoy_configs():
        done += _run_decoy_methods(run, cfg, x, target, start, stop, tick)
    return {"stage": "maps", "start": start, "stop": stop, "computed": done}


def _run_decoy_methods(run, cfg, x, target, start, stop, tick) -> list[str]:
    """Decoys of one configuration, generated once, serve every method that uses them."""
    methods = [m for m in run.methods if m.decoys == cfg]
    g, keep = cfg.generator, run.spec.keep_decoys
    todo = [m for m in methods if not run.store.is_done(schema.map_path(m.name), start, stop)]
    bases = list(dict.fromkeys(m.base for m in methods))
    todo_bases = [
        b for b in bases if keep and not run.store.is_done(schema.decoy_saliency(g, b), start, stop)
    ]
    need_population = keep and not run.store.is_done(schema.decoys(g), start, stop)
    if not (todo or todo_bases or need_population):
        for m in methods:
            tick(m.name)
        return []
    ctx = Context(run.keys(start, stop, f"decoys-{cfg.generator}"), run.micro_batch, run.references)
    decoys = make_decoys(run.model, x, cfg, ctx)
    if need_population:
        _write_population(run, g, decoys, x, start, stop)
    computed = []
    for base in bases:
        users = [m for m in methods if m.base == base]
        if not any(m in todo for m in users) and base not in todo_bases:
            continue
        ctx = Context(
            run.keys(start, stop, f"{cfg.generator}-{base}"), run.micro_batch, run.references
        )
        maps = users[0].decoy_maps(run.model, x, target, decoys, ctx)
        if base in todo_bases:
            run.store.write(schema.decoy_saliency(g, base), start, maps.cpu().numpy())
            run.store.mark_done(schema.decoy_saliency(g, base), start, stop, (schema.inputs(),))
        for m in users:
            if m in todo:
                write_map(run, m, start, stop, m.aggregate(maps))
                computed.append(m.name)
            tick(m.name)
    return computed


def method_maps(model, methods: list[Method], x, target, context: Callable[[str], Context]):
    """(method, map of x) for each method, each with its random keys from `context(name)`:
    the methods that read the boundary search share one search, the methods of one decoy
    configuration one population and each base's maps of it."""
    plain = [m for m in methods if m.decoys is None]
    extra = {}
    search = next((m.boundary for m in plain if m.boundary), None)
    if search is not None:
        extra["boundary"] = find_boundary(model, x, target, search, context("boundary"))
    for m in plain:
        ctx = context(m.name)
        ctx.extra = extra
        yield m, m(model, x, target, ctx)
    for cfg in dict.fromkeys(m.decoys for m in methods if m.decoys):
        users = [m for m in methods if m.decoys == cfg]
        decoys = make_decoys(model, x, cfg, context(f"decoys-{cfg.generator}"))
        for base in dict.fromkeys(m.base for m in users):
            first = next(m for m in users if m.base == base)
            population = first.decoy_maps(
                model, x, target, decoys, context(f"{cfg.generator}-{base}")
            )
            for m in users:
                if m.base == base:
                    yield m, m.aggregate(population)


def write_map(run: Run, m: Method, start: int, stop: int, values: torch.Tensor) -> None:
    """A method's maps of a region; its marker says it read the inputs (and the boundary)."""
    reads = (schema.inputs(), *((schema.boundary(),) if m.boundary else ()))
    maps = values.detach().float().cpu().numpy()
    run.store.write(schema.map_path(m.name), start, maps)
    write_map_checks(run.store, m.name, start, maps)
    run.store.mark_done(schema.map_path(m.name), start, stop, reads)


def _write_population(run: Run, g: str, decoys: Decoys, x, start: int, stop: int) -> None:
    """The population with the original as member 0, and per member its diagnostics."""
    population = torch.cat([x[:, None], decoys.population], 1)
    run.store.write(schema.decoys(g, "population"), start, population.cpu().numpy())
    first = {
        "success": True,
        "representation_difference": 0.0,
        "mean_abs_shift": 0.0,
        "lambda": float("nan"),
    }
    for name, value in decoys.diagnostics().items():
        lead = torch.full((len(x), 1), first[name], dtype=value.dtype, device=value.device)
        run.store.write(schema.decoys(g, name), start, torch.cat([lead, value], 1).cpu().numpy())
    run.store.mark_done(schema.decoys(g), start, stop, (schema.inputs(),))


def explain(spec: AuditSpec, fresh: bool = False, progress: bool = True) -> dict:
    """Run the explain stage of `spec` end to end in this process; returns a summary."""
    from tqdm.auto import tqdm

    run = prepare(spec, fresh, progress)
    regions = run.regions
    for start, stop in regions:
        run_inputs(run, start, stop)
    bar = tqdm(
        total=len(regions) * len(run.methods),
        desc="explain",
        unit="map-shard",
        disable=not progress,
        file=sys.stderr,
    )
    computed = []
    with RowMeter(run.model, len(regions), bar=progress, desc="rows through the model") as meter:
        for start, stop in regions:
            out = run_maps(run, start, stop, on_method=lambda _name: bar.update())
            computed += out["computed"]
            meter.shard_done()
    bar.close()
    summary = {
        "store": run.store.url,
        "samples": len(run.samples),
        "methods": [m.name for m in run.methods],
        "computed": len(computed),
        "device": str(run.device),
        "model_fingerprint": run.model.fingerprint,
        "repaired": run.repaired,
        "warnings": warnings(run.store),
    }
    if run.boundary_config():
        success = run.store.read(schema.boundary("success"))
        summary["boundary_failed"] = int((~success).sum())
    return summary

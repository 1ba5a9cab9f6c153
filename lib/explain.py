"""The explain stage: maps (and decoy populations) of selected samples, written to a store.

`prepare` checks everything and lays out the store's template before anything is computed;
`run_inputs` and `run_maps` each fill one region of samples and mark it done, so a shard-level
orchestrator can call them region by region; `explain` runs them all in one process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .batching import micro_batch_size, predictions
from .boundary import FINDER_CODES, Boundary, BoundaryConfig, find_boundary
from .data import Dataset, load_dataset
from .decoys import DecoyConfig, Decoys, make_decoys, masks_for
from .errors import SalauditError
from .models import PixelModel, load_model
from .registry import BOUNDARY_METHODS, Method, get_method, split_name
from .saliency import Context
from .selection import Selection, select_samples
from .store import Store, population_chunks
from .version import __version__

REFERENCE_IMAGES = 64  # baselines of expected gradients drawn from the data
DEFAULT_SHARD = 16
VALIDATE_CHUNK = 256


@dataclass
class ExplainConfig:
    """What an explain run computes and where it writes."""

    model: str
    data: str
    methods: list[str]
    store: str
    selection: Selection = field(default_factory=Selection)
    keep_decoys: bool = False
    device: str = "auto"
    seed: int = 0
    fresh: bool = False
    shard_size: int = DEFAULT_SHARD
    method_params: dict[str, dict] = field(default_factory=dict)
    decoy_params: dict[str, dict] = field(default_factory=dict)
    boundary_params: dict = field(default_factory=dict)
    storage_options: dict | None = None

    def describe(self) -> dict:
        """The config as recorded in the store (no storage options: they hold credentials)."""
        out = asdict(self)
        out.pop("storage_options")
        out["selection"] = self.selection.to_dict()
        return out


@dataclass
class Run:
    """A prepared run: loaded model and data, resolved methods, selected samples, open store."""

    config: ExplainConfig
    model: PixelModel
    dataset: Dataset
    methods: list[Method]
    samples: np.ndarray
    store: Store
    device: torch.device
    micro_batch: int
    references: torch.Tensor | None

    @property
    def regions(self) -> list[tuple[int, int]]:
        n, size = len(self.samples), self.store.attrs()["shard_size"]
        return [(s, min(s + size, n)) for s in range(0, n, size)]

    def keys(self, start: int, stop: int, name: str) -> list[str]:
        """Random keys for samples [start, stop) and a method or decoy generator `name`."""
        return [f"{self.config.seed}/{int(i)}/{name}" for i in self.samples[start:stop]]

    def decoy_configs(self) -> list[DecoyConfig]:
        return list(dict.fromkeys(m.decoys for m in self.methods if m.decoys))

    def boundary_config(self) -> BoundaryConfig | None:
        """The boundary search the run's bsm and big share (None if neither is asked for)."""
        return next((m.boundary for m in self.methods if m.boundary), None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SalauditError("--device cuda asked for, but torch finds no CUDA device; use cpu")
    return torch.device(name)


def prepare(config: ExplainConfig, progress: bool = True) -> Run:
    """Load, select, validate and check everything, then open the store and lay out its
    template. Bad input raises here, before anything is written."""
    device, model, dataset, methods = _load(config, progress)
    samples = select_samples(dataset, config.selection, model, device)
    _validate(dataset, samples)
    identity = {
        "model_fingerprint": model.fingerprint,
        "data_fingerprint": dataset.fingerprint,
        "selection": config.selection.to_dict(),
        "seed": config.seed,
    }
    attrs = {
        "salaudit_version": __version__,
        "model": config.model,
        "data": config.data,
        "shard_size": config.shard_size,
        "config": config.describe(),
    }
    store = Store.open(
        config.store, identity, attrs, fresh=config.fresh, storage_options=config.storage_options
    )
    run = _run(config, model, dataset, methods, samples, store, device)
    _layout(run)
    return run


def attach(config: ExplainConfig, micro_batch: int | None = None) -> Run:
    """The run of a store that `prepare` laid out, rebuilt read-only: what a worker needs to
    fill regions. Samples come from the store; a store of another model or data is refused."""
    device, model, dataset, methods = _load(config, progress=False)
    store = Store(config.store, config.storage_options)
    if not store.exists():
        raise SalauditError(f"there is no store at {config.store}; prepare the run first")
    store.check_identity(
        {"model_fingerprint": model.fingerprint, "data_fingerprint": dataset.fingerprint}
    )
    samples = store.read("inputs/sample")
    run = _run(config, model, dataset, methods, samples, store, device)
    if micro_batch:
        run.micro_batch = micro_batch
    return run


def _load(config: ExplainConfig, progress: bool):
    """(device, model, dataset, resolved methods) of a config, checked against each other."""
    device = resolve_device(config.device)
    model = load_model(config.model, device=device, progress=progress)
    dataset = load_dataset(config.data)
    if tuple(dataset.image_shape) != tuple(model.input_shape):
        raise SalauditError(
            f"{config.data} has images of shape {dataset.image_shape}, model {config.model} "
            f"takes {model.input_shape}; resize or crop the data to fit"
        )
    methods = [_method(config, name).resolved(model) for name in config.methods]
    return device, model, dataset, methods


def _run(config, model, dataset, methods, samples, store, device) -> Run:
    refs = None
    if any(m.base == "expgrad" for m in methods):
        refs = dataset.references(REFERENCE_IMAGES, config.seed).to(device)
    micro_batch = micro_batch_size(model, device)
    return Run(config, model, dataset, methods, samples, store, device, micro_batch, refs)


def reopen(
    url: str,
    storage_options: dict | None = None,
    device: str = "auto",
    progress: bool = False,
    methods: list[str] | None = None,
) -> Run:
    """The run behind an existing store, its methods (all in `maps`, or `methods`) rebuilt
    from the parameters stored with their maps: what later stages (attack, evaluate) need."""
    store = Store(url, storage_options)
    if not store.exists():
        raise SalauditError(f"there is no store at {url}; run salaudit explain --store {url} first")
    attrs = store.attrs()
    stored = attrs["config"]
    maps = store.root("r").get("maps")
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
    config = ExplainConfig(
        model=attrs["model"],
        data=attrs["data"],
        methods=list(methods or sorted(params)),
        store=url,
        selection=Selection(**stored["selection"]),
        keep_decoys=False,
        device=device,
        seed=stored["seed"],
        shard_size=attrs["shard_size"],
        storage_options=storage_options,
    )
    for name in config.methods:
        p = dict(params[name])
        for key in ("method", "base", "aggregation"):
            p.pop(key, None)
        _, generator, _ = split_name(name)
        if "decoys" in p:
            config.decoy_params[generator] = p.pop("decoys")
        if "boundary" in p:
            config.boundary_params = p.pop("boundary")
        config.method_params[name] = p
    run = prepare(config, progress)
    unwritten = [r for r in run.regions if not store.is_done("inputs", *r)]
    if unwritten:
        raise SalauditError(
            f"store {url} has unwritten inputs for samples {unwritten[0]}; finish salaudit "
            "explain on it first"
        )
    return run


def _method(config: ExplainConfig, name: str) -> Method:
    base, generator, _ = split_name(name)
    decoys = config.decoy_params.get(generator) if generator else None
    search = config.boundary_params if base in BOUNDARY_METHODS else None
    return get_method(name, config.method_params.get(name), decoys, search)


def _validate(dataset: Dataset, samples: np.ndarray) -> None:
    """Load every selected image once, so bad data fails before the store is touched."""
    for start in range(0, len(samples), VALIDATE_CHUNK):
        dataset.load(samples[start : start + VALIDATE_CHUNK])


def _layout(run: Run) -> None:
    """Create (or check) every array the run writes; conflicts raise before any write."""
    store, n = run.store, len(run.samples)
    c, h, w = run.model.input_shape
    shard = store.attrs()["shard_size"]
    img = (n, c, h, w)
    planned = [("maps/" + m.name, m.store_params(), img) for m in run.methods]
    populations = {}
    if run.config.keep_decoys:
        for cfg in run.decoy_configs():
            k = masks_for(run.model, cfg).n * (2 if cfg.generator == "dance" else 1)
            populations[cfg] = k + 1
            planned.append(
                (f"decoys/{cfg.generator}/population", cfg.params(), (n, k + 1, c, h, w))
            )
    for path, attrs, shape in planned:
        store.check_array(path, attrs, shape)

    dims = ("sample", "channel", "y", "x")
    store.require_coordinate("inputs", "sample", run.samples)
    store.require_array("inputs/image", img, dims, "float32", (shard, c, h, w))
    store.require_array("inputs/label", (n,), ("sample",), "int64", (shard,))
    store.require_array("inputs/prediction", (n,), ("sample",), "int64", (shard,))
    if run.dataset.has_boxes:
        store.require_array(
            "inputs/bbox",
            (n, 4),
            ("sample", "corner"),
            "int64",
            (shard, 4),
            attrs={"corners": ["y0", "x0", "y1", "x1"]},
            fill_value=-1,
        )
    store.require_coordinate("maps", "sample", run.samples)
    for m in run.methods:
        store.require_array(
            f"maps/{m.name}", img, dims, "float32", (shard, c, h, w), m.store_params()
        )
    for cfg, members in populations.items():
        _layout_decoys(run, cfg, members)
    if run.boundary_config():
        _layout_boundary(run)
    store.consolidate()


def _layout_boundary(run: Run) -> None:
    """The `boundary` group: per sample the point, its distance (NaN if none was found),
    success, the finder (codes in the attributes) and each finder's own best distance."""
    store, n = run.store, len(run.samples)
    c, h, w = run.model.input_shape
    shard = store.attrs()["shard_size"]
    cfg = run.boundary_config()
    store.require_coordinate("boundary", "sample", run.samples)
    store.require_array(
        "boundary/point",
        (n, c, h, w),
        ("sample", "channel", "y", "x"),
        "float32",
        (shard, c, h, w),
        cfg.params(),
    )
    store.require_array(
        "boundary/distance",
        (n,),
        ("sample",),
        "float32",
        (shard,),
        {"units": "L2 norm in pixel space"},
    )
    store.require_array("boundary/success", (n,), ("sample",), "bool", (shard,), fill_value=False)
    store.require_array(
        "boundary/finder",
        (n,),
        ("sample",),
        "int8",
        (shard,),
        {"codes": {str(v): k for k, v in FINDER_CODES.items()}},
    )
    for finder in cfg.finders:
        store.require_array(f"boundary/distance_{finder}", (n,), ("sample",), "float32", (shard,))


def _boundary(run: Run, x, target, start: int, stop: int) -> Boundary:
    """The boundary search of samples [start, stop): read back where done, else run and
    written with its done-marker (points NaN where none was found)."""
    store, fields = run.store, ("point", "distance", "success", "finder")
    if store.is_done("boundary", start, stop):
        read = {f: torch.from_numpy(store.read(f"boundary/{f}", start, stop)) for f in fields}
        found = Boundary(**{f: v.to(x.device) for f, v in read.items()})
        found.point = torch.where(found.success.view(-1, 1, 1, 1), found.point, x)
        return found
    ctx = Context(run.keys(start, stop, "boundary"), run.micro_batch, run.references)
    found = find_boundary(run.model, x, target, run.boundary_config(), ctx)
    stored = {f: getattr(found, f) for f in fields}
    stored["point"] = torch.where(found.success.view(-1, 1, 1, 1), found.point, torch.nan)
    stored |= {f"distance_{name}": dist for name, dist in found.by_finder.items()}
    for name, value in stored.items():
        store.write(f"boundary/{name}", start, value.cpu().numpy())
    store.mark_done("boundary", start, stop)
    return found


def _layout_decoys(run: Run, cfg: DecoyConfig, members: int) -> None:
    store, n = run.store, len(run.samples)
    c, h, w = run.model.input_shape
    group = f"decoys/{cfg.generator}"
    pop = (n, members, c, h, w)
    pdims = ("sample", "decoy", "channel", "y", "x")
    plan = masks_for(run.model, cfg)
    twice = cfg.generator == "dance"
    mask = np.concatenate([[-1], np.repeat(np.arange(plan.n), 2 if twice else 1)])
    sign = np.concatenate([[0], np.tile([1, -1], plan.n) if twice else np.zeros(plan.n)])
    for sub in (group, f"{group}/saliency"):
        store.require_coordinate(sub, "sample", run.samples)
        store.require_coordinate(sub, "decoy", np.arange(members))
    store.require_coordinate(group, "mask", mask.astype(np.int64), dim="decoy")
    store.require_coordinate(group, "sign", sign.astype(np.int8), dim="decoy")
    store.require_array(
        f"{group}/population",
        pop,
        pdims,
        "float32",
        population_chunks(pop),
        {**cfg.params(), "coordinates": "mask sign"},
    )
    diag_chunks = (store.attrs()["shard_size"], members)
    for name, dtype in (
        ("success", "bool"),
        ("representation_difference", "float32"),
        ("mean_abs_shift", "float32"),
        ("lambda", "float32"),
    ):
        store.require_array(
            f"{group}/{name}",
            (n, members),
            ("sample", "decoy"),
            dtype,
            diag_chunks,
            fill_value=False if dtype == "bool" else None,
        )
    for base in dict.fromkeys(m.base for m in run.methods if m.decoys == cfg):
        store.require_array(
            f"{group}/saliency/{base}",
            pop,
            pdims,
            "float32",
            population_chunks(pop),
            {"base": base, **cfg.params()},
        )


def run_inputs(run: Run, start: int, stop: int) -> dict:
    """Write images, labels, clean predictions (and boxes) of samples [start, stop)."""
    if run.store.is_done("inputs", start, stop):
        return {"stage": "inputs", "start": start, "stop": stop, "skipped": True}
    batch = run.dataset.load(run.samples[start:stop])
    pred = predictions(run.model, batch.image.to(run.device), run.micro_batch)
    run.store.write("inputs/image", start, batch.image.numpy())
    run.store.write("inputs/label", start, batch.label.numpy())
    run.store.write("inputs/prediction", start, pred.cpu().numpy())
    if batch.bbox is not None:
        run.store.write("inputs/bbox", start, batch.bbox.numpy())
    run.store.mark_done("inputs", start, stop)
    return {"stage": "inputs", "start": start, "stop": stop, "skipped": False}


def run_maps(run: Run, start: int, stop: int, on_method: Callable[[str], None] | None = None):
    """Compute and write every method's maps of samples [start, stop), decoys shared by the
    methods of one configuration; regions already marked done are skipped."""
    if not run.store.is_done("inputs", start, stop):
        raise RuntimeError(f"inputs of samples [{start}, {stop}) are not written yet")
    x = torch.from_numpy(run.store.read("inputs/image", start, stop)).to(run.device)
    target = torch.from_numpy(run.store.read("inputs/prediction", start, stop)).to(run.device)
    tick = on_method or (lambda _name: None)
    done = []
    plain = [m for m in run.methods if m.decoys is None]
    todo = [m for m in plain if not run.store.is_done(f"maps/{m.name}", start, stop)]
    extra = {}
    if run.boundary_config() and (
        any(m.boundary for m in todo) or not run.store.is_done("boundary", start, stop)
    ):
        extra["boundary"] = _boundary(run, x, target, start, stop)
    for m in plain:
        if m in todo:
            ctx = Context(run.keys(start, stop, m.name), run.micro_batch, run.references, extra)
            _write_map(run, m.name, start, stop, m(run.model, x, target, ctx))
            done.append(m.name)
        tick(m.name)
    for cfg in run.decoy_configs():
        done += _run_decoy_methods(run, cfg, x, target, start, stop, tick)
    return {"stage": "maps", "start": start, "stop": stop, "computed": done}


def _run_decoy_methods(run, cfg, x, target, start, stop, tick) -> list[str]:
    """Decoys of one configuration, generated once, serve every method that uses them."""
    methods = [m for m in run.methods if m.decoys == cfg]
    group = f"decoys/{cfg.generator}"
    keep = run.config.keep_decoys
    todo = [m for m in methods if not run.store.is_done(f"maps/{m.name}", start, stop)]
    bases = list(dict.fromkeys(m.base for m in methods))
    todo_bases = [
        b for b in bases if keep and not run.store.is_done(f"{group}/saliency/{b}", start, stop)
    ]
    need_population = keep and not run.store.is_done(group, start, stop)
    if not (todo or todo_bases or need_population):
        for m in methods:
            tick(m.name)
        return []
    ctx = Context(run.keys(start, stop, f"decoys-{cfg.generator}"), run.micro_batch, run.references)
    decoys = make_decoys(run.model, x, cfg, ctx)
    if need_population:
        _write_population(run, group, decoys, x, start, stop)
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
            run.store.write(f"{group}/saliency/{base}", start, maps.cpu().numpy())
            run.store.mark_done(f"{group}/saliency/{base}", start, stop)
        for m in users:
            if m in todo:
                _write_map(run, m.name, start, stop, m.aggregate(maps))
                computed.append(m.name)
            tick(m.name)
    return computed


def _write_map(run: Run, name: str, start: int, stop: int, values: torch.Tensor) -> None:
    run.store.write(f"maps/{name}", start, values.detach().float().cpu().numpy())
    run.store.mark_done(f"maps/{name}", start, stop)


def _write_population(run: Run, group: str, decoys: Decoys, x, start: int, stop: int) -> None:
    """The population with the original as member 0, and per member its diagnostics."""
    population = torch.cat([x[:, None], decoys.population], 1)
    run.store.write(f"{group}/population", start, population.cpu().numpy())
    first = {
        "success": True,
        "representation_difference": 0.0,
        "mean_abs_shift": 0.0,
        "lambda": float("nan"),
    }
    for name, value in decoys.diagnostics().items():
        lead = torch.full((len(x), 1), first[name], dtype=value.dtype, device=value.device)
        run.store.write(f"{group}/{name}", start, torch.cat([lead, value], 1).cpu().numpy())
    run.store.mark_done(group, start, stop)


def explain(config: ExplainConfig, progress: bool = True) -> dict:
    """Run the explain stage end to end in this process; returns a summary."""
    from tqdm.auto import tqdm

    run = prepare(config, progress)
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
    for start, stop in regions:
        out = run_maps(run, start, stop, on_method=lambda _name: bar.update())
        computed += out["computed"]
    bar.close()
    summary = {
        "store": run.store.url,
        "samples": len(run.samples),
        "methods": [m.name for m in run.methods],
        "computed": len(computed),
        "device": str(run.device),
        "model_fingerprint": run.model.fingerprint,
    }
    if run.boundary_config():
        success = run.store.read("boundary/success")
        summary["boundary_failed"] = int((~success).sum())
    return summary

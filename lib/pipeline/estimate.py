"""`salaudit plan`'s estimate, calibrated on this machine in scratch stores and scaled to the
audit's shards and samples, spread over its workers, plus the flow's start and its cost per
unit; bytes and objects counted as the store writes them (metadata once, done-markers per
shard, chunks per shard or, for decoy populations, per sample).

Small inputs (at most SHRUNK_SIDE pixels a side, the default) are calibrated by running every
stage on one sample and on a few, so each stage has a cost per shard (one call's fixed part)
and per sample. Large ones (224x224) would take minutes a sample at full size, so they are
calibrated on one sample in seconds (`_counted_and_timed`): methods whose rows their
parameters fix are priced, not run; an attack's recomputed maps cost what the maps stage
cost; the rest runs with the net's input shrunk to SHRUNK_SIDE pixels (the searches that stop
early stop as the shrunk model lets them), its rows priced at what each kind of pass costs
more at full size, timed once a kind (no fixed part: at that size it is negligible)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.layers import LayerReached
from ..inputs.models import PixelModel
from ..store import schema
from ..store.schema import MARKERS
from ..store.store import Store
from .attack import write_attack_map
from .audit import AuditPlan, Stage, Unit, finish, prepare_audit, run_unit, unit_shards
from .explain import write_map
from .run import Run
from .spec import AuditSpec, StoreSpec

PROBE_SAMPLES = 4  # the larger calibration of small inputs (the smaller is one sample)
SHRUNK_SIDE = 32  # pixels: larger inputs are calibrated shrunk to this but for a few calls
SHRUNK_MICRO_BATCH = 64  # rows a shrunk calibration's micro-batch may grow to
CPU_SIDE_ROWS = 4  # rows a CPU times a kind of pass on at full size
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
    objects: tuple[int, int, int] = (0, 0, 0)  # (metadata, per shard, per sample) objects
    shrunk: bool = False  # calibrated on a shrunk input, a few calls at full size


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
    objects_fixed: int = 0  # metadata files
    objects_per_shard: int = 0  # chunks of per-shard arrays and done-markers
    objects_per_sample: int = 0  # chunks of decoy populations (one sample each)
    shrunk: bool = False  # calibrated by counting rows on a shrunk input (large inputs)

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

    @property
    def objects(self) -> int:
        """Files (objects on S3) the audit writes."""
        return (
            self.objects_fixed
            + self.shards * self.objects_per_shard
            + self.samples * self.objects_per_sample
        )


def estimate(
    spec: AuditSpec, samples: int, workers: int = 1, threads: int | None = None
) -> Estimate:
    """Calibrate `spec` with `threads` torch threads as a worker has them (small inputs: on one
    sample and on PROBE_SAMPLES, at most a shard, after a warm-up; large ones: rows counted
    shrunk but for a few calls at full size) and scale to `samples` on `workers` (units sized as the
    flow sizes them)."""
    shard = spec.shard_size
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)  # as one worker runs
    try:
        small = _probe(spec, 1, sized=True)
        if not small.shrunk:  # the first probe was the warm-up
            small = _probe(spec, 1)
        large = small
        if samples > 1 and not small.shrunk:
            large = _probe(spec, min(PROBE_SAMPLES, shard, samples))
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
        objects_fixed=small.objects[0],
        objects_per_shard=small.objects[1],
        objects_per_sample=small.objects[2],
        shrunk=small.shrunk,
    )


def _probe(spec: AuditSpec, samples: int, sized: bool = False) -> Probe:
    """Every unit of `spec` on `samples` samples (one shard) in a scratch store, timed; with
    `sized`, a model whose input is larger than SHRUNK_SIDE runs shrunk but for a few calls
    (`_counted_and_timed`)."""
    with tempfile.TemporaryDirectory(prefix="salaudit-plan-") as scratch:
        probe = spec.model_copy(
            update={"limit": samples, "store": StoreSpec(url=f"{scratch}/store")}
        )
        run, plan = prepare_audit(probe, progress=False)
        size = _shrunk_size(run.model) if sized else None
        if size:
            seconds, rows = _counted_and_timed(run, plan, size)
        else:
            seconds, rows = {}, {}
            for unit in plan.units():
                done = run_unit(run, plan, unit)  # its rows through the model and seconds
                _add(seconds, unit, done["seconds"])
                _add(rows, unit, done["rows"])
        finish(run, plan)  # the statistics: written once
        listing = run.store.listing()
        objects = _objects(run.store, listing)
        return Probe(
            samples, len(plan.units()), seconds, rows, *_sizes(listing), objects, bool(size)
        )


def _add(totals: dict, unit: Unit, value: float) -> None:
    totals[unit.stage.value] = totals.get(unit.stage.value, 0) + value


def _shrunk_size(model: PixelModel) -> tuple[int, int] | None:
    """The (height, width) a large input is shrunk to (the shorter side SHRUNK_SIDE), or None
    for an input no larger, for a net that takes only its own size (a ViT), and for tables and
    texts, whose size is their features' or tokens' count."""
    if model.kind != "image":
        return None
    _, h, w = model.input_shape
    if min(h, w) <= SHRUNK_SIDE:
        return None
    size = (round(h * SHRUNK_SIDE / min(h, w)), round(w * SHRUNK_SIDE / min(h, w)))
    x = torch.rand(1, *model.input_shape[:1], *size, device=model.mean.device)
    try:
        with torch.no_grad():
            model.net(x)
    except Exception:  # noqa: BLE001 - any refusal of the size means "count at full size"
        return None
    return size


def _full_size_call(index: int) -> bool:
    """Whether a large input's calibration times call `index` of a unit at full size: the
    first and every power of 4 (1, 4, 16, ...), so a few calls sample every part of a unit."""
    return index == 0 or (index & (index - 1) == 0 and index.bit_length() % 2 == 1)


class _RowCosts:
    """Seconds a row costs through the net, at full size and shrunk, by the kind of pass
    (gradients on or off, run to the end or stopped at a layer), each kind timed once on at
    most CPU_SIDE_ROWS rows on a CPU (where a row's cost hardly depends on the batch) or on
    the call's rows on a GPU, the better of two passes."""

    def __init__(self, model: PixelModel, size: tuple[int, int]):
        self.model, self.size = model, size
        self.costs: dict[tuple[bool, bool], tuple[float, float]] = {}
        self.active = False  # inside a timed pass: its calls are not counted
        self.to: tuple[int, int] | None = size  # the size the net's input is resized to

    def _timed(self, x: torch.Tensor, to: tuple[int, int] | None) -> tuple[float, bool]:
        """Seconds of one pass of `x` resized to `to` (None: full size), the better of two,
        and whether it stopped at a layer (DANCE's passes: forward and backward that far)."""
        self.to, best, stopped = to, math.inf, False
        grads = torch.is_grad_enabled()
        try:
            for _ in range(2):
                start = time.perf_counter()
                stopped = _pass(self.model, x.detach().requires_grad_(grads))
                best = min(best, time.perf_counter() - start)
        finally:
            self.to = self.size
        return best, stopped

    def sample(self, x: torch.Tensor) -> tuple[float, float]:
        """(seconds a row of `x`'s kind costs more at full size, seconds spent timing)."""
        rows = x if x.is_cuda else x[:CPU_SIDE_ROWS]
        self.active = True
        try:
            small, stopped = self._timed(rows, self.size)
            key = (torch.is_grad_enabled(), stopped)
            spent = small
            if key not in self.costs:
                full, _ = self._timed(rows, None)
                self.costs[key] = (full / len(rows), small / len(rows))
                spent += full
        finally:
            self.active = False
        full_row, small_row = self.costs[key]
        return max(0.0, full_row - small_row), spent

    @contextmanager
    def shrinking(self):
        """Inside, the net's input is resized to `self.to` (bilinear, differentiable)."""

        def shrink(_module, args):
            to = self.to
            if to is None:
                return None
            return (F.interpolate(args[0], size=to, mode="bilinear"), *args[1:])

        handle = self.model.net.register_forward_pre_hook(shrink)
        try:
            yield
        finally:
            handle.remove()

    def gradient_row(self, like: torch.Tensor) -> float:
        """Seconds of one gradient row at full size (timed if no call has timed one)."""
        if (True, False) not in self.costs:
            with torch.enable_grad():
                self.sample(like)
        return self.costs[(True, False)][0]


def _pass(model: PixelModel, x: torch.Tensor) -> bool:
    """A forward pass of `x` and, with gradients on, its backward (from the layer where a
    truncated pass stops: the last output any module gave); returns whether it stopped."""
    last: dict = {}

    def keep(_module, _args, output):  # a global hook runs before the layer's own, which stops
        last["output"] = output

    handle = torch.nn.modules.module.register_module_forward_hook(keep)
    try:
        out, stopped = model(x), False
    except LayerReached:
        out, stopped = last["output"], True
    finally:
        handle.remove()
    if x.requires_grad:
        torch.autograd.grad(out.float().sum(), x)
    return stopped


@contextmanager
def _sampled(model: PixelModel, costs: _RowCosts):
    """Inside, the calls `_full_size_call` picks, and each call whose rows or gradient mode
    differ from the call before, are priced at full size by `costs`. Yields
    the calls' (rows, seconds a row costs more at full size or None, seconds spent timing)."""
    calls: list[tuple[int, float | None, float]] = []
    last: list = [None]  # the previous call's rows and gradient mode

    def count(_module, args):
        if costs.active:
            return
        x, extra, spent = args[0], None, 0.0
        kind = (len(x), torch.is_grad_enabled())
        if _full_size_call(len(calls)) or kind != last[0]:  # and where a unit's calls change
            extra, spent = costs.sample(x)
        last[0] = kind
        calls.append((len(x), extra, spent))

    handle = model.register_forward_pre_hook(count)
    try:
        yield calls
    finally:
        handle.remove()


def _counted_and_timed(run: Run, plan: AuditPlan, size: tuple[int, int]) -> tuple[dict, dict]:
    """Per stage: seconds and rows per sample at full size, from one sample. A maps unit of
    methods whose rows their parameters fix (`Method.fixed_rows`) is priced, not run: its rows
    at a gradient row's full-size cost (its maps filled with noise for the stages after it).
    An attack unit runs the attack only: the maps recomputed on its attacked images cost, per
    image, what the maps stage cost (they are filled with noise). Every other unit runs on the
    net with its input shrunk to `size`, in micro-batches grown as far as the shrunk rows
    allow, a few of its calls priced at full size (`_sampled`, `_full_seconds`)."""
    x = torch.rand(CPU_SIDE_ROWS, *run.model.input_shape, device=run.model.mean.device)
    with torch.enable_grad():  # warm-up: the full-size net's first call not counted
        torch.autograd.grad(run.model(x.requires_grad_(True)).sum(), x)
    grown = math.prod(run.model.input_shape[1:]) // math.prod(size)
    run = dataclasses.replace(
        run, micro_batch=max(run.micro_batch, min(run.micro_batch * grown, SHRUNK_MICRO_BATCH))
    )
    costs = _RowCosts(run.model, size)
    seconds: dict[str, float] = {}
    rows: dict[str, float] = {}
    with costs.shrinking():
        _price_units(run, plan, costs, x, seconds, rows)
    return seconds, rows


def _price_units(run, plan, costs: _RowCosts, x: torch.Tensor, seconds: dict, rows: dict) -> None:
    """Each unit's seconds and rows per sample at full size (`_counted_and_timed`), added."""
    maps = [0.0, 0.0]  # the maps stage's seconds and rows (one sample)
    for unit in plan.units():
        fixed = _fixed_rows(run, unit)
        if fixed is not None:
            _fill(run, plan, unit)
            spent, counted = fixed * costs.gradient_row(x), fixed
        else:
            if unit.stage is Stage.ATTACK:
                _fill(run, plan, unit)  # the attacked images' maps: priced below
            with _sampled(run.model, costs) as calls:
                start = time.perf_counter()
                run_unit(run, plan, unit)
                wall = time.perf_counter() - start
            spent, counted = _full_seconds(calls, wall), sum(n for n, _, _ in calls)
        if unit.stage is Stage.MAPS:
            maps = [maps[0] + spent, maps[1] + counted]
        elif unit.stage is Stage.ATTACK:
            job = next(a for a in plan.attacks if a.name == unit.group)
            images = len(job.labels) if job.labels else 1
            spent, counted = spent + images * maps[0], counted + images * maps[1]
        _add(seconds, unit, spent)
        _add(rows, unit, counted)


def _fixed_rows(run: Run, unit: Unit) -> int | None:
    """Rows a sample of a maps unit takes where every method's parameters fix them."""
    if unit.stage is not Stage.MAPS:
        return None
    each = [m.fixed_rows for m in run.methods if m.name in unit.names]
    return None if not each or None in each else sum(each)


def _fill(run: Run, plan: AuditPlan, unit: Unit) -> None:
    """Mark a maps unit's maps, or an attack unit's recomputed maps, done, filled with noise:
    what the stages after them read (their values do not change what those stages cost)."""
    rng = np.random.default_rng(0)
    for start, stop in plan.shards(unit):
        if unit.stage is Stage.MAPS:
            for m in (m for m in run.methods if m.name in unit.names):
                shape = run.store.node(schema.map_path(m.name)).shape[1:]
                write_map(run, m, start, stop, torch.from_numpy(_noise(rng, stop - start, shape)))
            continue
        for m in run.methods:
            shape = run.store.node(schema.attack_map(unit.group, m.name)).shape[1:]
            write_attack_map(run, unit.group, m.name, start, _noise(rng, stop - start, shape))


def _noise(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal((n, *shape), dtype=np.float32)


def _full_seconds(calls: list[tuple[int, float | None, float]], wall: float) -> float:
    """A unit's seconds at full size from its calls (rows, extra seconds a row at full size
    where measured, seconds spent timing) and its `wall` time: the wall time less the timing,
    plus each call's rows times the extra cost measured at the nearest sampled call before it."""
    total, extra = wall, 0.0
    for n, measured, spent in calls:
        extra = extra if measured is None else measured
        total += n * extra - spent
    return total


def _objects(store: Store, listing: dict) -> tuple[int, int, int]:
    """(fixed, per-shard, per-sample) objects of an audit's store, from the layout of a probe
    store of one shard (chunks that hold only the fill value are never written, so this is
    at most one object too many each): arrays along `sample` give a chunk per shard (times
    their other chunks), decoy populations one per sample; metadata, coordinates, the layout's
    markers, the statistics and the audit's record are written once."""
    markers = [k for k in listing if k.startswith(MARKERS + "/")]
    layout = sum(1 for k in markers if k.startswith((f"{MARKERS}/layout/", f"{MARKERS}/stats/")))
    fixed = layout + 1 + sum(1 for k in listing if k.endswith("zarr.json"))
    per_shard, per_sample = len(markers) - layout, 0
    for name, arr in _all_arrays(store.root(mode="r")):
        dims = arr.metadata.dimension_names or ()
        chunks = [-(-n // c) for n, c in zip(arr.shape, arr.chunks, strict=True)]
        if not dims or dims[0] != "sample" or name.rpartition("/")[2] == "sample":
            fixed += math.prod(chunks)  # a coordinate or the statistics
        elif len(dims) > 2 and dims[1] == "decoy":
            per_sample += math.prod(chunks[1:])
        else:
            per_shard += math.prod(chunks[1:])
    return fixed, per_shard, per_sample


def _all_arrays(group):
    """Every (path, array) under a zarr group."""
    for name, member in group.members(max_depth=None):
        if hasattr(member, "chunks"):
            yield name, member


def _sizes(listing: dict) -> tuple[int, int, int]:
    """(chunk, metadata, done-marker) bytes of a store's `listing`, as stored."""
    chunks = metadata = markers = 0
    for key, info in listing.items():
        if key.startswith(MARKERS + "/"):
            markers += info["size"]
        elif key.endswith("zarr.json"):
            metadata += info["size"]
        elif not key.startswith("_salaudit/"):
            chunks += info["size"]
    return chunks, metadata, markers

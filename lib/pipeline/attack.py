"""The attack stage: attacked images of a store's samples and every method's maps on them.

Group `attacks/<attack>@<method>` (`attacks/pgd` for PGD, with a `radius` dimension) holds the
attacked `image`, `success`, the perturbation norms `linf` and `l2`, `objective_before` and
`objective_after`, and `maps/<method>` recomputed on the attacked images (for the clean
prediction as target, with the clean maps' random draws). Regions are done-marked; the stage is
additive: new attacks or methods are added, finished regions are skipped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ..attacks.catalogue import (
    RESULT_FIELDS,
    AttackInfo,
    AttackResult,
    attack_info,
    attack_params,
    parse_attack,
)
from ..engine.keys import seed_of
from ..errors import SalauditError
from ..inputs.kinds import from_grid, to_grid
from ..inputs.models import on_grid
from ..methods.context import Context
from ..methods.registry import get_method
from ..store import schema
from .explain import method_maps, reopen
from .run import Run, check_attack_kind


@dataclass
class AttackJob:
    """One attack to run: its store name (`topk@grad`, `pgd`), attack, method and parameters."""

    name: str
    info: AttackInfo
    method: str | None
    params: dict

    @property
    def labels(self) -> list | None:
        """The labels of the attack's extra dimension (pgd's radii), or None."""
        return list(self.params[self.info.labels]) if self.info.dim else None

    def store_params(self, run: Run) -> dict:
        out = {"attack": self.info.name, **self.params}
        if self.method:
            out["method"] = self.method
            out["method_params"] = _differentiable_params(run, self.method)
        return out


def attack_jobs(
    names: list[str], params: dict[str, dict] | None = None, radii: list[float] | None = None
) -> list[AttackJob]:
    """Parse `topk@grad,...`; `params` maps an attack (`topk`) or a full name (`topk@grad`) to
    parameter overrides; `radii` sets the labels of attacks with an extra dimension (pgd's
    radii, units of 1/255 of the range)."""
    params = params or {}
    jobs = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        attack, method = parse_attack(name)
        info = attack_info(name)
        given = {**params.get(attack, {}), **params.get(name, {})}
        if info.labels and radii:
            given[info.labels] = tuple(float(r) for r in radii)
        full = attack_params(name, given)
        if info.labels:
            full[info.labels] = tuple(sorted(float(r) for r in full[info.labels]))
        jobs.append(AttackJob(name, info, method, full))
    if not jobs:
        raise SalauditError("no attacks given; e.g. --attacks topk@grad,mass-center@grad,pgd")
    return jobs


def _differentiable_params(run: Run, method: str) -> dict:
    """The attacked method's parameters: those of its map in the store, else its defaults."""
    m = next((m for m in run.methods if m.name == method), None)
    return dict((m or get_method(method)).params)


def layout_attacks(run: Run, jobs: list[AttackJob]) -> None:
    """Create (or check) every attack group; conflicts raise before anything is written."""
    store, shape = run.store, run.model.input_shape
    shard = store.attrs()["shard_size"]
    for job in jobs:
        check_attack_kind(job.name, run.model.kind)
    for job in jobs:
        image = schema.attack_shape(run.samples, shape, job.labels)[0]
        store.check_array(schema.attack(job.name, "image"), job.store_params(run), image)
    maps = {m.name: m.store_params() for m in run.methods}
    for job in jobs:
        schema.layout_attack(
            store,
            job.name,
            run.samples,
            shape,
            shard,
            job.store_params(run),
            job.labels,
            maps,
            job.info.target_image,
            run.spec.store.dtype,
        )
    store.consolidate()


def run_attack(run: Run, job: AttackJob, start: int, stop: int) -> list[str]:
    """Attack samples [start, stop) and recompute every method's maps on the attacked images;
    returns what was computed (finished parts are read back, not recomputed)."""
    store, computed = run.store, []
    x, target = run.inputs(start, stop)
    if store.is_done(schema.attack(job.name), start, stop):
        adv = run.read(schema.attack(job.name, "image"), start, stop)
    else:
        result = _attack(run, job, x, target, start, stop)
        adv = result.image
        store.write(schema.attack(job.name, "image"), start, adv.cpu().numpy())
        for name in RESULT_FIELDS:
            store.write(schema.attack(job.name, name), start, getattr(result, name).cpu().numpy())
        store.mark_done(schema.attack(job.name), start, stop, (schema.inputs(),))
        computed.append(job.name)
    per_image = adv.shape[1] if adv.ndim > x.ndim else 1
    flat = adv.flatten(0, 1) if adv.ndim > x.ndim else adv
    todo = [
        m
        for m in run.methods
        if not store.is_done(schema.attack_map(job.name, m.name), start, stop)
    ]
    rows_target = target.repeat_interleave(per_image)

    def context(name: str) -> Context:  # the clean maps' keys, once per attacked image
        keys = [k for k in run.keys(start, stop, name) for _ in range(per_image)]
        return Context(keys, run.micro_batch, run.references)

    for m, maps in method_maps(run.model, todo, flat, rows_target, context):
        values = maps.detach().float().view(adv.shape).cpu().numpy()
        write_attack_map(run, job.name, m.name, start, values)
        computed.append(f"{job.name}:{m.name}")
    return computed


def write_attack_map(run: Run, attack: str, method: str, start: int, values: np.ndarray) -> None:
    """A method's maps of the attacked images of samples from `start` on (shaped as the
    attack's images); its marker says it read the inputs and the attack."""
    path = schema.attack_map(attack, method)
    run.store.write(path, start, values)
    run.store.mark_done(path, start, start + len(values), (schema.inputs(), schema.attack(attack)))


def _attack(run: Run, job: AttackJob, x, target, start: int, stop: int) -> AttackResult:
    """The attack on the grid of positions (`inputs.kinds`; an image is its own), its
    attacked inputs returned in x's shape."""
    found = _attack_on_grid(run, job, to_grid(x), target, start, stop)
    found.image = from_grid(found.image, run.model.input_shape)
    return found


def _attack_on_grid(run: Run, job: AttackJob, x, target, start: int, stop: int) -> AttackResult:
    fn, params, model = job.info.fn, dict(job.params), on_grid(run.model)
    if not job.info.method:
        ctx = Context(run.keys(start, stop, job.info.name), run.micro_batch)
        return fn(model, x, target, None, ctx, **params)
    ctx = Context(run.keys(start, stop, job.method), run.micro_batch, run.references)
    method_params = _differentiable_params(run, job.method)
    if job.info.target_image:
        chosen = _target_samples(run, job, start, stop)
        run.store.write(schema.attack(job.name, "target_sample"), start, chosen)
        params["x_target"] = to_grid(run.dataset.load(chosen).image.to(run.device))
    return fn(model, x, target, job.method, ctx, method_params, **params)


def _target_samples(run: Run, job: AttackJob, start: int, stop: int) -> np.ndarray:
    """Per sample, the dataset index of the image whose map the attack aims at: a keyed draw
    among the other images of the dataset."""
    n = len(run.dataset)
    out = []
    keys = run.keys(start, stop, f"{job.info.name}-target")
    for i, key in zip(run.samples[start:stop], keys, strict=True):
        j = seed_of(key) % (n - 1)
        out.append(j + (j >= int(i)))
    return np.asarray(out, dtype=np.int64)


def attack(
    url: str,
    names: list[str],
    params: dict[str, dict] | None = None,
    radii: list[float] | None = None,
    methods: list[str] | None = None,
    device: str = "auto",
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict:
    """Run the attack stage on the store at `url` in this process; returns a summary."""
    from tqdm.auto import tqdm

    jobs = attack_jobs(names, params, radii)
    run = reopen(url, storage_options, device, progress, methods)
    layout_attacks(run, jobs)
    regions = run.regions
    computed = []
    bar = tqdm(
        total=len(regions) * len(jobs),
        desc="attack",
        unit="shard",
        disable=not progress,
        file=sys.stderr,
    )
    for job in jobs:
        for start, stop in regions:
            computed += run_attack(run, job, start, stop)
            bar.update()
    bar.close()
    summary = {"store": run.store.url, "samples": len(run.samples), "computed": len(computed)}
    summary["repaired"] = run.repaired
    summary["attacks"] = {job.name: _success_share(run, job) for job in jobs}
    summary["methods"] = [m.name for m in run.methods]
    return summary


def _success_share(run: Run, job: AttackJob) -> list[float] | float:
    success = run.store.read(schema.attack(job.name, "success"))
    share = success.mean(0)
    return share.tolist() if job.labels is not None else float(share)

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
import torch

from .attacks import ATTACKS, AttackResult, attack_params, parse_attack
from .batching import seed_of
from .decoys import make_decoys
from .errors import SalauditError
from .explain import Run, reopen
from .registry import Method, get_method
from .saliency import Context

RESULT_FIELDS = ("success", "linf", "l2", "objective_before", "objective_after")


@dataclass
class AttackPlan:
    """One attack to run: its store name (`topk@grad`, `pgd`), attack, method and parameters."""

    name: str
    attack: str
    method: str | None
    params: dict

    @property
    def group(self) -> str:
        return f"attacks/{self.name}"

    def store_params(self, run: Run) -> dict:
        out = {"attack": self.attack, **self.params}
        if self.method:
            out["method"] = self.method
            out["method_params"] = _differentiable_params(run, self.method)
        return out


def plan_attacks(
    names: list[str], params: dict[str, dict] | None = None, radii: list[float] | None = None
) -> list[AttackPlan]:
    """Parse `topk@grad,...`; `params` maps an attack (`topk`) or a full name (`topk@grad`) to
    parameter overrides; `radii` sets pgd's radii (units of 1/255 of the range)."""
    params = params or {}
    plans = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        attack, method = parse_attack(name)
        given = {**params.get(attack, {}), **params.get(name, {})}
        if attack == "pgd" and radii:
            given["radii"] = tuple(float(r) for r in radii)
        full = attack_params(name, given)
        if attack == "pgd":
            full["radii"] = tuple(sorted(float(r) for r in full["radii"]))
        plans.append(AttackPlan(name, attack, method, full))
    if not plans:
        raise SalauditError("no attacks given; e.g. --attacks topk@grad,mass-center@grad,pgd")
    return plans


def _differentiable_params(run: Run, method: str) -> dict:
    """The attacked method's parameters: those of its map in the store, else its defaults."""
    m = next((m for m in run.methods if m.name == method), None)
    return dict((m or get_method(method)).params)


def _shapes(run: Run, plan: AttackPlan):
    """(image shape, its dims, chunks, the per-sample extra shape and dims) of an attack."""
    n, shard = len(run.samples), run.store.attrs()["shard_size"]
    extra = (len(plan.params["radii"]),) if plan.attack == "pgd" else ()
    extra_dims = ("radius",) if extra else ()
    c, h, w = run.model.input_shape
    dims = ("sample", *extra_dims, "channel", "y", "x")
    return (n, *extra, c, h, w), dims, (shard, *extra, c, h, w), extra, extra_dims


def layout_attacks(run: Run, plans: list[AttackPlan]) -> None:
    """Create (or check) every attack group; conflicts raise before anything is written."""
    store, n = run.store, len(run.samples)
    shard = store.attrs()["shard_size"]
    for plan in plans:
        store.check_array(f"{plan.group}/image", plan.store_params(run), _shapes(run, plan)[0])
    for plan in plans:
        img, dims, chunks, extra, extra_dims = _shapes(run, plan)
        for group in (plan.group, f"{plan.group}/maps"):
            store.require_coordinate(group, "sample", run.samples)
            if extra:
                radii = np.asarray(plan.params["radii"], dtype="float64")
                store.require_coordinate(group, "radius", radii)
        store.require_array(
            f"{plan.group}/image", img, dims, "float32", chunks, plan.store_params(run)
        )
        for name in RESULT_FIELDS:
            dtype = "bool" if name == "success" else "float32"
            store.require_array(
                f"{plan.group}/{name}",
                (n, *extra),
                ("sample", *extra_dims),
                dtype,
                (shard, *extra),
                fill_value=False if dtype == "bool" else None,
            )
        if plan.attack == "manipulate":
            store.require_array(
                f"{plan.group}/target_sample", (n,), ("sample",), "int64", (shard,), fill_value=-1
            )
        for m in run.methods:
            store.require_array(
                f"{plan.group}/maps/{m.name}", img, dims, "float32", chunks, m.store_params()
            )
    store.consolidate()


def run_attack(run: Run, plan: AttackPlan, start: int, stop: int) -> list[str]:
    """Attack samples [start, stop) and recompute every method's maps on the attacked images;
    returns what was computed (finished parts are read back, not recomputed)."""
    store, computed = run.store, []
    x = torch.from_numpy(store.read("inputs/image", start, stop)).to(run.device)
    target = torch.from_numpy(store.read("inputs/prediction", start, stop)).to(run.device)
    if store.is_done(plan.group, start, stop):
        adv = torch.from_numpy(store.read(f"{plan.group}/image", start, stop)).to(run.device)
    else:
        result = _attack(run, plan, x, target, start, stop)
        adv = result.image
        store.write(f"{plan.group}/image", start, adv.cpu().numpy())
        for name in RESULT_FIELDS:
            store.write(f"{plan.group}/{name}", start, getattr(result, name).cpu().numpy())
        store.mark_done(plan.group, start, stop)
        computed.append(plan.name)
    per_image = adv.shape[1] if adv.ndim == 5 else 1
    flat = adv.flatten(0, 1) if adv.ndim == 5 else adv
    todo = [m for m in run.methods if not store.is_done(f"{plan.group}/maps/{m.name}", start, stop)]
    rows_target = target.repeat_interleave(per_image)
    for m, maps in _maps(run, todo, flat, rows_target, start, stop, per_image):
        path = f"{plan.group}/maps/{m.name}"
        store.write(path, start, maps.detach().float().view(adv.shape).cpu().numpy())
        store.mark_done(path, start, stop)
        computed.append(f"{plan.name}:{m.name}")
    return computed


def _maps(run: Run, methods: list[Method], x, target, start: int, stop: int, per_image: int):
    """(method, maps of x) for each method, with the clean maps' random keys; methods of one
    decoy configuration share one decoy population and each base's maps of it."""

    def ctx(name: str) -> Context:
        keys = [k for k in run.keys(start, stop, name) for _ in range(per_image)]
        return Context(keys, run.micro_batch, run.references)

    for m in methods:
        if m.decoys is None:
            yield m, m(run.model, x, target, ctx(m.name))
    for cfg in dict.fromkeys(m.decoys for m in methods if m.decoys):
        users = [m for m in methods if m.decoys == cfg]
        decoys = make_decoys(run.model, x, cfg, ctx(f"decoys-{cfg.generator}"))
        for base in dict.fromkeys(m.base for m in users):
            first = next(m for m in users if m.base == base)
            population = first.decoy_maps(
                run.model, x, target, decoys, ctx(f"{cfg.generator}-{base}")
            )
            for m in users:
                if m.base == base:
                    yield m, m.aggregate(population)


def _attack(run: Run, plan: AttackPlan, x, target, start: int, stop: int) -> AttackResult:
    fn = ATTACKS[plan.attack]
    params = dict(plan.params)
    if plan.attack == "pgd":
        ctx = Context(run.keys(start, stop, "pgd"), run.micro_batch)
        return fn(run.model, x, target, None, ctx, **params)
    ctx = Context(run.keys(start, stop, plan.method), run.micro_batch, run.references)
    method_params = _differentiable_params(run, plan.method)
    if plan.attack == "manipulate":
        chosen = _manipulation_targets(run, start, stop)
        run.store.write(f"{plan.group}/target_sample", start, chosen)
        params["x_target"] = run.dataset.load(chosen).image.to(run.device)
    return fn(run.model, x, target, plan.method, ctx, method_params, **params)


def _manipulation_targets(run: Run, start: int, stop: int) -> np.ndarray:
    """Per sample, the dataset index of the image whose map `manipulate` aims at: a keyed
    draw among the other images of the dataset."""
    n = len(run.dataset)
    out = []
    for i, key in zip(
        run.samples[start:stop], run.keys(start, stop, "manipulate-target"), strict=True
    ):
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

    plans = plan_attacks(names, params, radii)
    run = reopen(url, storage_options, device, progress, methods)
    layout_attacks(run, plans)
    regions = run.regions
    computed = []
    bar = tqdm(
        total=len(regions) * len(plans),
        desc="attack",
        unit="shard",
        disable=not progress,
        file=sys.stderr,
    )
    for plan in plans:
        for start, stop in regions:
            computed += run_attack(run, plan, start, stop)
            bar.update()
    bar.close()
    summary = {"store": run.store.url, "samples": len(run.samples), "computed": len(computed)}
    summary["attacks"] = {plan.name: _success_share(run, plan) for plan in plans}
    summary["methods"] = [m.name for m in run.methods]
    return summary


def _success_share(run: Run, plan: AttackPlan) -> list[float] | float:
    success = run.store.read(f"{plan.group}/success")
    share = success.mean(0)
    return share.tolist() if plan.attack == "pgd" else float(share)

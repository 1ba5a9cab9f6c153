"""The evaluate stage: the metrics of a store's maps and attacks, and their statistics.

Group `metrics`: one variable per metric, dims (sample, method) plus the metric's own (`attack`,
`radius`, `threshold`, `layer`); `method` and `attack` are labelled dimensions that later runs
extend. Decoy validity has no method: `decoy_validity_<generator>` (sample, decoy_<generator>).
Group `stats`: one row per metric, condition (a label of the metric's own dimensions), method
and reference: mean difference, standard error, one-sided paired p-value and Holm's correction
across the pairs of one (metric, condition) table. Regions are done-marked per metric family
and method (and attack); re-running computes only what is missing.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np
import torch

from . import metrics as M
from .errors import SalauditError
from .explain import Run, reopen
from .registry import Method
from .saliency import Context
from .stats import HIGHER_IS_BETTER, compare, method_pairs

TEXT = ("metric", "condition", "method", "reference")
NUMBERS = ("mean", "reference_mean", "mean_difference", "standard_error", "p_value", "p_holm", "n")


@dataclass(frozen=True)
class Family:
    """Metrics computed together: their variables, own dimension and what they need."""

    variables: tuple[str, ...]
    dim: str | None = None  # attack | radius | threshold | layer
    needs: str = "maps"  # maps | attacks | pgd | boxes | decoys


FAMILIES = {
    "fidelity": Family(("fidelity",)),
    "deletion": Family(("deletion", "preservation", "r_score")),
    "sensitivity": Family(("sensitivity",), "attack", "attacks"),
    "rank": Family(("spearman", "topk_intersection"), "attack", "attacks"),
    "retrieval": Family(("retrieval_adv", "retrieval_clean"), "radius", "pgd"),
    "localisation": Family(
        ("loc", "energy_game", "positive_percentage", "concentration"), None, "boxes"
    ),
    "box_accuracy": Family(("box_accuracy",), "threshold", "boxes"),
    "sanity": Family(("sanity_ssim", "sanity_spearman", "sanity_spearman_abs"), "layer"),
    "decoy_validity": Family((), None, "decoys"),
}
EXPENSIVE = {"sanity"}  # recomputes every map once per layer: asked for by name (or `all`)
NEXT_STAGE = {
    "attacks": "salaudit attack --store {url} --attacks topk@grad,mass-center@grad,target@grad",
    "pgd": "salaudit attack --store {url} --attacks pgd",
    "boxes": "data with bounding boxes (this data set has none)",
    "decoys": "salaudit explain --store {url} --keep-decoys with a decoy-enhanced method",
}


@dataclass
class Evaluation:
    """What an evaluate run computes: families, methods, attacks and each dim's labels."""

    run: Run
    families: list[str]
    attacks: list[str]  # explanation attacks in the store (for sensitivity and rank)
    labels: dict[str, list]  # radius, threshold, layer -> labels
    generators: list[str]
    notes: list[str]
    attacked: dict[str, set[str]]  # attack -> methods with maps on its attacked images

    @property
    def methods(self) -> list[Method]:
        return self.run.methods


def plan_evaluation(run: Run, asked: list[str] | None) -> Evaluation:
    """Which families apply; an asked-for family that cannot be computed is an error naming
    what to run, a default one that cannot is skipped with a note."""
    store, url = run.store, run.store.url
    names = list(FAMILIES) if asked in (None, ["all"]) else list(dict.fromkeys(asked))
    if asked is None:
        names = [n for n in names if n not in EXPENSIVE]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise SalauditError(
            f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(FAMILIES)} (or all)"
        )
    root = store.root("r")
    attack_groups = sorted(root["attacks"].group_keys()) if store.has("attacks") else []
    have = {
        "maps": True,
        "attacks": any(a != "pgd" for a in attack_groups),
        "pgd": "pgd" in attack_groups,
        "boxes": store.has("inputs/bbox"),
        "decoys": bool(_generators(run)),
    }
    families, notes = [], []
    for name in names:
        need = FAMILIES[name].needs
        if have[need]:
            families.append(name)
        elif asked is None or asked == ["all"]:
            notes.append(f"{name}: not applicable (needs {NEXT_STAGE[need].format(url=url)})")
        else:
            raise SalauditError(
                f"metric {name} needs what store {url} lacks; run "
                f"{NEXT_STAGE[need].format(url=url)} first"
            )
    attacks = [a for a in attack_groups if a != "pgd"]
    attacked = _attacked_maps(run, attack_groups)
    for a, have_maps in attacked.items():
        missing = [m.name for m in run.methods if m.name not in have_maps]
        if missing:
            notes.append(
                f"attacks/{a} holds no maps of {', '.join(missing)}: their {a} metrics stay "
                f"empty; salaudit attack --store {url} --attacks {a} adds them"
            )
    labels = {"threshold": list(M.THRESHOLDINGS), "layer": M.cascade_layers(run.model.net)}
    if have["pgd"]:
        labels["radius"] = [float(r) for r in root["attacks/pgd/radius"][:]]
    return Evaluation(run, families, attacks, labels, _generators(run), notes, attacked)


def _generators(run: Run) -> list[str]:
    """Decoy generators whose populations the store keeps (laid out: an audit plans their
    validity before they are written; a region is scored once its population is done)."""
    if not run.store.has("decoys"):
        return []
    root = run.store.root("r")
    return [g for g in sorted(root["decoys"].group_keys()) if "population" in root[f"decoys/{g}"]]


def _attacked_maps(run: Run, attacks: list[str]) -> dict[str, set[str]]:
    """Per attack, the methods whose maps on its attacked images are in the store."""
    out = {}
    for a in attacks:
        group = f"attacks/{a}/maps"
        out[a] = set(run.store.root("r")[group].array_keys()) if run.store.has(group) else set()
    return out


# --- layout -------------------------------------------------------------------------------------


def layout_metrics(ev: Evaluation) -> None:
    """Create (or extend) the `metrics` group; single writer, before any region."""
    store, run = ev.run.store, ev.run
    n, shard = len(run.samples), store.attrs()["shard_size"]
    store.require_coordinate("metrics", "sample", run.samples)
    store.require_labels("metrics", "method", [m.name for m in ev.methods])
    if any(FAMILIES[f].dim == "attack" for f in ev.families):
        store.require_labels("metrics", "attack", ev.attacks)
    n_methods = store.root("r")["metrics/method"].shape[0]
    for name in ev.families:
        fam = FAMILIES[name]
        if fam.dim in ("radius", "threshold", "layer"):
            _fixed_coordinate(store, fam.dim, ev.labels[fam.dim])
        extra = _extra_len(store, ev, fam.dim)
        for var in fam.variables:
            store.require_array(
                f"metrics/{var}",
                (n, n_methods, *extra),
                ("sample", "method", *((fam.dim,) if fam.dim else ())),
                "float32",
                (shard, 1, *(1 if fam.dim == "attack" else e for e in extra)),
                {"higher_is_better": HIGHER_IS_BETTER[var]},
            )
    if "decoy_validity" in ev.families:
        for g in ev.generators:
            k = store.root("r")[f"decoys/{g}/population"].shape[1]
            store.require_array(
                f"metrics/decoy_validity_{g}",
                (n, k),
                ("sample", f"decoy_{g}"),
                "float32",
                (shard, k),
                {"units": "max |F_l(decoy) - F_l(x)| / max |F_l(x)|"},
            )
    store.consolidate()


def _fixed_coordinate(store, dim: str, labels: list) -> None:
    """Radius is numeric (pgd's radii); threshold and layer are string labels."""
    if dim == "radius":
        store.require_coordinate("metrics", dim, np.asarray(labels, dtype=float))
    else:
        store.require_labels("metrics", dim, [str(v) for v in labels])


def _extra_len(store, ev: Evaluation, dim: str | None) -> tuple[int, ...]:
    if dim is None:
        return ()
    if dim == "attack":
        return (store.root("r")["metrics/attack"].shape[0],)
    return (len(ev.labels[dim]),)


# --- one region -----------------------------------------------------------------------------------


def run_metrics(ev: Evaluation, start: int, stop: int) -> list[str]:
    """Every missing metric cell of samples [start, stop); returns what was computed. Each
    array of the region is read from the store once."""
    run, store = ev.run, ev.run.store

    @functools.cache
    def read(path: str) -> torch.Tensor:
        return torch.from_numpy(store.read(path, start, stop)).to(run.device)

    method_at = store.labels("metrics", "method")  # laid out by layout_metrics
    attack_at = store.labels("metrics", "attack") if store.has("metrics/attack") else {}
    computed = []
    for name in ev.families:
        if name == "decoy_validity":
            computed += _decoy_validity(ev, read, start, stop)
            continue
        for m in ev.methods:
            for a in _cells(ev, name, m.name):
                stage = "/".join(["metrics", name, m.name, *([a] if a else [])])
                if store.is_done(stage, start, stop):
                    continue
                values = _compute(ev, name, m, a, read, start, stop)
                index = (method_at[m.name], *((attack_at[a],) if a else ()))
                for var, v in values.items():
                    store.write_cell(f"metrics/{var}", start, index, v.float().cpu().numpy())
                store.mark_done(stage, start, stop)
                computed.append(stage)
    return computed


def _cells(ev: Evaluation, family: str, method: str) -> list[str | None]:
    """The attacks a family scores `method` under (None: no attack dimension); only attacks
    whose attacked images hold the method's maps."""
    if FAMILIES[family].dim == "attack":
        return [a for a in ev.attacks if method in ev.attacked[a]]
    if FAMILIES[family].needs == "pgd":
        return [None] if method in ev.attacked["pgd"] else []
    return [None]


def _compute(ev, name, m: Method, attack, read, start, stop) -> dict[str, torch.Tensor]:
    run, mb = ev.run, ev.run.micro_batch
    x, target, e = read("inputs/image"), read("inputs/prediction"), read(f"maps/{m.name}")
    b = run.model.baseline_colour.to(x)
    is_mask = m.base == "relex"
    if name == "fidelity":
        return {"fidelity": M.fidelity(run.model, x, e, target, b, micro_batch=mb)}
    if name == "deletion":
        mask = M.saliency_mask(e, is_mask)
        out = M.deletion_preservation(run.model, x, mask, target, b, micro_batch=mb)
        return {k: out[k] for k in FAMILIES[name].variables}
    if name in ("sensitivity", "rank"):
        x_adv, e_adv = read(f"attacks/{attack}/image"), read(f"attacks/{attack}/maps/{m.name}")
        if name == "sensitivity":
            return {"sensitivity": M.sensitivity(e, e_adv, x, x_adv)}
        return {
            "spearman": M.spearman(e.abs().sum(1), e_adv.abs().sum(1)),
            "topk_intersection": M.topk_intersection(e, e_adv),
        }
    if name == "retrieval":
        x_adv, e_adv = read("attacks/pgd/image"), read(f"attacks/pgd/maps/{m.name}")
        r = x_adv.shape[1]
        flat_x, flat_t = x_adv.flatten(0, 1), target.repeat_interleave(r)
        m_adv = M.saliency_mask(e_adv.flatten(0, 1), is_mask)
        m_0 = M.saliency_mask(e, is_mask).repeat_interleave(r, 0)
        return {
            "retrieval_adv": M.class_retrieval(run.model, flat_x, m_adv, flat_t, b, mb).view(-1, r),
            "retrieval_clean": M.class_retrieval(run.model, flat_x, m_0, flat_t, b, mb).view(-1, r),
        }
    if name == "localisation":
        return M.localisation(e, read("inputs/bbox"))
    if name == "box_accuracy":
        box = read("inputs/bbox")
        return {
            "box_accuracy": torch.stack(
                [M.box_accuracy(e, box, t) for t in ev.labels["threshold"]], 1
            )
        }
    if name == "sanity":
        ctx = Context(run.keys(start, stop, m.name), mb, run.references)
        out = M.cascading_randomisation(
            run.model, lambda model, xx, tt: m(model, xx, tt, ctx), x, target, seed=run.config.seed
        )
        return {f"sanity_{k}": out[k] for k in ("ssim", "spearman", "spearman_abs")}
    raise AssertionError(name)


def _decoy_validity(ev: Evaluation, read, start: int, stop: int) -> list[str]:
    run, store, done = ev.run, ev.run.store, []
    for g in ev.generators:
        stage = f"metrics/decoy_validity/{g}"
        if store.is_done(stage, start, stop) or not store.is_done(f"decoys/{g}", start, stop):
            continue  # done, or its population is not written yet (a later evaluate scores it)
        path = f"decoys/{g}/population"
        layer = store.root("r")[path].attrs["layer"]
        v = M.decoy_validity(run.model, layer, read("inputs/image"), read(path), run.micro_batch)
        store.write(f"metrics/decoy_validity_{g}", start, v.float().cpu().numpy())
        store.mark_done(stage, start, stop)
        done.append(stage)
    return done


# --- statistics ---------------------------------------------------------------------------------


def statistics(ev: Evaluation) -> dict[str, np.ndarray]:
    """Every (metric, condition, method, reference) comparison of the stored metrics."""
    ds = ev.run.store.dataset("metrics")
    pairs = method_pairs([str(v) for v in ds["method"].values])
    rows = []
    for var, label, sub in metric_conditions(ds):
        table = compare(
            lambda m, sub=sub: sub.sel({"method": m}).values, pairs, HIGHER_IS_BETTER[var]
        )
        rows += [{"metric": var, "condition": label, **row} for row in table]
    return {
        k: np.asarray([r[k] for r in rows], dtype=object if k in TEXT else float)
        for k in (*TEXT, *NUMBERS)
    }


def metric_conditions(ds):
    """Each stored metric variable, in the families' order, once per label of its own
    dimension: (variable, condition label such as "attack=topk@grad" or "", its float64
    (sample, method) DataArray). Select a method with .sel({"method": m}): `method` is a
    keyword of .sel."""
    for var in (v for f in FAMILIES.values() for v in f.variables if v in ds):
        da = ds[var].astype("float64")
        extra = [d for d in da.dims if d not in ("sample", "method")]
        if not extra:
            yield var, "", da
            continue
        for v in da[extra[0]].values:
            yield var, f"{extra[0]}={_label(v)}", da.sel({extra[0]: v})


def _label(v) -> str:
    return f"{float(v):g}" if isinstance(v, float | np.floating) else str(v)


def write_statistics(ev: Evaluation, table: dict[str, np.ndarray]) -> None:
    """Replace the `stats` group with `table` (derived data, one writer)."""
    store = ev.run.store
    root = store.root()
    if store.has("stats"):
        del root["stats"]
    grp = root.create_group("stats")
    n = len(table["metric"])
    for key, values in table.items():
        text = key in TEXT
        arr = grp.create_array(
            key,
            shape=(n,),
            chunks=(max(n, 1),),
            dtype=str if text else "float64",
            dimension_names=("comparison",),
            fill_value=None if text else np.nan,
        )
        if n:
            arr[:] = values
    store.consolidate()


def format_table(table: dict[str, np.ndarray], limit: int = 40) -> str:
    """The comparisons as text, most significant first."""
    if not len(table["metric"]):
        return "salaudit: no method pairs to compare (e.g. dance-grad with grad)"
    order = np.argsort(np.nan_to_num(table["p_holm"], nan=2.0), kind="stable")[:limit]
    lines = [
        f"{'metric':<20}{'condition':<28}{'method':<14}{'vs':<12}{'mean':>9}{'ref':>9}{'diff':>10}{'p_holm':>9}"
    ]
    for i in order:
        lines.append(
            f"{table['metric'][i]:<20}{table['condition'][i]:<28}{table['method'][i]:<14}"
            f"{table['reference'][i]:<12}{table['mean'][i]:>9.4g}{table['reference_mean'][i]:>9.4g}"
            f"{table['mean_difference'][i]:>10.3g}{table['p_holm'][i]:>9.3g}"
        )
    return "\n".join(lines)


def evaluate(
    url: str,
    families: list[str] | None = None,
    device: str = "auto",
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict:
    """Run the evaluate stage on the store at `url` in this process; returns a summary."""
    from tqdm.auto import tqdm

    run = reopen(url, storage_options, device, progress)
    ev = plan_evaluation(run, families)
    layout_metrics(ev)
    computed = []
    for start, stop in tqdm(
        run.regions, desc="evaluate", unit="shard", disable=not progress, file=sys.stderr
    ):
        computed += run_metrics(ev, start, stop)
    table = statistics(ev)
    if computed or not run.store.has("stats"):
        write_statistics(ev, table)
    return {
        "store": run.store.url,
        "samples": len(run.samples),
        "families": ev.families,
        "computed": len(computed),
        "notes": ev.notes,
        "table": format_table(table),
    }

"""The papers' headline comparisons on the default model, with their statistics.

One command: explain -> attack -> evaluate into a store, then the comparisons of DANCE (fidelity
and sensitivity of decoy-enhanced grad/ig/smoothgrad against the plain methods under topk,
target and mass-center; the constant, noise and mean-aggregation ablations; decoys' representation
difference against blur's), RelEx (class retrieval under pgd across radii against the gradient
methods) and BIG (Loc, EG and PP against IG, SmoothGrad and AGI), each a one-sided paired t-test
in the direction the metric favours with Holm's correction across the rows of one table, with
the 95% confidence interval of the mean difference and the effect size d_z (mean difference over
the differences' standard deviation). The decoys are the default audit's (`decoys: 32`). The
metrics that replace pixels (fidelity, class retrieval) are scored twice, under the mean
baseline (the default) and under zero, on two copies of one attacked store, and the report says
for each claim whether its verdict changes. Writes docs/paper-claims.md as measured.

    python benchmarks/paper_claims.py --images 64    # about 50 min on 2 CPU cores
    python benchmarks/paper_claims.py --images 200   # on a GPU (benchmarks/gpu.py's machine)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from datetime import date

import numpy as np
import torch
import xarray as xr
from scipy import stats as sps

from salaudit.metrics.catalogue import higher_is_better
from salaudit.metrics.stats import compare, paired_test
from salaudit.pipeline.attack import attack
from salaudit.pipeline.evaluate import evaluate
from salaudit.pipeline.explain import explain
from salaudit.pipeline.spec import DEFAULT_DECOYS, parse_spec
from salaudit.store.schema import metric_baseline_of

BASES = ("grad", "ig", "smoothgrad")
DANCE = tuple(f"dance-{b}" for b in BASES)
ABLATIONS = ("constant-grad", "noise-grad", "dance-mean-grad", "blur-grad")
ROBUST = ("relex", "big", "agi")
GHORBANI = ("topk@grad", "target@grad", "mass-center@grad")
BASELINES = ("mean", "zero")  # the metric baselines both scored (the first is the default)
BASELINE_WORDS = {"mean": "the training data's mean colour", "zero": "zero"}
PLAIN = list(zip(DANCE, BASES, strict=True))  # each decoy-enhanced method and its base
BASELINE_METRICS = {"fidelity", "retrieval_adv", "retrieval_clean"}  # replace pixels by b


def run_pipeline(args) -> str:
    methods = [*BASES, *DANCE, *ABLATIONS, *ROBUST]
    params = {"ig": {"n_steps": args.ig_steps}, "dance-ig": {"n_steps": args.ig_steps}}
    params |= {m: {"n_samples": args.sg_samples} for m in ("smoothgrad", "dance-smoothgrad")}
    params["big"] = {"n_steps": args.ig_steps}
    spec = parse_spec(
        {
            "methods": {m: params.get(m, {}) for m in methods},
            "selection": {"mode": "random", "n": args.images},
            "decoys": {
                g: dict(DEFAULT_DECOYS["dance"]) for g in ("dance", "blur", "constant", "noise")
            },
            "keep_decoys": True,
            "store": {"url": args.store},
        }
    )
    stamp = time.perf_counter()
    explain(spec, fresh=args.fresh, progress=True)
    print(f"explain: {time.perf_counter() - stamp:.0f} s", flush=True)
    stamp = time.perf_counter()
    steps = {a.split("@")[0]: {"steps": args.attack_steps} for a in GHORBANI}
    attack(args.store, list(GHORBANI), steps, methods=[*BASES, *DANCE, *ABLATIONS])
    attack(args.store, ["pgd"], radii=args.radii, methods=[*BASES, "relex"])
    print(f"attack: {time.perf_counter() - stamp:.0f} s", flush=True)
    stamp = time.perf_counter()
    for baseline in BASELINES:  # copied before any scoring: a copy holds no metrics yet
        url = scored_store(args.store, baseline)
        if url != args.store and (args.fresh or not os.path.exists(url)):
            shutil.rmtree(url, ignore_errors=True)
            shutil.copytree(args.store, url)
    for baseline in BASELINES:
        evaluate(scored_store(args.store, baseline), baseline=baseline)
    print(f"evaluate: {time.perf_counter() - stamp:.0f} s", flush=True)
    return args.store


def scored_store(store: str, baseline: str) -> str:
    """The copy of the attacked store scored under `baseline` (the store itself for the
    default)."""
    return store if baseline == BASELINES[0] else f"{store}-{baseline}"


def table(ds: xr.Dataset, var: str, pairs, condition: dict | None = None) -> list[dict]:
    """One table of `salaudit.metrics.stats.compare` on the stored metric `var` (under
    `condition`)."""
    da = ds[var].astype("float64").sel(condition or {})
    return compare(lambda m: da.sel({"method": m}).values, pairs, higher_is_better(var))


def interval(r: dict) -> tuple[float, float, float]:
    """The 95% t interval of the mean difference and d_z (mean over the differences' sd)."""
    n, diff, se = r["n"], r["mean_difference"], r["standard_error"]
    half = float(sps.t.ppf(0.975, n - 1)) * se if n > 1 else float("nan")
    d_z = diff / (se * np.sqrt(n)) if n > 1 and se > 0 else float("nan")
    return diff - half, diff + half, d_z


def markdown(title: str, var: str, rows: list[dict]) -> str:
    better = "higher" if higher_is_better(var) else "lower"
    out = [
        f"#### {title}",
        "",
        f"`{var}`, {better} is better; one-sided paired t-test, Holm within the table.",
        "",
        "| method | reference | mean | reference mean | difference | 95% CI | d_z | n | p "
        "| p (Holm) | holds |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        low, high, d_z = interval(r)
        out.append(
            f"| {r['method']} | {r['reference']} | {r['mean']:.4g} | {r['reference_mean']:.4g} | "
            f"{r['mean_difference']:+.4g} | [{low:+.3g}, {high:+.3g}] | {d_z:+.2f} | {r['n']} | "
            f"{r['p_value']:.3g} | {r['p_holm']:.3g} | {verdict(r)} |"
        )
    return "\n".join(out) + "\n"


def verdict(r: dict) -> str:
    return "yes" if r["p_holm"] < 0.05 else "no"


class Claims:
    """The report's tables; those of a metric that replaces pixels once per baseline, each
    row's verdicts kept for the summary of what changes with the baseline."""

    def __init__(self, scored: dict[str, xr.Dataset]):
        self.scored, self.parts, self.changes = scored, [], []

    def add(self, title: str, var: str, pairs, condition: dict | None = None) -> None:
        if var not in BASELINE_METRICS:
            ds = self.scored[BASELINES[0]]
            self.parts.append(markdown(title, var, table(ds, var, pairs, condition)))
            return
        by_baseline = {}
        for baseline, ds in self.scored.items():
            rows = table(ds, var, pairs, condition)
            by_baseline[baseline] = rows
            self.parts.append(markdown(f"{title}, {baseline} baseline", var, rows))
        for i, r in enumerate(by_baseline[BASELINES[0]]):
            self.changes.append(
                (title, r["method"], r["reference"], [rows[i] for rows in by_baseline.values()])
            )

    def summary(self) -> str:
        head = " | ".join(f"{b}: p (Holm), holds" for b in BASELINES)
        out = [
            "## Verdicts under the two baselines\n",
            "Every row of a table that replaces pixels (fidelity, class retrieval), its verdict "
            "under each baseline.\n",
            f"| table | method | reference | {head} | changes |",
            "|---|---|---|" + "---|" * len(BASELINES) + ":---:|",
        ]
        for title, method, reference, rows in self.changes:
            cells = " | ".join(f"{r['p_holm']:.3g}, {verdict(r)}" for r in rows)
            changed = "**yes**" if len({verdict(r) for r in rows}) > 1 else "no"
            out.append(f"| {title} | {method} | {reference} | {cells} | {changed} |")
        return "\n".join(out) + "\n"


def decoy_table(ds: xr.Dataset) -> str:
    """DANCE fig. 5: decoys keep the representation (relative L_inf change of F_l) better
    than blur; per sample the mean over its decoys (member 0, the image itself, left out)."""
    dance = np.nanmean(ds["decoy_validity_dance"].values[:, 1:], 1)
    blur = np.nanmean(ds["decoy_validity_blur"].values[:, 1:], 1)
    t = paired_test(dance, blur, higher_is_better=False)
    return (
        "#### Decoys' representation difference against blur's (DANCE fig. 5)\n\n"
        "Relative L_inf difference of F_l (pool1), per sample the mean over its decoys; lower "
        "is better.\n\n| generator | mean | reference (blur) | difference | SE | n | p |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        f"| dance | {np.mean(dance):.4g} | {np.mean(blur):.4g} | {t['mean_difference']:+.4g} | "
        f"{t['standard_error']:.3g} | {t['n']} | {t['p_value']:.3g} |\n"
    )


def _device() -> str:
    return f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU"


def report(args, store: str, seconds: float) -> str:
    scored = {
        b: xr.open_zarr(scored_store(store, b), group="metrics", chunks=None) for b in BASELINES
    }
    for b, ds in scored.items():
        assert metric_baseline_of(ds.attrs) == b, (b, ds.attrs)
    words = ", ".join(f"`{b}` ({BASELINE_WORDS[b]})" for b in BASELINES)
    parts = [
        "# Paper claims on the default model\n",
        f"Measured {date.today()} on {platform.machine()} ({torch.get_num_threads()} torch "
        f"threads, {_device()}) "
        f"in {seconds / 60:.0f} min with\n\n    python benchmarks/paper_claims.py --images "
        f"{args.images} --attack-steps {args.attack_steps} --ig-steps {args.ig_steps} "
        f"--sg-samples {args.sg_samples} --radii {','.join(map(str, args.radii))}\n",
        f"{args.images} seeded random test images of builtin:digit-scenes, model "
        "builtin:digit-scenes-cnn, the default audit's decoys (`decoys: 32`, every generator). "
        '"holds" = the claim\'s direction is significant at 0.05 after Holm; "no" means this run '
        "does not reproduce it. Tables of metrics that replace pixels (fidelity, class "
        f"retrieval) are given under each metric baseline, {words}, and their title names it; "
        "the other metrics use none.\n",
        "## DANCE\n",
    ]
    claims = Claims(scored)
    claims.add("Fidelity: decoy-enhanced against plain", "fidelity", PLAIN)
    for a in GHORBANI:
        claims.add(f"Sensitivity under {a}", "sensitivity", PLAIN, {"attack": a})
    ablation_pairs = [("dance-grad", m) for m in ABLATIONS]
    claims.parts.append(
        "### Ablations: optimised decoys with range aggregation against the controls\n"
    )
    claims.add("Ablations: fidelity", "fidelity", ablation_pairs)
    for a in GHORBANI:
        claims.add(
            f"Ablations: sensitivity under {a}", "sensitivity", ablation_pairs, {"attack": a}
        )
    claims.parts.append(decoy_table(scored[BASELINES[0]]))
    claims.parts.append("## RelEx: class retrieval under PGD\n")
    for r in scored[BASELINES[0]]["radius"].values:
        for var in ("retrieval_adv", "retrieval_clean"):
            pairs = [("relex", b) for b in BASES]
            claims.add(f"{var} at radius {r:g}/255", var, pairs, {"radius": r})
    claims.parts.append("## BIG: localisation against boxes\n")
    big_pairs = [("big", "ig"), ("big", "smoothgrad"), ("big", "agi")]
    for var in ("loc", "energy_game", "positive_percentage"):
        claims.add(var, var, big_pairs)
    return "\n".join([*parts, *claims.parts, claims.summary()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--attack-steps", type=int, default=100)
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--sg-samples", type=int, default=10)
    p.add_argument(
        "--radii", type=lambda s: [float(v) for v in s.split(",")], default=[2.0, 8.0, 32.0]
    )
    p.add_argument("--store", default="runs/paper-claims")
    p.add_argument("--out", default="docs/paper-claims.md")
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args()
    stamp = time.perf_counter()
    store = run_pipeline(args)
    text = report(args, store, time.perf_counter() - stamp)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

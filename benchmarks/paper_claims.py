"""The papers' headline comparisons on the default model, with their statistics.

One command: explain -> attack -> evaluate into a store, then the comparisons of DANCE (fidelity
and sensitivity of decoy-enhanced grad/ig/smoothgrad against the plain methods under topk,
target and mass-center; the constant, noise and mean-aggregation ablations; decoys' representation
difference against blur's), RelEx (class retrieval under pgd across radii against the gradient
methods) and BIG (Loc, EG and PP against IG, SmoothGrad and AGI), each a one-sided paired t-test
in the direction the metric favours with Holm's correction across the rows of one table. Writes
docs/paper-claims.md as measured.

    python benchmarks/paper_claims.py --images 16   # 11.5 min on 2 CPU cores; linear in images
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import numpy as np
import torch
import xarray as xr

from salaudit.metrics.catalogue import higher_is_better
from salaudit.metrics.stats import compare, paired_test
from salaudit.pipeline.attack import attack
from salaudit.pipeline.evaluate import evaluate
from salaudit.pipeline.explain import explain
from salaudit.pipeline.spec import parse_spec

BASES = ("grad", "ig", "smoothgrad")
DANCE = tuple(f"dance-{b}" for b in BASES)
ABLATIONS = ("constant-grad", "noise-grad", "dance-mean-grad", "blur-grad")
ROBUST = ("relex", "big", "agi")
GHORBANI = ("topk@grad", "target@grad", "mass-center@grad")


def run_pipeline(args) -> str:
    methods = [*BASES, *DANCE, *ABLATIONS, *ROBUST]
    params = {"ig": {"n_steps": args.ig_steps}, "dance-ig": {"n_steps": args.ig_steps}}
    params |= {m: {"n_samples": args.sg_samples} for m in ("smoothgrad", "dance-smoothgrad")}
    params["big"] = {"n_steps": args.ig_steps}
    spec = parse_spec(
        {
            "methods": {m: params.get(m, {}) for m in methods},
            "selection": {"mode": "random", "n": args.images},
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
    evaluate(args.store)
    print(f"evaluate: {time.perf_counter() - stamp:.0f} s", flush=True)
    return args.store


def table(ds: xr.Dataset, var: str, pairs, condition: dict | None = None) -> list[dict]:
    """One table of `salaudit.metrics.stats.compare` on the stored metric `var` (under
    `condition`)."""
    da = ds[var].astype("float64").sel(condition or {})
    return compare(lambda m: da.sel({"method": m}).values, pairs, higher_is_better(var))


def markdown(title: str, var: str, rows: list[dict]) -> str:
    better = "higher" if higher_is_better(var) else "lower"
    out = [
        f"#### {title}",
        "",
        f"`{var}`, {better} is better; one-sided paired t-test, Holm within the table.",
        "",
        "| method | reference | mean | reference mean | difference | SE | n | p | p (Holm) "
        "| holds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        holds = "yes" if r["p_holm"] < 0.05 else "no"
        out.append(
            f"| {r['method']} | {r['reference']} | {r['mean']:.4g} | {r['reference_mean']:.4g} | "
            f"{r['mean_difference']:+.4g} | {r['standard_error']:.3g} | {r['n']} | "
            f"{r['p_value']:.3g} | {r['p_holm']:.3g} | {holds} |"
        )
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
    ds = xr.open_zarr(store, group="metrics", chunks=None)
    parts = [
        "# Paper claims on the default model\n",
        f"Measured {date.today()} on {platform.machine()} ({torch.get_num_threads()} torch "
        f"threads, {_device()}) "
        f"in {seconds / 60:.0f} min with\n\n    python benchmarks/paper_claims.py --images "
        f"{args.images} --attack-steps {args.attack_steps} --ig-steps {args.ig_steps} "
        f"--sg-samples {args.sg_samples} --radii {','.join(map(str, args.radii))}\n",
        f"{args.images} seeded random test images of builtin:digit-scenes, model "
        'builtin:digit-scenes-cnn. "holds" = the claim\'s direction is significant at 0.05 after '
        'Holm; "no" means this run does not reproduce it.\n',
        "## DANCE\n",
        markdown(
            "Fidelity: decoy-enhanced against plain",
            "fidelity",
            table(ds, "fidelity", list(zip(DANCE, BASES, strict=True))),
        ),
    ]
    for a in GHORBANI:
        parts.append(
            markdown(
                f"Sensitivity under {a}",
                "sensitivity",
                table(ds, "sensitivity", list(zip(DANCE, BASES, strict=True)), {"attack": a}),
            )
        )
    ablation_pairs = [("dance-grad", m) for m in ABLATIONS]
    parts.append("### Ablations: optimised decoys with range aggregation against the controls\n")
    parts.append(markdown("Fidelity", "fidelity", table(ds, "fidelity", ablation_pairs)))
    for a in GHORBANI:
        parts.append(
            markdown(
                f"Sensitivity under {a}",
                "sensitivity",
                table(ds, "sensitivity", ablation_pairs, {"attack": a}),
            )
        )
    parts.append(decoy_table(ds))
    parts.append("## RelEx: class retrieval under PGD\n")
    for r in ds["radius"].values:
        for var in ("retrieval_adv", "retrieval_clean"):
            parts.append(
                markdown(
                    f"{var} at radius {r:g}/255",
                    var,
                    table(ds, var, [("relex", b) for b in BASES], {"radius": r}),
                )
            )
    parts.append("## BIG: localisation against boxes\n")
    big_pairs = [("big", "ig"), ("big", "smoothgrad"), ("big", "agi")]
    for var in ("loc", "energy_game", "positive_percentage"):
        parts.append(markdown(var, var, table(ds, var, big_pairs)))
    return "\n".join(parts)


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

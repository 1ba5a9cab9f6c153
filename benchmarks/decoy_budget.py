"""The decoy budget table (docs/decoys.md): fidelity and sensitivity of dance-grad against the
number of decoys N (the ICLR paper's fig. 2C), with paired tests, on the default model.

For each N one store: grad and dance-grad with `decoys: N` on the same seeded test images,
topk@grad's attacked inputs, then fidelity and sensitivity. Each N is compared, per image,
with the largest N (two-sided paired t-test: does the smaller population change the score?)
and dance-grad with grad (one-sided, the paper's claim). Also per N: the packing (spacing, m),
the decoys' success and mean |x~ - x| against blur's on the same masks, and seconds per image.

    python benchmarks/decoy_budget.py [--images 16] [--budgets 8,16,32,64,128]
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import numpy as np
import torch
import xarray as xr
from scipy import stats

from salaudit import load_dataset, load_model
from salaudit.methods.decoys import DecoyConfig, make_decoys
from salaudit.metrics.stats import paired_test
from salaudit.pipeline.attack import attack
from salaudit.pipeline.evaluate import evaluate
from salaudit.pipeline.explain import explain
from salaudit.pipeline.spec import parse_spec


def scores(args, n: int) -> tuple[dict[str, np.ndarray], float]:
    """Per-image fidelity and sensitivity of grad and dance-grad with N = n, and explain's
    seconds per image."""
    store = f"{args.store}/decoys-{n}"
    spec = parse_spec(
        {
            "methods": {"grad": {}, "dance-grad": {}},
            "decoys": {"dance": {"decoys": n}},
            "selection": {"mode": "random", "n": args.images},
            "store": {"url": store},
            "shard_size": args.images,
        }
    )
    start = time.perf_counter()
    explain(spec, fresh=True, progress=False)
    seconds = (time.perf_counter() - start) / args.images
    attack(store, ["topk@grad"], {"topk": {"steps": args.attack_steps}}, progress=False)
    evaluate(store, ["fidelity", "sensitivity"], progress=False)
    ds = xr.open_zarr(store, group="metrics", chunks=None)
    out = {}
    for method in ("grad", "dance-grad"):
        out[f"fidelity/{method}"] = ds["fidelity"].sel({"method": method}).values.astype("float64")
        sens = ds["sensitivity"].sel({"method": method, "attack": "topk@grad"})
        out[f"sensitivity/{method}"] = sens.values.astype("float64")
    return out, seconds


def decoy_stats(model, x, n: int) -> tuple[DecoyConfig, float, float]:
    """The resolved config, the share of successful decoys and their mean shift over blur's."""
    cfg = DecoyConfig(decoys=n).resolved(model)
    d = make_decoys(model, x, cfg)
    blur = make_decoys(model, x, DecoyConfig("blur", decoys=n // 2).resolved(model))  # same masks
    shift = d.mean_shift.mean() / blur.mean_shift.mean()
    return cfg, d.success.float().mean().item(), shift.item()


def two_sided(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of a - b, its standard error and the two-sided paired t-test's p (NaN pairs out)."""
    keep = ~(np.isnan(a) | np.isnan(b))
    diff = a[keep] - b[keep]
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    return float(diff.mean()), float(se), float(stats.ttest_rel(a[keep], b[keep]).pvalue)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--budgets", default="8,16,32,64,128")
    ap.add_argument("--attack-steps", type=int, default=30)
    ap.add_argument("--store", default="runs/decoy-budget")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    model = load_model("builtin:digit-scenes-cnn")
    x = load_dataset("builtin:digit-scenes").load(range(4)).image
    results = {n: scores(args, n) for n in budgets}
    ref = max(budgets)
    print(
        f"{args.images} seeded random test images of builtin:digit-scenes, "
        f"{platform.machine()}, {torch.get_num_threads()} threads, {date.today()}; "
        f"reference N = {ref}; topk@grad with {args.attack_steps} steps\n"
    )
    print(
        "| N | spacing | m | success | shift / blur | fidelity | vs N=ref: diff (SE), p | "
        "vs grad: p | sensitivity | vs N=ref: diff (SE), p | vs grad: p | s/image |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|")
    for n in budgets:
        got, seconds = results[n]
        cfg, success, shift = decoy_stats(model, x, n)
        cells = []
        for metric in ("fidelity", "sensitivity"):
            mine, grad = got[f"{metric}/dance-grad"], got[f"{metric}/grad"]
            diff, se, p = two_sided(mine, results[ref][0][f"{metric}/dance-grad"])
            claim = paired_test(mine, grad, higher_is_better=metric == "fidelity")
            cells += [
                f"{np.nanmean(mine):.4g}",
                "-" if n == ref else f"{diff:+.3g} ({se:.2g}), {p:.2g}",
                f"{claim['p_value']:.2g}",
            ]
        print(
            f"| {n} | {cfg.spacing} | {cfg.per_mask} | {success:.1%} | {shift:.0%} | "
            + " | ".join(cells)
            + f" | {seconds:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

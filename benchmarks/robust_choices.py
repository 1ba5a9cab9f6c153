"""The measurements behind the choices of docs/robust.md: RelEx iterations and l1, and the
boundary polish against the closed-form boundary of a linear softmax model. Usage:

    python benchmarks/robust_choices.py [--images 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from salaudit import load_dataset, load_model
from salaudit.inputs.selection import Selection, select_samples
from salaudit.methods.boundary_search import BoundaryConfig, find_boundary
from salaudit.methods.gradients import Context
from salaudit.methods.relex import relex, scaled_l1

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from support import closest_linear_boundary  # noqa: E402


def relex_sweep(n: int) -> None:
    model = load_model("builtin:digit-scenes-cnn", progress=False)
    data = load_dataset("builtin:digit-scenes")
    idx = select_samples(data, Selection("random", 64, seed=0))[:n]
    x = data.load(idx).image
    with torch.no_grad():
        t = model(x).argmax(1)
    ctx = Context([f"0/{i}/relex" for i in idx])
    b = model.baseline_colour
    print("| setting | class kept | mean p_c | mean L1 of m |\n|---|---|---|---|")
    for label, kw in [
        ("50 iterations, scaled l1", {"iterations": 50}),
        ("100 iterations, scaled l1 (default)", {}),
        ("50 iterations, l1 / 4", {"iterations": 50, "l1": scaled_l1(x[0].numel()) / 4}),
        ("50 iterations, unscaled l1 1e-4", {"iterations": 50, "l1": 1e-4}),
    ]:
        m = relex(model, x, t, ctx, **kw)
        with torch.no_grad():
            p = model(m * x + (1 - m) * b).softmax(1)
        kept = (p.argmax(1) == t).float().mean()
        p_c = p.gather(1, t[:, None]).mean()
        print(f"| {label} | {kept:.0%} | {p_c:.2f} | {m.flatten(1).sum(1).mean():.0f} |")


def linear_boundary() -> None:
    model = load_model("python:support:linear_model")
    x = load_dataset("builtin:digit-scenes").load(range(64)).image
    with torch.no_grad():
        t = model(x).argmax(1)
    exact, inside = closest_linear_boundary(model, x, t)
    print(f"\n{int(inside.sum())} of 64 closest points inside the box")
    print("| finder | max rel. error (mean), no polish | with polish |\n|---|---|---|")
    for finders in [("cw",), ("pgd",), ("apgd",), ("pgd", "cw", "apgd")]:
        cells = []
        for steps in (0, 5):
            cfg = BoundaryConfig(finders=finders, refine_steps=steps)
            rel = (find_boundary(model, x, t, cfg, Context()).distance / exact - 1)[inside]
            cells.append(f"{rel.abs().max():+.1%} ({rel.mean():+.1%})")
        print(f"| {','.join(finders)} | {cells[0]} | {cells[1]} |")


def default_boundary() -> None:
    model = load_model("builtin:digit-scenes-cnn", progress=False)
    data = load_dataset("builtin:digit-scenes")
    idx = select_samples(data, Selection("random", 64, seed=0))
    x = data.load(idx).image
    with torch.no_grad():
        t = model(x).argmax(1)
    ctx = Context([f"0/{i}/boundary" for i in idx])
    for steps in (0, 5):
        found = find_boundary(model, x, t, BoundaryConfig(refine_steps=steps), ctx)
        each = ", ".join(f"{k} {v.nanmean():.3f}" for k, v in found.by_finder.items())
        print(
            f"default model, 64 images, polish {steps}: found {found.success.float().mean():.0%}; "
            f"mean distance: {each}; ensemble {found.distance.nanmean():.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args()
    linear_boundary()
    default_boundary()
    relex_sweep(args.images)


if __name__ == "__main__":
    main()

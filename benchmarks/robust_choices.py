"""The measurements behind the choices of docs/robust.md: RelEx iterations and l1, the
boundary polish against the closed-form boundary of a linear softmax model, and the budgets for
large inputs (RelEx's copies, the boundary ensemble) on the default model. Usage:

    python benchmarks/robust_choices.py [--images 16] [--only relex,boundary,budget,size]

`size` times relex and big on torchvision's resnet18 (random weights) at 224 with the
large-input budgets, on `--images` random images (`benchmarks/real_size.py`'s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

from salaudit import load_dataset, load_model
from salaudit.inputs.selection import Selection, select_samples
from salaudit.methods.boundary_search import BoundaryConfig, find_boundary
from salaudit.methods.gradients import Context
from salaudit.methods.relex import relex, scaled_l1

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from support import closest_linear_boundary  # noqa: E402


def default_images(n: int):
    """The default model, the first n of its 64 seeded test images, their indices and the
    clean predictions (targets)."""
    model = load_model("builtin:digit-scenes-cnn", progress=False)
    data = load_dataset("builtin:digit-scenes")
    idx = select_samples(data, Selection("random", 64, seed=0))[:n]
    x = data.load(idx).image
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, idx, x, t


def relex_sweep(n: int) -> None:
    model, idx, x, t = default_images(n)
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


def _rows(model) -> tuple[dict, object]:
    count = {"rows": 0}
    hook = model.register_forward_pre_hook(
        lambda _m, args: count.__setitem__("rows", count["rows"] + len(args[0]))
    )
    return count, hook


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the rank correlation of two maps."""
    return sum(spearmanr(u.flatten(), v.flatten())[0] for u, v in zip(a, b, strict=True)) / len(a)


def relex_budget(n: int) -> None:
    """RelEx with fewer noisy copies per iteration: the class kept, and the rank correlation
    with the 50-copy mask next to the 50-copy mask's own seed-to-seed correlation."""
    model, idx, x, t = default_images(n)
    b = model.baseline_colour
    ref = relex(model, x, t, Context([f"0/{i}/relex" for i in idx]), n_noise=50)
    other = relex(model, x, t, Context([f"1/{i}/relex" for i in idx]), n_noise=50)
    print(f"\nRelEx, {n} default images; 50 copies seed to seed: {_spearman(ref, other):.3f}")
    print("| copies per iteration | rows / image | class kept | Spearman with 50 copies |")
    print("|---|---|---|---|")
    for copies in (50, 16, 8, 4):
        count, hook = _rows(model)
        m = relex(model, x, t, Context([f"1/{i}/relex" for i in idx]), n_noise=copies)
        hook.remove()
        with torch.no_grad():
            kept = (model(m * x + (1 - m) * b).argmax(1) == t).float().mean()
        print(f"| {copies} | {count['rows'] // n:,} | {kept:.0%} | {_spearman(ref, m):.3f} |")


def boundary_budget(n: int) -> None:
    """Cheaper boundary ensembles against the default: success, distance, rows per image."""
    model, idx, x, t = default_images(n)
    ctx = Context([f"0/{i}/boundary" for i in idx])
    print(f"\nBoundary search, {n} default images")
    print("| ensemble | rows / image | found | mean distance | vs default (mean, max) |")
    print("|---|---|---|---|---|")
    base = None
    for label, kw in [
        ("default: pgd, cw 9 x 100, apgd", {}),
        ("pgd, cw 3 x 100, apgd", {"cw_binary_steps": 3}),
        ("pgd, cw 5 x 50, apgd", {"cw_binary_steps": 5, "cw_steps": 50}),
        ("pgd, apgd", {"finders": ("pgd", "apgd")}),
        ("pgd", {"finders": ("pgd",)}),
    ]:
        count, hook = _rows(model)
        found = find_boundary(model, x, t, BoundaryConfig(**kw), ctx)
        hook.remove()
        base = found.distance if base is None else base
        rel = found.distance / base - 1
        print(
            f"| {label} | {count['rows'] // n:,} | {found.success.float().mean():.0%} | "
            f"{found.distance.nanmean():.3f} | "
            f"{rel.nanmean():+.1%}, {rel.nan_to_num().max():+.1%} |"
        )


def at_size(n: int) -> None:
    """RelEx and BIG per image on resnet18 at 224 (the large-input budgets): seconds, rows,
    and the boundary search's success."""
    import time

    from real_size import torchvision_model

    from salaudit.methods.registry import get_method

    model = torchvision_model("resnet18", torch.device("cpu"), "fp32")
    torch.manual_seed(1)
    x = torch.rand(n, 3, 224, 224)
    with torch.no_grad():
        t = model(x).argmax(1)
    print(f"\nresnet18 at 224, {n} random images, {torch.get_num_threads()} threads")
    print("| method | rows / image | s / image | boundary found |\n|---|---|---|---|")
    for name in ("big", "relex"):
        method = get_method(name).resolved(model)
        rows = x if name == "big" else x[:2]  # RelEx's cost does not depend on the image
        ctx = Context([f"0/{i}/size" for i in range(len(rows))], micro_batch=32)
        count, hook = _rows(model)
        start = time.perf_counter()
        if name == "big":
            found = find_boundary(model, rows, t[: len(rows)], method.boundary, ctx)
            ctx.extra["boundary"] = found
            success = f"{int(found.success.sum())} of {len(rows)}"
        else:
            success = ""
        method(model, rows, t[: len(rows)], ctx)
        seconds = time.perf_counter() - start
        hook.remove()
        knobs = (
            f"CW {method.boundary.cw_binary_steps} x {method.boundary.cw_steps}"
            if name == "big"
            else f"{method.params['n_noise']} copies x {method.params['iterations']} iterations"
        )
        print(
            f"| {name} ({knobs}) | {count['rows'] // len(rows):,} | "
            f"{seconds / len(rows):.1f} | {success} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--only", default="relex,boundary,budget,size")
    args = ap.parse_args()
    parts = args.only.split(",")
    if "boundary" in parts:
        linear_boundary()
        default_boundary()
    if "relex" in parts:
        relex_sweep(args.images)
    if "budget" in parts:
        relex_budget(args.images)
        boundary_budget(64)
    if "size" in parts:
        at_size(args.images)


if __name__ == "__main__":
    main()

"""The decoy trade-off that sets the DANCE defaults (docs/decoys.md).

For each layer and eps: the share of optimised decoys that succeed, their mean |x~ - x| inside
the mask against the blur decoys' (same masks), their representation difference against blur's,
and the cost. Usage: python benchmarks/decoy_tradeoff.py [--images 8] [--layers pool1,pool2]
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import torch

from salaudit import load_dataset, load_model
from salaudit.methods.decoys import DecoyConfig, make_decoys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--layers", default="pool1,pool2")
    ap.add_argument("--eps", default="0.01,0.05,0.1")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--steps-per-round", type=int, default=None)
    args = ap.parse_args()
    model = load_model("builtin:digit-scenes-cnn")
    x = load_dataset("builtin:digit-scenes").load(range(args.images)).image
    tuning = {k: v for k, v in (("lr", args.lr), ("steps_per_round", args.steps_per_round)) if v}
    cpu = platform.processor() or platform.machine()
    print(
        f"{args.images} test images of builtin:digit-scenes, {cpu}, "
        f"{torch.get_num_threads()} threads, {date.today()}\n"
    )
    print(
        "| layer | eps | decoys/image | success | mean abs shift: decoys / blur | "
        "successful decoys / blur | rep. diff: decoys / blur | rounds budget | s/image |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in args.layers.split(","):
        blur = make_decoys(model, x, DecoyConfig("blur", layer=layer).resolved(model))
        for eps in (float(e) for e in args.eps.split(",")):
            cfg = DecoyConfig("dance", layer=layer, eps=eps, **tuning).resolved(model)
            start = time.perf_counter()
            d = make_decoys(model, x, cfg)
            per_image = (time.perf_counter() - start) / len(x)
            shift, bshift = d.mean_shift.mean().item(), blur.mean_shift.mean().item()
            ok_shift = d.mean_shift[d.success].mean().item()
            print(
                f"| {layer} | {eps} | {d.population.shape[1]} | {d.success.float().mean():.1%} | "
                f"{shift:.4f} / {bshift:.4f} = {shift / bshift:.0%} | {ok_shift / bshift:.0%} | "
                f"{d.rep_diff.mean():.4f} / {blur.rep_diff.mean():.4f} | {cfg.max_rounds} | "
                f"{per_image:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Where DANCE's decoy optimisation spends its time at 224 x 224: torch's profiler over one
image's population (torchvision resnet18 with random weights, the default budget), the
operators' self CPU time summed by kind (convolutions forward and backward, the rest) against
the same run's bare forward+backward floor to the decoy layer (docs/benchmarks.md).

    python benchmarks/profile_decoys.py [--arch resnet18] [--decoys 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import floor  # noqa: E402
from real_size import torchvision_model  # noqa: E402

from salaudit.engine.batching import micro_batch_size  # noqa: E402
from salaudit.methods.context import Context  # noqa: E402
from salaudit.methods.decoys import DecoyConfig, make_decoys  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--decoys", type=int, default=32)
    args = ap.parse_args()
    model = torchvision_model(args.arch, torch.device("cpu"), "fp32")
    config = DecoyConfig(decoys=args.decoys).resolved(model)
    x = torch.rand(1, *model.input_shape)
    ctx = Context(["profile/0"], micro_batch_size(model, "cpu"))
    rate, batch, _ = floor(model, torch.device("cpu"), layer=config.layer)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decoys = make_decoys(model, x, config, ctx)
    wall = time.perf_counter() - start
    rows = int(decoys.passes.sum())
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops) / 1e6
    conv = sum(e.self_cpu_time_total for e in ops if "conv" in e.key) / 1e6
    print(f"{args.arch}, {args.decoys} decoys to `{config.layer}`, 1 image, {ctx.micro_batch} rows")
    print(f"floor to the layer: {rate:.1f} rows/s (batch {batch})")
    print(f"optimisation: {rows} rows in {wall:.2f} s (profiled), {rows / wall:.1f} rows/s")
    print(f"convolutions (forward and backward): {conv:.2f} s of {total:.2f} s operator time")
    print("| operator | self CPU s | share |")
    print("|---|---:|---:|")
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:12]:
        own = e.self_cpu_time_total / 1e6
        print(f"| {e.key} | {own:.2f} | {own / total:.0%} |")


if __name__ == "__main__":
    main()

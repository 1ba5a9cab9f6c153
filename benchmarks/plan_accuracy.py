"""`salaudit plan`'s estimate at 224 against a run: torchvision resnet18 (random weights,
nothing downloaded) on a folder of random 224x224 images, each stage planned, then run at full
size and timed (docs/benchmarks.md, "Planning at 224").

    python benchmarks/plan_accuracy.py [--attacks pgd] [--samples 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from salaudit.pipeline.audit import prepare_audit, run_unit
from salaudit.pipeline.estimate import estimate
from salaudit.pipeline.spec import parse_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", default="pgd")
    ap.add_argument("--samples", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="salaudit-plan-accuracy-"))
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "r18.pt")
    rng = np.random.default_rng(0)
    (root / "images" / "a").mkdir(parents=True)
    for i in range(args.samples):
        pixels = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / "a" / f"{i}.png")
    spec = parse_spec(
        {
            "model": f"torchvision:resnet18?weights={root / 'r18.pt'}",
            "data": f"folder:{root / 'images'}?resize=224&crop=224",
            "selection": {"mode": "first", "n": args.samples},
            "methods": {
                "grad": {},
                "ig": {"n_steps": 16},
                "smoothgrad": {"n_samples": 10},
                "dance-grad": {},
            },
            "attacks": list(filter(None, args.attacks.split(","))),
            "metrics": ["fidelity"],
            "shard_size": args.samples,
            "cluster": "local",
            "workers": 1,
            "store": {"url": str(root / "store")},
        }
    )
    threads = torch.get_num_threads()
    start = time.perf_counter()
    planned = estimate(spec, args.samples, 1, threads)
    print(f"calibrated in {time.perf_counter() - start:.0f} s ({threads} threads)")
    run, plan = prepare_audit(spec, progress=False)
    measured: dict[str, float] = {}
    for unit in plan.units():
        start = time.perf_counter()
        run_unit(run, plan, unit)
        stage = unit.stage.value
        measured[stage] = measured.get(stage, 0.0) + time.perf_counter() - start
    print("| stage | rows / sample | planned s | measured s | planned / measured |")
    print("|---|---:|---:|---:|---:|")
    for stage, seconds in measured.items():
        ahead = planned.stage_seconds[stage]
        print(
            f"| {stage} | {planned.model_rows[stage]:,.0f} | {ahead:.1f} | {seconds:.1f} | "
            f"{ahead / seconds:.2f} |"
        )


if __name__ == "__main__":
    main()

"""What Dask's nanny environment costs torch: the default model's forward+backward passes in a
fresh process, plainly, with the nanny's MALLOC_TRIM_THRESHOLD_, and with all its settings.

    python benchmarks/worker_environment.py [--batch 256] [--passes 30]

Each run is its own process on 1 torch thread (glibc reads the variable when a process starts).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from datetime import date

ENVIRONMENTS = {
    "plain": {},
    "MALLOC_TRIM_THRESHOLD_=65536": {"MALLOC_TRIM_THRESHOLD_": "65536"},
    "all of the nanny's settings": {
        "MALLOC_TRIM_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    },
}


def passes(batch: int, count: int) -> float:
    """Seconds (best of 3) of `count` forward+backward passes of the default model."""
    import torch
    from common import timed

    from salaudit import load_model

    torch.set_num_threads(1)
    model = load_model("builtin:digit-scenes-cnn", progress=False)
    x = torch.rand(batch, *model.input_shape, requires_grad=True)

    def run() -> None:
        for _ in range(count):
            model(x).sum().backward()

    run()
    return timed(run, torch.device("cpu"), repeats=3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--passes", type=int, default=30)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(passes(args.batch, args.passes))
        return
    clean = {
        k: v for k, v in os.environ.items() if k not in ENVIRONMENTS["all of the nanny's settings"]
    }
    command = [
        sys.executable,
        __file__,
        "--child",
        "--batch",
        str(args.batch),
        "--passes",
        str(args.passes),
    ]
    print(
        f"{args.passes} forward+backward passes of {args.batch} images, 1 torch thread, "
        f"{platform.processor() or platform.machine()}, {date.today()}"
    )
    print("| environment | seconds | against plain |\n|---|---|---|")
    plain = None
    for name, extra in ENVIRONMENTS.items():
        out = subprocess.run(
            command, env={**clean, **extra}, capture_output=True, text=True, check=True
        )
        seconds = float(out.stdout.split()[-1])
        plain = plain or seconds
        print(f"| {name} | {seconds:.2f} | {seconds / plain:.2f}x |")


if __name__ == "__main__":
    main()

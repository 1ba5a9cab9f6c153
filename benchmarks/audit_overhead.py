"""What the orchestration costs: one audit through the library directly, and through the
Prefect flow on 1 and on 2 Dask worker processes, on the same images, in one run.

    python benchmarks/audit_overhead.py [--images 32] [--shard-size 8]

Each store is fresh; the Prefect API (a temporary local server) starts before the timings.
The flow's times include starting its Dask cluster (worker processes import torch and load the
model); the library's run is one process with all cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date

from salaudit.flows.audit import run_audit
from salaudit.flows.server import prefect_api
from salaudit.pipeline.audit import audit_direct
from salaudit.pipeline.spec import parse_spec


def spec(url: str, images: int, shard: int, workers: int | None = None) -> dict:
    return {
        "selection": {"mode": "random", "n": images},
        "methods": {"grad": {}, "ig": {"n_steps": 16}, "smoothgrad": {}, "dance-grad": {}},
        "decoys": {"dance": {"stride": 3}},
        "attacks": ["topk@grad"],
        "attack_params": {"topk": {"steps": 30}},
        "metrics": ["fidelity", "sensitivity"],
        "shard_size": shard,
        "store": {"url": url},
        "cluster": "local",
        "workers": workers,
    }


def timed(fn) -> float:
    stamp = time.perf_counter()
    fn()
    return time.perf_counter() - stamp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=8)
    args = p.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    rows = []
    with tempfile.TemporaryDirectory() as scratch, prefect_api():
        n, shard = args.images, args.shard_size
        direct = timed(
            lambda: audit_direct(parse_spec(spec(f"{scratch}/d", n, shard)), False, False)
        )
        rows.append(("library, in-process", direct))
        for workers in (1, 2):
            url = f"{scratch}/flow{workers}"
            t = timed(
                lambda u=url, w=workers: run_audit(parse_spec(spec(u, n, shard, w)), False, False)
            )
            rows.append((f"flow, {workers} Dask worker{'s' if workers > 1 else ''}", t))
    print(
        f"\n{args.images} images, shards of {args.shard_size}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, {date.today()}"
    )
    print("| run | seconds | against the library |\n|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.1f} | {t / direct - 1:+.0%} |")


if __name__ == "__main__":
    main()

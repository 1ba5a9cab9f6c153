"""What the audit flow costs over the library at scale: the same cheap audit (grad and
fidelity on the builtin data, shards of 8, no report) through the library in-process and
through the Prefect flow on 2 local Dask workers, first run and re-run, in one process.

    python benchmarks/orchestration.py [--images 256,1024,2000] [--default]

Each size is also planned first (`salaudit plan`'s estimate, calibrated in this run), and the
plan's time and bytes are set against the flow's first run and `du` of its store; `--default`
adds the default audit (salaudit init's spec) planned and run the same way.

"pairs" are (shard, stage) pairs (3 stages: inputs, maps, metrics), the unit count of the
plan before units covered several shards. The flow's fixed start (its Dask cluster, the
workers importing torch and loading the model, teardown) is measured first as the flow's
time on one shard of 8 images less the library's; the orchestration overhead per pair is
(flow first run - library first run - fixed start) / pairs. PREFECT_HOME is a scratch
folder, so the Prefect database's size is the audit's alone.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psutil


def spec(url: str, images: int) -> dict:
    return {
        "selection": {"mode": "random", "n": images},
        "methods": {"grad": {}},
        "decoys": {},
        "attacks": [],
        "metrics": ["fidelity"],
        "shard_size": 8,
        "store": {"url": url},
        "cluster": "local",
        "workers": 2,
        "report": False,
    }


class Sampler:
    """Peak resident memory and CPU seconds of this process and of the Prefect server."""

    def __init__(self):
        self.me = psutil.Process()
        self.peak = {"flow": 0, "server": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def server(self) -> psutil.Process | None:
        for child in self.me.children(recursive=True):
            try:
                if "uvicorn" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        return None

    def _run(self):
        while not self._stop.wait(0.2):
            self.peak["flow"] = max(self.peak["flow"], self.me.memory_info().rss)
            server = self.server()
            if server:
                self.peak["server"] = max(self.peak["server"], server.memory_info().rss)

    def cpu(self) -> dict[str, float]:
        server = self.server()
        own = self.me.cpu_times()
        out = {"flow": own.user + own.system}
        if server:
            t = server.cpu_times()
            out["server"] = t.user + t.system
        return out

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()


def du(url: str) -> int:
    """Bytes of every file under a local store (as `du --apparent-size` counts them)."""
    return sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file())


def timed(fn) -> tuple[float, object]:
    stamp = time.perf_counter()
    out = fn()
    return time.perf_counter() - stamp, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", default="256,1024,2000")
    p.add_argument("--default", action="store_true", help="also plan and run the default audit")
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="salaudit-orchestration-"))
    os.environ["PREFECT_HOME"] = str(scratch / "prefect")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

    from salaudit.flows.audit import run_audit
    from salaudit.flows.server import prefect_api
    from salaudit.pipeline.audit import audit_direct
    from salaudit.pipeline.estimate import estimate
    from salaudit.pipeline.spec import AuditSpec, StoreSpec, parse_spec

    rows = []
    load = os.getloadavg()[0]
    with prefect_api(), Sampler() as sampler:
        one = [parse_spec(spec(f"{scratch}/start-{w}", 8)) for w in ("lib", "flow")]
        start = (
            timed(functools.partial(run_audit, one[1], False, False))[0]
            - (timed(functools.partial(audit_direct, one[0], False, False))[0])
        )
        print(f"fixed start: {start:.1f} s", flush=True)
        for n in (int(v) for v in args.images.split(",")):
            pairs = 3 * -(-n // 8)
            lib_url, flow_url = f"{scratch}/lib{n}", f"{scratch}/flow{n}"
            lib, flow = parse_spec(spec(lib_url, n)), parse_spec(spec(flow_url, n))
            plan = estimate(flow, n, workers=2, threads=max(1, (os.cpu_count() or 2) // 2))
            lib1, _ = timed(functools.partial(audit_direct, lib, False, False))
            lib2, _ = timed(functools.partial(audit_direct, lib, False, False))
            cpu0 = sampler.cpu()
            flow1, out = timed(functools.partial(run_audit, flow, False, False))
            cpu1 = sampler.cpu()
            flow2, again = timed(functools.partial(run_audit, flow, False, False))
            overhead = flow1 - lib1 - start
            db = scratch / "prefect" / "prefect.db"
            rows.append(
                {
                    "images": n,
                    "pairs": pairs,
                    "units": out["units"],
                    "submitted": out["submitted"],
                    "resubmitted": again["submitted"],
                    "lib1": lib1,
                    "lib2": lib2,
                    "flow1": flow1,
                    "flow2": flow2,
                    "ms_per_pair": 1000 * overhead / pairs,
                    "tasks_per_s": out["submitted"] / max(1e-9, flow1 - start),
                    "flow_cpu": cpu1["flow"] - cpu0["flow"],
                    "server_cpu": cpu1.get("server", 0) - cpu0.get("server", 0),
                    "db_mb": db.stat().st_size / 2**20 if db.exists() else float("nan"),
                    "plan_s": plan.seconds,
                    "plan_compute_s": sum(plan.stage_seconds.values()) / plan.parallel,
                    "plan_units": plan.units,
                    "plan_mb": plan.stored_bytes / 2**20,
                    "du_mb": du(flow_url) / 2**20,
                }
            )
            print(rows[-1], flush=True)
        if args.default:
            default = AuditSpec().model_copy(update={"store": StoreSpec(url=f"{scratch}/default")})
            n = default.sample_selection().n
            plan = estimate(default, n, workers=2, threads=max(1, (os.cpu_count() or 2) // 2))
            measured, _ = timed(functools.partial(run_audit, default, False, False))
            print(
                f"default audit ({n} samples): planned {plan.seconds:.0f} s, measured "
                f"{measured:.0f} s ({plan.seconds / measured:.2f}x); planned "
                f"{plan.stored_bytes / 2**20:.2f} MiB, du {du(default.store.url) / 2**20:.2f} MiB"
            )
        peak = dict(sampler.peak)
    print(
        f"\n{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"load {load:.2f} at start, {date.today()}; fixed start {start:.1f} s; peak RSS flow "
        f"process {peak['flow'] / 2**20:.0f} MiB, Prefect server {peak['server'] / 2**20:.0f} MiB"
    )
    print(
        "| images | (shard, stage) pairs | units | submitted (re-run) | library s (re-run) | "
        "flow s (re-run) | overhead ms/pair | tasks/s | flow CPU s | server CPU s | "
        "Prefect DB MiB | planned s | planned MiB (du) |\n|" + "---|" * 13
    )
    for r in rows:
        print(
            f"| {r['images']} | {r['pairs']} | {r['units']} | {r['submitted']} "
            f"({r['resubmitted']}) | {r['lib1']:.1f} ({r['lib2']:.1f}) | {r['flow1']:.1f} "
            f"({r['flow2']:.1f}) | {r['ms_per_pair']:.1f} | {r['tasks_per_s']:.1f} | "
            f"{r['flow_cpu']:.1f} | {r['server_cpu']:.1f} | {r['db_mb']:.1f} | "
            f"{r['plan_s']:.0f} | {r['plan_mb']:.2f} ({r['du_mb']:.2f}) |"
        )


if __name__ == "__main__":
    main()

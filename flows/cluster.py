"""The Dask cluster an audit runs on: dask-cuda with one worker per GPU where NVML finds GPUs,
a local process cluster otherwise, or an existing scheduler; its workers' environment."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import dask
from prefect_dask import DaskTaskRunner

from salaudit.errors import SalauditError
from salaudit.pipeline.spec import AuditSpec

CPU_WORKERS = 2


def gpu_count() -> int:
    """GPUs NVML finds (0 where there is no NVML or no GPU)."""
    try:
        from dask_cuda.utils import get_n_gpus

        return int(get_n_gpus())
    except Exception:
        return 0


def task_runner(spec: AuditSpec) -> DaskTaskRunner:
    """The Dask task runner of `spec.cluster`: dask-cuda where NVML finds GPUs, a local
    process cluster otherwise, or the scheduler at an address."""
    if "://" in spec.cluster:
        return DaskTaskRunner(address=spec.cluster)
    gpus = gpu_count()
    if spec.cluster == "cuda" and not gpus:
        raise SalauditError("cluster: cuda asked for, but NVML finds no GPU; use local or auto")
    if spec.cluster == "cuda" or (spec.cluster == "auto" and gpus):
        kwargs = {"resources": {"GPU": 1}, "threads_per_worker": 1}
        if spec.workers:
            kwargs["n_workers"] = spec.workers
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster", cluster_kwargs=kwargs)
    kwargs = {"n_workers": spec.workers or CPU_WORKERS, "threads_per_worker": 1, "processes": True}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def check_cluster(spec: AuditSpec, timeout: float = 5.0) -> None:
    """A scheduler address must answer within `timeout` seconds, before anything is written;
    `cuda` needs GPUs."""
    if spec.cluster == "cuda" and not gpu_count():
        raise SalauditError("cluster: cuda asked for, but NVML finds no GPU; use local or auto")
    if "://" not in spec.cluster:
        return
    address = spec.cluster.split("://", 1)[1]
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or address, int(port or 8786)), timeout=timeout):
            pass
    except (OSError, ValueError) as error:
        raise SalauditError(
            f"cannot reach the Dask scheduler at {spec.cluster} within {timeout:g} s ({error}); "
            "start it (dask scheduler, then dask worker ADDRESS) or fix cluster/--cluster"
        ) from None


def worker_count(spec: AuditSpec) -> int | None:
    """Worker processes of a local cluster: as asked, else one per GPU, else CPU_WORKERS
    (None: an external cluster has what it has)."""
    if "://" in spec.cluster:
        return None
    return spec.workers or gpu_count() or CPU_WORKERS


def worker_threads(spec: AuditSpec) -> int | None:
    """Torch threads per worker of a local cluster, so workers share the cores without
    oversubscribing them (None: an external cluster's workers keep their own setting)."""
    workers = worker_count(spec)
    return max(1, (os.cpu_count() or 1) // workers) if workers else None


def gpu_slots() -> contextlib.AbstractContextManager:
    """One unit per GPU where every worker declares `GPU` (dask-cuda workers here, or
    `dask worker --resources GPU=1`); no annotation otherwise, so nothing waits forever."""
    from distributed import get_client

    try:
        workers = get_client().scheduler_info()["workers"].values()
    except ValueError:
        return contextlib.nullcontext()
    if workers and all("GPU" in w.get("resources", {}) for w in workers):
        return dask.annotate(resources={"GPU": 1})
    return contextlib.nullcontext()


def describe(spec: AuditSpec) -> str:
    """Where an audit runs, for its record."""
    workers = worker_count(spec)
    return f"Prefect + Dask ({spec.cluster} cluster, {workers or 'external'} workers)"


@contextlib.contextmanager
def cluster_environment() -> Iterator[None]:
    """Where a local Dask cluster starts: its workers keep glibc's malloc defaults, and this
    process's environment is restored afterwards.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
    dynamic mmap threshold: every large torch buffer is mapped and unmapped afresh, and the
    model runs about 1.4x slower. The nanny also writes its settings (OMP_NUM_THREADS=1 and
    that one) into the environment of the process that starts it, which would slow every
    program this process starts later."""
    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)

"""`salaudit plan`'s estimate: one sample timed through every stage of a spec on this machine,
scaled to the spec's sample count."""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass

import zarr

from ..store.store import Store
from .audit import prepare_audit, run_unit
from .spec import AuditSpec, StoreSpec


@dataclass
class Estimate:
    """What an audit will do, from a one-sample calibration on this machine."""

    samples: int
    shards: int
    units: int
    stage_seconds: dict[str, float]  # per sample
    model_rows: dict[str, int]  # images through the model (forward), per sample
    bytes_per_sample: int  # uncompressed
    stored_bytes_per_sample: int  # as written (compressed) by the calibration

    @property
    def seconds(self) -> float:
        return self.samples * sum(self.stage_seconds.values())


def estimate(spec: AuditSpec, samples: int) -> Estimate:
    """Time one sample through every stage of `spec` in a scratch store on this machine,
    counting the images each stage sends through the model, and scale to `samples`."""
    with tempfile.TemporaryDirectory(prefix="salaudit-plan-") as scratch:
        probe = spec.model_copy(update={"limit": 1, "store": StoreSpec(url=f"{scratch}/store")})
        run, plan = prepare_audit(probe, progress=False)
        rows: dict[str, int] = {}
        seconds: dict[str, float] = {}
        counter = {"rows": 0}
        hook = run.model.register_forward_pre_hook(
            lambda _m, args: counter.__setitem__("rows", counter["rows"] + len(args[0]))
        )
        try:
            for unit in plan.units():
                stage = unit.stage.value
                counter["rows"], stamp = 0, time.perf_counter()
                run_unit(run, plan, unit)
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - stamp
                rows[stage] = rows.get(stage, 0) + counter["rows"]
        finally:
            hook.remove()
        full, stored = _sizes(run.store)
    shard = spec.shard_size
    shards = -(-samples // shard)
    units = len(plan.units()) * shards
    return Estimate(samples, shards, units, seconds, rows, full, stored)


def _sizes(store: Store) -> tuple[int, int]:
    """(uncompressed bytes, stored bytes) of the arrays of a one-sample store."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the markers folder is no Zarr node
        members = store.root("r").members(max_depth=None)
    full = sum(node.nbytes for _, node in members if isinstance(node, zarr.Array))
    stored = sum(store.fs.du(store.path, total=False).values())
    return int(full), int(stored)

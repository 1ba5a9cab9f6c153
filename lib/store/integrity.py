"""Integrity you can check: what a done-marker vouches for, and whether the store still holds it.

A region's done-marker records, per array the stage wrote, each chunk object it wrote (key,
size, a content tag: the MD5 of its bytes, which is S3's ETag of a single-part upload) or
that the chunk was left unstored (all fill value), the NaN count of the values written, and
the markers whose regions the stage read. `verify` checks every marker against one listing
of the store: a chunk missing, changed, or stored where none was written is a problem of that
marker's region; `invalidate` removes the markers of the damaged regions and of every region
that read them, so the next run recomputes exactly those (and the statistics and report
after them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SalauditError

if TYPE_CHECKING:
    import zarr

    from .store import Store


METADATA = "metadata"  # a Problem of an array's or group's zarr.json, not of a region


class IntegrityError(SalauditError):
    """A region a done-marker vouches for is not what the marker recorded."""


@dataclass(frozen=True)
class Problem:
    """A chunk of `path` that the marker `stage` of samples [start, stop) vouches for."""

    stage: str
    start: int
    stop: int
    path: str
    chunk: str
    why: str  # missing | changed | unexpected

    def line(self) -> str:
        if self.stage == METADATA:
            return f"{self.path}/{self.chunk} {self.why}"
        return (
            f"{self.stage} samples [{self.start}, {self.stop}): {self.path}/{self.chunk} {self.why}"
        )


def chunk_keys(arr: zarr.Array, rows: slice, index: tuple[int, ...] = ()) -> list[str]:
    """The chunk keys of `arr` that a write of rows `rows` (at positions `index` of the next
    dimensions, all of the rest) touches."""
    chunks, shape = arr.metadata.chunk_grid.chunk_shape, arr.shape
    stop = min(rows.stop, shape[0])
    ranges = [range(rows.start // chunks[0], (stop - 1) // chunks[0] + 1)]
    ranges += [range(i // c, i // c + 1) for i, c in zip(index, chunks[1:], strict=False)]
    rest = len(index) + 1
    ranges += [range(-(-n // c)) for n, c in zip(shape[rest:], chunks[rest:], strict=True)]
    return [arr.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]


def nan_count(values: np.ndarray) -> int:
    return int(np.isnan(values).sum()) if np.asarray(values).dtype.kind == "f" else 0


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def record(store: Store, notes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a marker records of the arrays a stage wrote: per array its NaN count and, per
    chunk key, [size, tag, mtime] as stored now, or None where the chunk is not stored."""
    out = {}
    for path, note in notes.items():
        chunks = {key: store.chunk_state(f"{path}/{key}") for key in sorted(note["chunks"])}
        out[path] = {"nan": note["nan"], "chunks": chunks}
    return out


def verify(store: Store) -> list[Problem]:
    """Every node's metadata and every chunk a done-marker vouches for, checked against one
    listing of the store."""
    listing = store.listing()
    problems = _metadata(store, listing)
    for (stage, start, stop), body in store.markers().items():
        for path, written in (body.get("arrays") or {}).items():
            for key, state in written["chunks"].items():
                why = _check(store, f"{path}/{key}", state, listing)
                if why:
                    problems.append(Problem(stage, start, stop, path, key, why))
    return problems


def _check(store: Store, key: str, recorded, listing: dict[str, dict]) -> str | None:
    found = listing.get(key)
    if recorded is None:
        return "unexpected (stored where the stage wrote only fill values)" if found else None
    if found is None:
        return "missing"
    size, tag, mtime = recorded
    if found["size"] != size:
        return "changed (size)"
    if found.get("tag") is not None:
        return None if found["tag"] == tag else "changed (content)"
    if found.get("mtime") == mtime:
        return None
    return None if store.chunk_state(key)[1] == tag else "changed (content)"


def _metadata(store: Store, listing: dict[str, dict]) -> list[Problem]:
    """The arrays' and groups' zarr.json that do not parse (the root's is checked on open)."""
    keys = [k for k in listing if k.endswith("/zarr.json")]
    found = store.fs.cat([f"{store.path}/{k}" for k in keys]) if keys else {}
    problems = []
    for path, data in found.items():
        try:
            json.loads(data)
        except ValueError:
            node = path.removeprefix(store.path + "/").removesuffix("/zarr.json")
            problems.append(Problem(METADATA, 0, 0, node, "zarr.json", "damaged"))
    return problems


def restore_metadata(store: Store, problems: Iterable[Problem]) -> list[str]:
    """Rewrite damaged zarr.json files from the copy in the root's consolidated metadata."""
    consolidated = json.loads(store.fs.cat_file(f"{store.path}/zarr.json"))
    copies = (consolidated.get("consolidated_metadata") or {}).get("metadata", {})
    restored = []
    for p in (p for p in problems if p.stage == METADATA):
        if p.path not in copies:
            raise SalauditError(
                f"store {store.url}: {p.path}/zarr.json is damaged and has no copy in the "
                "consolidated metadata; restore it from a backup, or start over with --fresh"
            )
        store.fs.pipe_file(f"{store.path}/{p.path}/zarr.json", json.dumps(copies[p.path]).encode())
        restored.append(p.path)
    return restored


def invalidate(store: Store, problems: Iterable[Problem]) -> list[tuple[str, int, int]]:
    """Restore damaged metadata, then remove the markers of the damaged regions and of every
    region that read one of them (transitively); returns the markers removed."""
    problems = list(problems)
    restore_metadata(store, problems)
    markers = store.markers()
    bad = {(p.stage, p.start, p.stop) for p in problems if p.stage != METADATA}
    changed = True
    while changed:
        changed = False
        for (stage, start, stop), body in markers.items():
            if (stage, start, stop) in bad:
                continue
            reads = {(r, start, stop) for r in body.get("reads", [])}
            if reads & bad:
                bad.add((stage, start, stop))
                changed = True
    for stage, start, stop in sorted(bad):
        store.remove_marker(stage, start, stop)
    return sorted(bad)


def check_region(store: Store, path: str, start: int, stop: int, values: np.ndarray, marker):
    """Values read back from a region a marker vouches for hold as many NaN as it wrote."""
    written = ((marker or {}).get("arrays") or {}).get(path)
    if written is None:
        return
    found = nan_count(values)
    if found != written["nan"]:
        raise IntegrityError(
            f"{path} samples [{start}, {stop}) holds {found} NaN values where its done-marker "
            f"recorded {written['nan']}: a lost or damaged chunk; run salaudit verify "
            f"{store.url} --repair"
        )

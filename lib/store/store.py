"""The store: a Zarr v3 group at a local path or s3:// URL (DESIGN.md's contract; the groups,
dims and marker names are `schema`'s).

Arrays are chunked along samples so that one writer owns whole chunks; a JSON done-marker per
written region and a JSON record per audit live beside the arrays. The store's identity
(model and data fingerprints, sample selection, seed) is fixed at creation: adding methods is
allowed, contradicting what is stored is refused unless the run starts afresh. Metadata is
consolidated after every template change so plain xarray reads it without listing the store.
"""

from __future__ import annotations

import errno
import json
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import SalauditError, StoreConflict
from ..inputs.uris import filesystem, is_remote, storage_options_for
from . import integrity, schema
from .schema import AUDITS, MARKERS

IDENTITY_KEYS = (
    "model_fingerprint",
    "data_fingerprint",
    "selection",
    "seed",
    "precision",
    "store_dtype",
)
# what a store written before the key meant
IDENTITY_DEFAULTS = {"precision": "fp32", "store_dtype": "float32"}
_KEY_NAMES = {
    "precision": "precision",
    "store_dtype": "store dtype (store.dtype)",
    "model_fingerprint": "model (weights)",
    "data_fingerprint": "data (content)",
    "selection": "sample selection",
    "seed": "seed",
}


class Store:
    """A run's results at `url` (opened with `Store.open`)."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.options = storage_options_for(self.url, storage_options)
        self.fs, self.path = filesystem(self.url, storage_options)
        self._pending: dict[str, dict[str, Any]] = {}  # writes not yet done-marked

    # --- opening and identity -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        identity: dict[str, Any],
        attrs: dict[str, Any] | None = None,
        *,
        fresh: bool = False,
        storage_options: dict | None = None,
        run: dict[str, str] | None = None,
    ) -> Store:
        """Open or create the store, refusing one that holds another run's results (another
        model, data, selection or seed; `run` names this run's model and data specs) unless
        `fresh`, which deletes what is there."""
        store = cls(url, storage_options)
        if store.exists() and fresh:
            store.clear()
        if store.exists():
            store.check_identity(identity, run)
        else:
            root = zarr.open_group(store._zarr(), mode="a", zarr_format=3)
            identity = {**identity, "store_id": uuid.uuid4().hex}
            root.attrs.update({**(attrs or {}), **identity})
            store.consolidate()
        return store

    def clear(self) -> None:
        """Delete everything in the store but its lease (held by whoever clears it)."""
        for entry in self.fs.ls(self.path, detail=False):
            if entry.rstrip("/").endswith("/_salaudit"):
                for inner in self.fs.ls(entry, detail=False):
                    if not inner.endswith("/lease.json"):
                        self.fs.rm(inner, recursive=True)
            else:
                self.fs.rm(entry, recursive=True)

    def exists(self) -> bool:
        return self.fs.exists(f"{self.path}/zarr.json")

    def root(self, mode: str = "r+") -> zarr.Group:
        """The root group, read without the consolidated metadata (that is for readers)."""
        try:
            return zarr.open_group(
                self._zarr(read_only=mode == "r"), mode=mode, zarr_format=3, use_consolidated=False
            )
        except (ValueError, KeyError) as error:
            raise self._damaged("zarr.json", error) from None

    def node(self, path: str, mode: str = "r"):
        """The group or array at `path` (KeyError if there is none)."""
        try:
            return self.root(mode)[path]
        except (ValueError, TypeError) as error:  # zarr's reading of a damaged zarr.json
            raise self._damaged(f"{path}/zarr.json", error) from None

    def _damaged(self, name: str, error: Exception) -> SalauditError:
        return SalauditError(
            f"store {self.url}: {name} is damaged ({type(error).__name__}: {error}); restore it "
            "from a copy, or start over with --fresh"
        )

    def has(self, path: str) -> bool:
        """Whether a group or array exists at `path`."""
        try:
            self.node(path)
        except KeyError:
            return False
        return True

    def attrs(self) -> dict:
        return dict(self.root("r").attrs)

    def subgroups(self, path: str) -> list[str]:
        """The names of the groups inside the group at `path` (none if it is missing)."""
        return sorted(self.node(path).group_keys()) if self.has(path) else []

    def arrays(self, path: str) -> list[str]:
        """The names of the arrays inside the group at `path` (none if it is missing)."""
        return sorted(self.node(path).array_keys()) if self.has(path) else []

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.node(path).shape)

    def array_attrs(self, path: str) -> dict:
        return dict(self.node(path).attrs)

    def check_identity(self, identity: dict[str, Any], run: dict[str, str] | None = None) -> None:
        """Refuse a run of another model, data, selection or seed; `run` names this run's
        model and data specs, so the refusal says what the store holds in their terms."""
        stored = self.attrs()
        for key in IDENTITY_KEYS:
            held_value = stored.get(key, IDENTITY_DEFAULTS.get(key))
            if key in identity and _jsonable(held_value) != _jsonable(identity[key]):
                held = f"model {stored.get('model', '?')} on data {stored.get('data', '?')}"
                this = f"model {run['model']} on data {run['data']}" if run else "this run"
                raise StoreConflict(
                    f"store {self.url} holds results of {held} with another {_KEY_NAMES[key]} "
                    f"than {this} ({key} {held_value!r}, this run {identity[key]!r}); use "
                    "another store, or --fresh to delete it and start over"
                )

    def _zarr(self, read_only: bool = False):
        if is_remote(self.url):
            return zarr.storage.FsspecStore.from_url(
                self.url, storage_options=self.options or None, read_only=read_only
            )
        return zarr.storage.LocalStore(self.path, read_only=read_only)

    def consolidate(self) -> None:
        """Rewrite the consolidated metadata (after the template changed)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self._zarr(), zarr_format=3)

    # --- templates ------------------------------------------------------------------------

    def require_array(
        self,
        path: str,
        shape: tuple[int, ...],
        dims: tuple[str, ...],
        dtype: str | type,
        chunks: tuple[int, ...],
        attrs: dict | None = None,
        fill_value: Any = None,
    ) -> zarr.Array:
        """Create the array at `path` unless it exists with the same attributes; an existing
        one with other attributes (a method's parameters) is a conflict."""
        group_path, _, name = path.rpartition("/")
        group = self.root().require_group(group_path) if group_path else self.root()
        if name in group.array_keys():
            self._check(path, group[name], attrs or {}, shape)
            return group[name]
        if fill_value is None:
            kind = np.dtype(dtype).kind
            fill_value = np.nan if kind == "f" else "" if kind in "UO" else 0
        return group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill_value,
            dimension_names=dims,
            attributes=_jsonable(attrs or {}),
        )

    def check_array(self, path: str, attrs: dict, shape: tuple[int, ...]) -> None:
        """Raise StoreConflict if `path` exists with other attributes or shape (writes nothing)."""
        try:
            arr = self.node(path)
        except KeyError:
            return
        self._check(path, arr, attrs, shape)

    def _check(self, path: str, arr: zarr.Array, attrs: dict, shape: tuple[int, ...]) -> None:
        """An existing array must hold what this run asks for: the same attributes (a
        method's parameters) and shape."""
        attrs = _jsonable(attrs)
        stored = {k: v for k, v in arr.attrs.items() if k in attrs}
        if stored != attrs or tuple(arr.shape) != tuple(shape):
            raise StoreConflict(
                f"store {self.url} holds {path} computed with {stored} (shape {arr.shape}); this "
                f"run asks for {attrs} (shape {shape}); use another store, or --fresh to delete "
                "it and start over"
            )

    def require_coordinate(
        self, group: str, name: str, values: np.ndarray, dim: str | None = None
    ) -> None:
        """A 1-D coordinate array `name` along `dim` (default: its own name) in `group`,
        written once and done-marked (written again if its marker went: it was damaged)."""
        path = f"{group}/{name}"
        dtype = str if values.dtype.kind in "UO" else str(values.dtype)  # text: Zarr's string
        self.require_array(path, values.shape, (dim or name,), dtype, values.shape)
        if not self.is_done(schema.layout_marker(path), 0, len(values)):
            self._write_layout(path, values)

    def _write_layout(self, path: str, values: np.ndarray) -> None:
        """A coordinate's values, under a done-marker of its own (the old one removed)."""
        marker = schema.layout_marker(path)
        for start, stop in self.done_regions(marker):
            self.remove_marker(marker, start, stop)
        self.write(path, 0, values)
        self.mark_done(marker, 0, len(values), arrays=(path,))

    def require_labels(self, group: str, dim: str, labels: list[str]) -> dict[str, int]:
        """Positions of `labels` along the labelled dimension `dim` of `group` (a string
        coordinate). Labels not yet there are appended, growing the coordinate and every array
        of the group that has `dim`: a later run adds methods or attacks to a table."""
        grp = self.root().require_group(group)
        path, copy = f"{group}/{dim}", grp.attrs.get(f"labels:{dim}")
        damaged = False
        if dim in grp.array_keys():
            coord = grp[dim]
            damaged = copy is not None and not self.is_done(
                schema.layout_marker(path), 0, coord.shape[0]
            )  # its marker went: the coordinate is rewritten from the group's copy
            existing = list(copy) if damaged else [str(v) for v in coord[:]]
        else:
            coord, existing = None, []
        new = [label for label in dict.fromkeys(labels) if label not in existing]
        if new or coord is None or damaged:
            everything = existing + new
            if coord is None:
                coord = grp.create_array(
                    dim,
                    shape=(len(everything),),
                    chunks=(max(1, len(everything)),),
                    dtype=str,
                    dimension_names=(dim,),
                )
            else:
                coord.resize((len(everything),))
            self._write_layout(path, np.asarray(everything, dtype=object))
            grp.attrs[f"labels:{dim}"] = everything
            for name in grp.array_keys():
                arr = grp[name]
                dims = arr.metadata.dimension_names or ()
                if name != dim and dim in dims:
                    shape = list(arr.shape)
                    shape[dims.index(dim)] = len(everything)
                    arr.resize(tuple(shape))
            existing = everything
        return {label: existing.index(label) for label in labels}

    def labels(self, group: str, dim: str) -> dict[str, int]:
        """Label -> position along the labelled dimension `dim` of `group` (read only)."""
        return {str(v): i for i, v in enumerate(self.node(f"{group}/{dim}")[:])}

    def dataset(self, group: str):
        """The group as an xarray Dataset of numpy arrays (no dask)."""
        import xarray as xr

        return xr.open_zarr(
            self._zarr(read_only=True), group=group, chunks=None, consolidated=False
        )

    # --- region writes and done-markers ----------------------------------------------------

    def write(self, path: str, start: int, values: np.ndarray) -> None:
        """Write `values` into the array at `path` from sample `start` on."""
        arr = self.node(path, "r+")
        arr[start : start + len(values)] = values
        self._note(arr, slice(start, start + len(values)), (), values)

    def write_cell(self, path: str, start: int, index: tuple[int, ...], values: np.ndarray) -> None:
        """Write `values` at samples [start, start + len) and positions `index` of the
        following dimensions."""
        arr = self.node(path, "r+")
        arr[(slice(start, start + len(values)), *index)] = values
        self._note(arr, slice(start, start + len(values)), index, values)

    def _note(self, arr, rows: slice, index: tuple[int, ...], values: np.ndarray) -> None:
        """Remember what a write touched, for the next done-marker of its region."""
        note = self._pending.setdefault(arr.path, {"nan": 0, "chunks": set(), "rows": rows})
        note["nan"] += integrity.nan_count(values)
        note["chunks"] |= set(integrity.chunk_keys(arr, rows, index))

    def read(self, path: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples [start, stop) of the array at `path`; float16 (`store.dtype`) read as
        float32, what every computation takes."""
        values = self.node(path)[start:stop]
        return values.astype(np.float32) if values.dtype == np.float16 else values

    def _marker(self, stage: str, start: int, stop: int) -> str:
        return f"{self.path}/{MARKERS}/{stage}/{start:09d}-{stop:09d}.json"

    def mark_done(
        self,
        stage: str,
        start: int,
        stop: int,
        reads: tuple[str, ...] = (),
        info: dict | None = None,
        arrays: tuple[str, ...] | None = None,
    ) -> None:
        """Record that `stage` wrote samples [start, stop) completely: the chunks it wrote (the
        writes to `arrays`, default every write within the region) as they are stored now, and
        the markers of the region it read (`integrity`)."""

        def inside(note: dict) -> bool:
            return start <= note["rows"].start and note["rows"].stop <= stop

        chosen = (lambda p, n: p in arrays) if arrays is not None else (lambda p, n: inside(n))
        written = {p: n for p, n in self._pending.items() if chosen(p, n)}
        for p in written:
            del self._pending[p]
        body = {
            "stage": stage,
            "start": start,
            "stop": stop,
            "time": time.time(),
            "reads": list(reads),
            "arrays": integrity.record(self, written),
            **(info or {}),
        }
        path = self._marker(stage, start, stop)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a no-op on object storage
        self.fs.pipe_file(path, json.dumps(_jsonable(body)).encode())

    def forget_writes(self) -> None:
        """Drop what unmarked writes were remembered (a unit starts afresh)."""
        self._pending.clear()

    def is_done(self, stage: str, start: int, stop: int) -> bool:
        return self.fs.exists(self._marker(stage, start, stop))

    def marker(self, stage: str, start: int, stop: int) -> dict | None:
        """The done-marker of `stage` over samples [start, stop) (None if there is none)."""
        try:
            return json.loads(self.fs.cat_file(self._marker(stage, start, stop)))
        except FileNotFoundError:
            return None

    def markers(self) -> dict[tuple[str, int, int], dict]:
        """Every done-marker: (stage, start, stop) -> its body (read concurrently)."""
        keys = self._marker_keys()
        found = self.fs.cat(list(keys)) if keys else {}
        return {keys[path]: json.loads(data) for path, data in found.items()}

    def done_markers(self) -> set[tuple[str, int, int]]:
        """Every (stage, start, stop) a done-marker vouches for, from one listing (no marker
        is read)."""
        return set(self._marker_keys().values())

    def _marker_keys(self) -> dict[str, tuple[str, int, int]]:
        """One listing of the done-markers: path -> (stage, start, stop)."""
        root = f"{self.path}/{MARKERS}"
        self._forget_listings()
        found = self.fs.find(root) if self.fs.exists(root) else []
        self._forget_listings()  # the workers write markers after this: keep no listing
        out = {}
        for path in found:
            stage, _, name = path.removeprefix(root + "/").rpartition("/")
            if name.endswith(".json"):
                start, stop = name.removesuffix(".json").split("-")
                out[path] = (stage, int(start), int(stop))
        return out

    def _forget_listings(self) -> None:
        """Drop every cached listing: s3fs forgets a folder's and its parents' on
        `invalidate_cache(path)`, not its subfolders', which another call may have cached."""
        self.fs.invalidate_cache()

    def remove_marker(self, stage: str, start: int, stop: int) -> None:
        self.fs.rm_file(self._marker(stage, start, stop))

    def listing(self) -> dict[str, dict[str, Any]]:
        """Every object of the store (one listing): relative key -> size, tag (S3's ETag; None
        on a local disk) and mtime."""
        self._forget_listings()
        out = {}
        for path, info in self.fs.find(self.path, detail=True).items():
            tag = info.get("ETag")
            out[path.removeprefix(self.path + "/")] = {
                "size": int(info.get("size", info.get("Size", 0))),
                "tag": tag.strip('"') if tag else None,
                "mtime": info.get("mtime"),
            }
        return out

    def chunk_state(self, key: str) -> list | None:
        """[size, content tag, mtime] of the object at relative `key` as stored now (None if
        it is not stored): the tag is S3's ETag (the MD5 of a single-part upload), on a local
        disk the MD5 of the bytes."""
        path = f"{self.path}/{key}"
        self.fs.invalidate_cache(path)  # zarr wrote it through a file system of its own
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        tag = info.get("ETag")
        if tag:
            return [int(info["size"]), tag.strip('"'), None]
        return [int(info["size"]), integrity.md5(self.fs.cat_file(path)), info.get("mtime")]

    def done_regions(self, stage: str) -> list[tuple[int, int]]:
        folder = f"{self.path}/{MARKERS}/{stage}"
        if not self.fs.exists(folder):
            return []
        names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        regions = [n.removesuffix(".json").split("-") for n in names if n.endswith(".json")]
        return sorted((int(a), int(b)) for a, b in regions)

    # --- audit records ------------------------------------------------------------------------

    def record_audit(self, record: dict[str, Any]) -> str:
        """Keep `record` (an audit's timings, failures, versions) as JSON; returns its path."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record.get("started", time.time())))
        path = f"{self.path}/{AUDITS}/{stamp}-{uuid.uuid4().hex[:8]}.json"
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, json.dumps(_jsonable(record)).encode())
        return path

    def audit_records(self) -> list[dict[str, Any]]:
        """Every kept audit record, oldest first."""
        folder = f"{self.path}/{AUDITS}"
        self.fs.invalidate_cache(folder)
        if not self.fs.exists(folder):
            return []
        paths = sorted(p for p in self.fs.ls(folder, detail=False) if p.endswith(".json"))
        return [json.loads(self.fs.cat_file(p)) for p in paths]


def check_reachable(url: str, storage_options: dict | None = None) -> None:
    """Fail before any work if the store's location cannot be reached or written: a missing
    bucket, an unreachable endpoint, missing credentials, a path that is a file or lies under
    one, a read-only or forbidden folder; each named with the fix. Writes nothing that stays."""
    if not is_remote(url):
        _check_folder(Path(url))
        return
    _, path = filesystem(url, storage_options)
    fs = _probing(url, storage_options)
    bucket = path.split("/", 1)[0]
    probe = f"{path.rstrip('/')}/_salaudit/probe-{uuid.uuid4().hex}"
    try:
        fs.ls(bucket, detail=False)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except FileNotFoundError:
        raise SalauditError(f"bucket {bucket!r} of store {url} does not exist; create it") from None
    except Exception as error:
        raise SalauditError(
            f"cannot reach or write store {url} ({type(error).__name__}: {error}); check the "
            "endpoint (storage_options.endpoint_url or AWS_ENDPOINT_URL) and the credentials "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        ) from None


def _probing(url: str, storage_options: dict | None):
    """A fresh file system for `url` that tries a connection once, for a few seconds: a check
    of reachability fails in seconds, and sees the credentials the environment has now."""
    import fsspec

    options = storage_options_for(url, storage_options)
    config = {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 1}}
    options["config_kwargs"] = {**config, **options.get("config_kwargs", {})}
    fs = fsspec.filesystem(url.split("://")[0], skip_instance_cache=True, **options)
    fs.retries = 1  # s3fs's own retry loop
    return fs


def _check_folder(path: Path) -> None:
    """A local store's folder is a folder (or can become one) that this user may write."""
    if path.exists() and not path.is_dir():
        raise SalauditError(f"store path {path} is a file, not a folder; give a folder's path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SalauditError(f"store path {path} lies under the file {existing}; choose a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        why = "is on a read-only file system" if error.errno == errno.EROFS else "is not writable"
        raise SalauditError(
            f"store path {path}: {existing} {why} ({error.strerror}); write the store elsewhere"
        ) from None


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON attributes (tuples become lists, numpy scalars
    Python numbers)."""
    return json.loads(json.dumps(value, default=_default))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Iterable):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")

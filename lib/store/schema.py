"""The store's schema (DESIGN.md's contract): group paths, dims, chunks, layouts and done-marker
names. Every reader and writer of a store spells a path through this module.

- `inputs`: image (sample, *input dims), label, prediction, bbox (sample, corner); the input
  dims are an image's (channel, y, x), a table's (feature), with the feature names as the
  `feature` coordinate, a text's (token, embedding) (`inputs.kinds`); `image` is the name of
  every kind's input array;
- `maps/<method>`: (sample, *input dims), the raw signed attribution;
- `decoys/<generator>`: population (sample, decoy, ...), diagnostics (sample, decoy), the mask
  and sign of each member, and `saliency/<base>` (sample, decoy, ...);
- `boundary`: point, distance, success, finder, distance_<finder>;
- `attacks/<attack>`: image, success, norms, objectives (an extra dim such as radius where the
  attack has one), and `maps/<method>` recomputed on the attacked images;
- `metrics`: one variable per metric, (sample, method) plus its own dims;
- `stats`: one row per comparison;
- `checks`: per sample, digests and states of the logits and of each method's maps
  (`pipeline.checks`), written with the region they check.

Done-markers name the region a stage wrote: the group path of what it wrote (`maps/grad`,
`attacks/pgd`), and `metrics/<family>/<method>[/<attack>]` for metric cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SalauditError
from ..inputs.kinds import dims_of
from ..inputs.uris import is_remote

if TYPE_CHECKING:
    from .store import Store

INPUTS, MAPS, DECOYS, BOUNDARY, ATTACKS, METRICS, STATS = (
    "inputs",
    "maps",
    "decoys",
    "boundary",
    "attacks",
    "metrics",
    "stats",
)
CHECKS = "checks"
MAP_STATES = {"-1": "not checked", "0": "fine", "1": "all zero", "2": "not finite"}
MARKERS = "_salaudit/done"
AUDITS = "_salaudit/audits"
LEASE = "_salaudit/lease.json"
CHUNK_BYTES = 16 * 2**20
WORD = str  # a text's words: variable-length UTF-8 (Zarr v3's string type)
DIAGNOSTICS = {
    "success": "bool",
    "representation_difference": "float32",
    "mean_abs_shift": "float32",
    "lambda": "float32",
}
ATTACK_FIELDS = ("success", "linf", "l2", "objective_before", "objective_after")
BOUNDARY_FIELDS = ("point", "distance", "success", "finder")
STATS_TEXT = ("metric", "condition", "method", "reference")
STATS_NUMBERS = (
    "mean",
    "reference_mean",
    "mean_difference",
    "standard_error",
    "p_value",
    "p_holm",
    "n",
)


# --- paths --------------------------------------------------------------------------------------


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def inputs(name: str = "") -> str:
    return join(INPUTS, name)


def map_path(method: str) -> str:
    return join(MAPS, method)


def check(name: str = "") -> str:
    return join(CHECKS, name)


def decoys(generator: str = "", name: str = "") -> str:
    return join(DECOYS, generator, name)


def decoy_saliency(generator: str, base: str = "") -> str:
    return join(DECOYS, generator, "saliency", base)


def boundary(name: str = "") -> str:
    return join(BOUNDARY, name)


def attack(name: str = "", field: str = "") -> str:
    return join(ATTACKS, name, field)


def attack_map(name: str, method: str = "") -> str:
    return join(ATTACKS, name, MAPS, method)


def metric(name: str = "") -> str:
    return join(METRICS, name)


def layout_marker(path: str) -> str:
    """The done-marker of a coordinate written at layout (sample indices, labels, radii)."""
    return join("layout", path)


METRIC_BASELINE = "metric_baseline"  # the metrics group's attribute: what replaced pixels


def metric_baseline_of(attrs) -> str:
    """The metric baseline a metrics group's scores were computed under (`mean` for a group
    scored before the baseline was a choice)."""
    return attrs.get(METRIC_BASELINE, "mean")


def metric_marker(family: str, who: str, attack_name: str | None = None) -> str:
    """The done-marker of one metric family's cells of method (or generator) `who`."""
    return join(METRICS, family, who, attack_name or "")


def marker_of(path: str) -> str | None:
    """The done-marker stage that vouches for the array at `path` (None: metric cells, whose
    markers are per family and method, and what no region marker covers)."""
    parts = path.split("/")
    if parts[0] in (INPUTS, BOUNDARY):
        return parts[0]
    if parts[0] == MAPS and len(parts) == 2:
        return path
    if parts[0] == CHECKS and len(parts) == 2:
        return map_path(parts[1][4:]) if parts[1].startswith("map_") else INPUTS
    if parts[0] == DECOYS and len(parts) >= 3:
        return path if parts[2] == "saliency" else decoys(parts[1])
    if parts[0] == ATTACKS and len(parts) >= 3:
        return path if parts[2] == MAPS else attack(parts[1])
    return None


def report_location(store_url: str) -> str:
    """Where a store's report goes by default: beside the store, `<store>-report`."""
    url = store_url.rstrip("/")
    if is_remote(url) and "/" not in url.split("://", 1)[1]:
        raise SalauditError(
            f"store {url} is a bucket's root, so nothing lies beside it: give the report a "
            "place (salaudit report --out s3://BUCKET/PREFIX, or report: in the spec)"
        )
    return f"{url}-report"


# --- layouts ------------------------------------------------------------------------------------


def sample_dims(shape: tuple[int, ...]) -> tuple[str, ...]:
    """The dims of an array of inputs (or maps) of one sample's `shape`."""
    return ("sample", *dims_of(tuple(shape)))


def layout_inputs(
    store: Store, samples: np.ndarray, shape, shard: int, boxes: bool, features=None
) -> None:
    """The `inputs` group: inputs, labels, predictions (the targets), with boxes bbox, a
    table's feature names, and a text's words and padding mask (sample, token)."""
    n, shape = len(samples), tuple(shape)
    store.require_coordinate(INPUTS, "sample", samples)
    if features is not None:
        store.require_coordinate(INPUTS, "feature", np.asarray(features, dtype=str))
    if dims_of(shape)[0] == "token":
        dims, chunks = ("sample", "token"), (shard, shape[0])
        store.require_array(inputs("word"), (n, shape[0]), dims, WORD, chunks, fill_value="")
        store.require_array(
            inputs("padding"), (n, shape[0]), dims, "bool", chunks, fill_value=False
        )
    store.require_array(
        inputs("image"), (n, *shape), sample_dims(shape), "float32", (shard, *shape)
    )
    for name in ("label", "prediction"):
        store.require_array(inputs(name), (n,), ("sample",), "int64", (shard,))
    if boxes:
        store.require_array(
            inputs("bbox"),
            (n, 4),
            ("sample", "corner"),
            "int64",
            (shard, 4),
            attrs={"corners": ["y0", "x0", "y1", "x1"]},
            fill_value=-1,
        )


def layout_maps(
    store: Store, samples, shape, shard: int, maps: dict[str, dict], dtype: str = "float32"
) -> None:
    """`maps/<method>` for each method (its parameters as the array's attributes), in
    `dtype` (`store.dtype`)."""
    n, shape = len(samples), tuple(shape)
    store.require_coordinate(MAPS, "sample", samples)
    for name, attrs in maps.items():
        store.require_array(
            map_path(name), (n, *shape), sample_dims(shape), dtype, (shard, *shape), attrs
        )


def layout_checks(store: Store, samples, shard: int, methods: list[str]) -> None:
    """`checks`: the logits' digest and range, and per method (sample, [state, digest]) of
    its maps (-1: not checked)."""
    n = len(samples)
    store.require_coordinate(CHECKS, "sample", samples)
    store.require_array(check("logit_digest"), (n,), ("sample",), "int64", (shard,), fill_value=0)
    store.require_array(check("logit_range"), (n,), ("sample",), "float32", (shard,))
    for name in methods:
        store.require_array(
            check(f"map_{name}"),
            (n, 2),
            ("sample", "check"),
            "int64",
            (shard, 2),
            attrs={"columns": ["state", "digest"], "states": MAP_STATES},
            fill_value=-1,
        )


def layout_boundary(
    store: Store, samples, shape, shard: int, attrs: dict, finders, codes: dict[str, int]
) -> None:
    """The `boundary` group: per sample the point, its distance (NaN if none was found),
    success, the finder (codes in the attributes) and each finder's own best distance."""
    n, shape = len(samples), tuple(shape)
    store.require_coordinate(BOUNDARY, "sample", samples)
    store.require_array(
        boundary("point"), (n, *shape), sample_dims(shape), "float32", (shard, *shape), attrs
    )
    units = {"units": "L2 norm in pixel space"}
    store.require_array(boundary("distance"), (n,), ("sample",), "float32", (shard,), units)
    store.require_array(boundary("success"), (n,), ("sample",), "bool", (shard,), fill_value=False)
    store.require_array(
        boundary("finder"),
        (n,),
        ("sample",),
        "int8",
        (shard,),
        {"codes": {str(v): k for k, v in codes.items()}},
    )
    for finder in finders:
        store.require_array(boundary(f"distance_{finder}"), (n,), ("sample",), "float32", (shard,))


def population_chunks(shape: tuple[int, ...], itemsize: int = 4) -> tuple[int, ...]:
    """Chunks of one sample and as many population members as fit in about 16 MiB."""
    member = int(np.prod(shape[2:])) * itemsize
    return (1, max(1, min(shape[1], CHUNK_BYTES // max(member, 1))), *shape[2:])


def layout_decoys(
    store: Store,
    samples,
    shape,
    shard: int,
    generator: str,
    attrs: dict,
    members: tuple[np.ndarray, np.ndarray],
    bases: list[str],
    dtype: str = "float32",
) -> None:
    """`decoys/<generator>`: the population with the original as member 0, each member's mask
    (-1 for the original) and sign, its diagnostics, and each base method's maps of it; the
    population and the maps in `dtype` (`store.dtype`)."""
    mask, sign = members
    n, k = len(samples), len(mask) + 1
    pop = (n, k, *shape)
    pdims = ("sample", "decoy", *dims_of(tuple(shape)))
    group = decoys(generator)
    for sub in (group, decoy_saliency(generator)):
        store.require_coordinate(sub, "sample", samples)
        store.require_coordinate(sub, "decoy", np.arange(k))
    store.require_coordinate(group, "mask", np.concatenate([[-1], mask]).astype(np.int64), "decoy")
    store.require_coordinate(group, "sign", np.concatenate([[0], sign]).astype(np.int8), "decoy")
    chunks = population_chunks(pop, np.dtype(dtype).itemsize)
    store.require_array(
        decoys(generator, "population"),
        pop,
        pdims,
        dtype,
        chunks,
        {**attrs, "coordinates": "mask sign"},
    )
    for name, kind in DIAGNOSTICS.items():
        store.require_array(
            decoys(generator, name),
            (n, k),
            ("sample", "decoy"),
            kind,
            (shard, k),
            fill_value=False if kind == "bool" else None,
        )
    for base in bases:
        store.require_array(
            decoy_saliency(generator, base), pop, pdims, dtype, chunks, {"base": base, **attrs}
        )


def attack_shape(samples, shape, labels: list | None) -> tuple[tuple, tuple, tuple]:
    """(image shape, its dims, the per-sample extra shape) of an attack's group; `labels` of
    its extra dimension (pgd's radii) or None."""
    extra = (len(labels),) if labels is not None else ()
    dims = ("sample", *(("radius",) if extra else ()), *dims_of(tuple(shape)))
    return (len(samples), *extra, *shape), dims, extra


def layout_attack(
    store: Store,
    name: str,
    samples,
    shape,
    shard: int,
    attrs: dict,
    labels: list | None,
    maps: dict[str, dict],
    target_sample: bool = False,
    dtype: str = "float32",
) -> None:
    """`attacks/<name>`: the attacked images, success, norms and objectives (with the extra
    dimension `radius` where `labels` are given), the dataset index of each image aimed at
    (`target_sample`), and every method's maps recomputed on the attacked images (in `dtype`,
    `store.dtype`)."""
    image, dims, extra = attack_shape(samples, shape, labels)
    n, chunks = len(samples), (shard, *image[1:])
    extra_dims = dims[1 : 1 + len(extra)]
    for group in (attack(name), attack_map(name)):
        store.require_coordinate(group, "sample", samples)
        if extra:
            store.require_coordinate(group, "radius", np.asarray(labels, dtype="float64"))
    store.require_array(attack(name, "image"), image, dims, "float32", chunks, attrs)
    for field in ATTACK_FIELDS:
        kind = "bool" if field == "success" else "float32"
        store.require_array(
            attack(name, field),
            (n, *extra),
            ("sample", *extra_dims),
            kind,
            (shard, *extra),
            fill_value=False if kind == "bool" else None,
        )
    if target_sample:
        store.require_array(
            attack(name, "target_sample"), (n,), ("sample",), "int64", (shard,), fill_value=-1
        )
    for method, method_attrs in maps.items():
        store.require_array(attack_map(name, method), image, dims, dtype, chunks, method_attrs)


def layout_metric(
    store: Store,
    name: str,
    samples,
    shard: int,
    dims: tuple[str, ...],
    lengths: tuple[int, ...],
    chunks: tuple[int, ...],
    attrs: dict[str, Any],
) -> None:
    """`metrics/<name>`: (sample, *dims) float32, chunked by shard and `chunks`."""
    store.require_array(
        metric(name),
        (len(samples), *lengths),
        ("sample", *dims),
        "float32",
        (shard, *chunks),
        attrs,
    )


def write_stats(store: Store, table: dict[str, np.ndarray]) -> None:
    """Replace the `stats` group with `table` (derived data, one writer), done-marked."""
    root = store.root()
    if store.has(STATS):
        del root[STATS]
    for start, stop in store.done_regions(STATS):
        store.remove_marker(STATS, start, stop)
    grp = root.create_group(STATS)
    n = len(table[STATS_TEXT[0]])
    for key in table:
        text = key in STATS_TEXT
        grp.create_array(
            key,
            shape=(n,),
            chunks=(max(n, 1),),
            dtype=str if text else "float64",
            dimension_names=("comparison",),
            fill_value=None if text else np.nan,
        )
    store.consolidate()
    for key, values in table.items():
        if n:
            store.write(join(STATS, key), 0, values)
    store.mark_done(STATS, 0, n, arrays=tuple(join(STATS, k) for k in table))

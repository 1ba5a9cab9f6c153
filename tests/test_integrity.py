"""A finished default audit's store (2 samples, one per region), damaged (chunks deleted or
overwritten with garbage, of inputs, maps, attacks, metrics, statistics and coordinates),
locally and on the moto S3 server:
`salaudit verify` names each group and sample range and exits 1; the next `salaudit audit`,
or `salaudit verify --repair`, recomputes only those regions and what read them, and the store
then equals the clean run's on every array."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import zarr

import salaudit.flows.audit  # noqa: F401  (imported at collection: see test_audit)
from salaudit.flows.cli import main
from salaudit.inputs.uris import filesystem
from salaudit.store.store import Store

AUDIT = ["--limit", "2", "--quiet"]


def arrays(url: str) -> dict[str, np.ndarray]:
    root = Store(url).root("r")
    return {p: n[...] for p, n in root.members(max_depth=None) if isinstance(n, zarr.Array)}


def same(a: dict, b: dict) -> list[str]:
    """The arrays that differ (or are only in one)."""
    return sorted(
        k
        for k in a.keys() | b.keys()
        if k not in a
        or k not in b
        or not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")
    )


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The default audit of 2 samples in shards of 1 (two regions), finished."""
    folder = tmp_path_factory.mktemp("integrity")
    spec = folder / "spec.yaml"
    assert main(["init", str(spec)]) == 0
    spec.write_text(spec.read_text().replace("shard_size: 8 ", "shard_size: 1 "))
    store = folder / "clean"
    assert main(["audit", str(spec), *AUDIT, "--store", str(store)]) == 0
    return spec, store


def damage(url: str, key: str, how: str) -> None:
    fs, path = filesystem(url)
    target = f"{path}/{key}"
    if how == "delete":
        fs.rm_file(target)
    else:
        fs.pipe_file(target, os.urandom(max(8, fs.size(target))))


RERUN = {  # damaged together, then the audit runs again
    "inputs/image/c/0/0/0/0": "delete",
    "maps/relex/c/1/0/0/0": "garbage",
    "attacks/pgd/image/c/1/0/0/0/0": "delete",
    "metrics/fidelity/c/1/0": "garbage",
    "stats/p_value/c/0": "delete",
    "metrics/method/c/0": "garbage",
}
# region [0, 1): every unit (inputs, 5 map groups, 3 attacks, metrics); [1, 2): relex, pgd
# and metrics; nothing else
RERUN_COMPUTED = "20 units (13 computed"
RERUN_S3 = {"maps/grad/c/1/0/0/0": "delete", "metrics/r_score/c/0/3": "garbage"}
RERUN_S3_COMPUTED = "20 units (3 computed"  # maps:grad and metrics of [1, 2), metrics of [0, 1)
REPAIR = {  # damaged together, then salaudit verify --repair
    "maps/dance-grad/c/0/0/0/0": "delete",
    "attacks/topk@grad/maps/grad/c/1/0/0/0": "garbage",
    "inputs/sample/c/0": "delete",
    "metrics/road_morf/c/0/2/0": "garbage",
}


def check(url: str, spec, clean_store, capsys, rerun: dict, computed: str):
    reference = arrays(str(clean_store))
    for key, how in rerun.items():
        damage(url, key, how)
    assert main(["verify", url]) == 1
    out = capsys.readouterr().out
    for key in rerun:
        group = key.split("/c/")[0]
        assert re.search(rf"{re.escape(group)}/c/\S+ (missing|changed)", out), (key, out)
    assert main(["audit", str(spec), *AUDIT, "--store", url]) == 0
    out = capsys.readouterr().out
    assert "damaged: " in out and computed in out, out
    assert same(reference, arrays(url)) == []
    for key, how in REPAIR.items():
        damage(url, key, how)
    assert main(["verify", url]) == 1
    assert "maps/dance-grad samples [0, 1)" in capsys.readouterr().out
    assert main(["verify", url, "--repair", "--quiet"]) == 0
    assert same(reference, arrays(url)) == []
    assert main(["verify", url]) == 0


@pytest.mark.slow
def test_a_damaged_local_store_is_found_and_exactly_recomputed(clean, tmp_path, capsys):
    spec, store = clean
    copy = tmp_path / "damaged"
    shutil.copytree(store, copy)
    check(str(copy), spec, store, capsys, RERUN, RERUN_COMPUTED)


@pytest.mark.slow
def test_a_damaged_store_on_s3_is_found_and_exactly_recomputed(clean, bucket, capsys):
    spec, store = clean
    url = f"{bucket}/damaged"
    fs, path = filesystem(url)
    fs.put(f"{store}/", path, recursive=True)
    check(url, spec, store, capsys, RERUN_S3, RERUN_S3_COMPUTED)

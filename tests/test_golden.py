"""The restructure changed no result: the default audit (2 samples, shards of 1) built by the
code of commit 9d1d21d, before the restructure, and by this code is equal, bit for bit, on
every array of inputs, maps, attacks and metrics and on every row of stats, and the report
shows the same numbers. Both run here, in one environment, so the same operations in the same
order give the same bits; what the new code adds (new metrics) is allowed, nothing else.

One change since is on purpose and left out: RelEx's L1 gradient is 0 at m = 0, as in the
authors' code (issue 19, commit 6bffe26), so RelEx's maps, its metric column and its
comparisons differ, and so does Holm's p of a table that holds a RelEx row. Everything else
must still be bit-equal (the keyed tie order of issue 19 changes nothing here: these maps
have no ties among the pixels a top-K takes)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import zarr

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "9d1d21da067db951fe0c1fd37bfbe8ee7584eb8a"
GROUPS = ("inputs", "maps", "attacks", "metrics", "decoys", "boundary")
AUDIT = """
import sys, yaml
if sys.argv[3] == "before":
    from salaudit.audit import audit_direct
    from salaudit.auditspec import DEFAULT_SPEC, parse_spec
    from salaudit.report import write_report
else:
    from salaudit.pipeline.audit import audit_direct
    from salaudit.pipeline.spec import DEFAULT_SPEC, parse_spec
    from salaudit.report.html import write_report
data = yaml.safe_load(DEFAULT_SPEC)
data["store"]["url"], data["limit"], data["shard_size"] = sys.argv[1], 2, 1
if sys.argv[3] != "before":  # the decoys of before the budget (issue 18): no budget, stride 3
    data["decoys"] = {"dance": {"stride": 3, "decoys": None}}
audit_direct(parse_spec(data), fresh=True, progress=False)
write_report(sys.argv[1], sys.argv[2])
"""


def _old_library(into: Path) -> Path:
    """The library of commit BEFORE as an importable `salaudit` package under `into`."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE, "lib"], capture_output=True, check=False
    )
    if found.returncode:
        pytest.fail(  # the acceptance comparison needs the old commit: never pass without it
            f"commit {BEFORE[:7]} is not in this clone's history (a shallow clone?); clone "
            "with full history (git fetch --unshallow) to compare against it"
        )
    with tarfile.open(fileobj=BytesIO(found.stdout)) as tar:
        tar.extractall(into, filter="data")
    (into / "lib").rename(into / "salaudit")
    return into


def _audit(store: Path, which: str, pythonpath: Path | None) -> None:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-c", AUDIT, str(store), f"{store}-report", which]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=store.parent)
    assert done.returncode == 0, done.stderr[-3000:]


CHANGED = "relex"  # the method whose definition changed on purpose (the module's doc)


def _arrays(url: Path) -> dict[str, np.ndarray]:
    """Every array of GROUPS but CHANGED's maps, a metric without CHANGED's method column."""
    root = zarr.open_group(str(url), mode="r")
    methods = [str(m) for m in root["metrics/method"][...]] if "metrics/method" in root else []
    out = {}
    for path, node in root.members(max_depth=None):
        if not isinstance(node, zarr.Array) or path.split("/")[0] not in GROUPS:
            continue
        if path.endswith(f"/{CHANGED}"):
            continue
        values = node[...]
        dims = node.metadata.dimension_names or ()
        if path.startswith("metrics/") and "method" in dims and path != "metrics/method":
            values = np.delete(values, methods.index(CHANGED), axis=dims.index("method"))
        out[path] = values
    return out


def _unchanged_tables(stats: dict[tuple, dict]) -> set[tuple]:
    """The (metric, condition) tables without a row of CHANGED (their Holm p compares)."""
    every = {k[:2] for k in stats}
    return every - {k[:2] for k in stats if CHANGED in k[2:]}


def _stats(url: Path) -> dict[tuple, dict]:
    g = zarr.open_group(str(url), mode="r")["stats"]
    cols = {k: g[k][...] for k in g.array_keys()}
    keys = zip(cols["metric"], cols["condition"], cols["method"], cols["reference"], strict=True)
    return {k: {c: v[i] for c, v in cols.items()} for i, k in enumerate(keys)}


def _rows(path: Path) -> list[tuple]:
    with open(path) as f:
        return [tuple(r) for r in csv.reader(f)]


@pytest.mark.slow
def test_the_default_audit_is_unchanged_by_the_restructure(tmp_path):
    old = _old_library(tmp_path / "code")
    _audit(tmp_path / "before", "before", old)
    _audit(tmp_path / "after", "after", None)
    before, after = _arrays(tmp_path / "before"), _arrays(tmp_path / "after")
    assert {p.split("/")[0] for p in before} >= {"inputs", "maps", "attacks", "metrics"}
    for path, values in before.items():
        assert path in after, f"{path} is gone"
        nan = values.dtype.kind == "f"
        assert np.array_equal(values, after[path], equal_nan=nan), f"{path} differs"
    added = set(after) - set(before)
    # new metrics, and the checks of degenerate logits and maps (issue 21), only
    assert all(p.startswith(("metrics/", "checks/")) for p in added), added
    old_stats, new_stats = _stats(tmp_path / "before"), _stats(tmp_path / "after")
    assert len(old_stats) > 40
    unchanged = _unchanged_tables(old_stats)  # none in the default audit: RelEx is in each
    for key, row in old_stats.items():
        assert key in new_stats, key
        if CHANGED in key[2:]:
            continue
        for column, v in row.items():
            if column == "p_holm" and key[:2] not in unchanged:
                continue
            w = new_stats[key][column]
            assert v == w or (isinstance(v, float) and np.isnan(v) and np.isnan(w)), (key, column)
    for table in ("methods.csv", "comparisons.csv"):
        old_rows, new_rows = (
            [r for r in _rows(tmp_path / f"{which}-report/{table}") if CHANGED not in r]
            for which in ("before", "after")
        )
        if table == "comparisons.csv":  # Holm's p (the last column) moves with CHANGED's rows
            old_rows, new_rows = (
                [r if tuple(r[:2]) in unchanged else r[:-1] for r in rows]
                for rows in (old_rows, new_rows)
            )
        assert len(old_rows) > 10 and set(old_rows) <= set(new_rows), table

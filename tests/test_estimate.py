"""`salaudit plan`'s estimate: objects counted as an audit writes them, and large inputs
counted on a shrunk net with the rows a full-size run gives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from salaudit.pipeline.audit import audit_direct
from salaudit.pipeline.estimate import _full_seconds, _full_size_call, _probe, estimate
from salaudit.pipeline.spec import parse_spec
from salaudit.store.store import Store


def _folder(root, n: int = 3) -> str:
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (240, 240, 3), dtype=np.uint8)).save(
            root / "a" / f"{i}.png"
        )
    return f"folder:{root}?resize=224&crop=224"


def _spec(tmp_path, **changes):
    return parse_spec(
        {
            "selection": {"mode": "first", "n": 6},
            "methods": {"grad": {}, "ig": {"n_steps": 4}, "dance-grad": {}},
            "decoys": {"dance": {"decoys": 4}},
            "attacks": ["pgd"],
            "attack_params": {"pgd": {"steps": 2}},
            "radii": [8],
            "metrics": ["fidelity"],
            "shard_size": 4,
            "cluster": "local",
            "workers": 1,
            "keep_decoys": True,
            "store": {"url": str(tmp_path / "store")},
            **changes,
        }
    )


def test_the_plan_counts_the_objects_an_audit_writes(tmp_path):
    spec = _spec(tmp_path)
    planned = estimate(spec, 6)
    assert not planned.shrunk and planned.objects_per_sample > 0  # the kept populations
    audit_direct(spec, progress=False)
    written = Store(spec.store.url).listing()
    # every object, counted from the layout: one too many where a chunk holds only its fill
    # value and is never written (here the statistics' `condition`, empty without conditions)
    assert planned.objects - len(written) == 1


@pytest.mark.parametrize("methods", [{"grad": {}, "ig": {"n_steps": 4}}, {"smoothgrad": {}}])
def test_a_large_input_is_counted_shrunk_with_the_full_size_rows(tmp_path, methods):
    spec = _spec(
        tmp_path,
        model="python:support:pooled224",
        data=_folder(tmp_path / "photos"),
        methods=methods,
        attacks=[],
        metrics=["fidelity"],
        keep_decoys=False,
        decoys={},
    )
    shrunk, full = _probe(spec, 1, sized=True), _probe(spec, 1)
    assert shrunk.shrunk and not full.shrunk
    assert shrunk.rows == full.rows  # no early exits: the same rows at any size
    assert shrunk.rows["maps"] == sum({"grad": 1, "ig": 4, "smoothgrad": 25}[m] for m in methods)
    assert all(s > 0 for s in shrunk.seconds.values())


def test_a_net_that_takes_only_its_own_size_is_counted_at_full_size(tmp_path):
    spec = _spec(
        tmp_path,
        model="python:support:cnn224",  # its head is a fixed-size linear layer
        data=_folder(tmp_path / "photos"),
        methods={"grad": {}},
        attacks=[],
        metrics=["fidelity"],
        keep_decoys=False,
        decoys={},
    )
    probe = _probe(spec, 1, sized=True)
    assert not probe.shrunk and probe.rows["maps"] == 1


def test_full_size_seconds_add_each_shrunk_rows_extra_cost_at_full_size():
    assert [i for i in range(70) if _full_size_call(i)] == [0, 1, 4, 16, 64]
    # a unit of 10 s wall time, 3 s of it side passes; a row costs 0.5 s more at full size
    # from call 0, then 0.25 s from call 2 on: 10 - 3 + 2 x 0.5 + 4 x 0.5 + 4 x 0.25
    calls = [(2, 0.5, 2.0), (4, None, 0.0), (4, 0.25, 1.0)]
    assert _full_seconds(calls, wall=10.0) == pytest.approx(11.0)
    assert _full_seconds([], wall=1.0) == 1.0

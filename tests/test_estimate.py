"""`salaudit plan`'s estimate: objects counted as an audit writes them, and large inputs
counted on a shrunk net with the rows a full-size run gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.modules.module import register_module_forward_pre_hook

from salaudit.inputs.models import PixelModel, load_model
from salaudit.methods.context import Context
from salaudit.methods.registry import get_method, registry
from salaudit.pipeline.audit import audit_direct
from salaudit.pipeline.estimate import _full_seconds, _full_size_call, _probe, estimate
from salaudit.pipeline.spec import parse_spec
from salaudit.store.store import Store

# small parameters of the methods whose rows their parameters fix
FIXED_PARAMS = {
    "ig": {"n_steps": 3},
    "intuniform": {"n_steps": 3},
    "smoothgrad": {"n_samples": 3},
    "vargrad": {"n_samples": 2},
    "sgrange": {"n_samples": 2},
    "expgrad": {"n_samples": 3},
    "relex": {"iterations": 2, "n_noise": 3},
}


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


@pytest.mark.parametrize("name", [n for n, info in registry().items() if info.rows])
def test_a_method_with_fixed_rows_sends_exactly_those_rows_through_the_model(name):
    model = load_model("python:support:untrained_cnn")
    method = get_method(name, FIXED_PARAMS.get(name, {})).resolved(model)
    x, target = torch.rand(3, 3, 32, 32), torch.tensor([0, 4, 9])
    rows = []
    hook = model.register_forward_pre_hook(lambda _m, a: rows.append(len(a[0])))
    try:
        method(model, x, target, Context(["a", "b", "c"], 4, torch.rand(5, 3, 32, 32)))
    finally:
        hook.remove()
    assert method.fixed_rows > 0 and sum(rows) == 3 * method.fixed_rows
    if registry()[name].decoys:  # a decoy form's rows depend on the model: counted
        assert get_method(f"dance-{name}").fixed_rows is None


def test_a_large_plan_prices_fixed_methods_and_attacked_maps_without_running_them(tmp_path):
    # grad's and relex's rows are fixed (priced, not run); pgd's attacked images are explained
    # again with both, at the maps stage's rows per image for each of its two radii
    spec = _spec(
        tmp_path,
        model="python:support:pooled224",
        data=_folder(tmp_path / "photos"),
        methods={"grad": {}, "relex": {"iterations": 20}},
        radii=[2, 8],
        metrics=["fidelity"],
        keep_decoys=False,
        decoys={},
    )
    ran = []  # rows that went through the model, timing passes included

    def count(module, args):
        if isinstance(module, PixelModel):
            ran.append(len(args[0]))

    hook = register_module_forward_pre_hook(count)
    try:
        probe = _probe(spec, 1, sized=True)
    finally:
        hook.remove()
    maps = 1 + 2 * 20 * 8  # grad; relex: kept and removed part of 8 copies, 20 iterations
    assert probe.shrunk and probe.rows["maps"] == maps
    assert probe.rows["attack"] > 2 * maps  # the maps again, plus the attack's own rows
    assert sum(ran) < maps  # none of the 3 x 321 priced rows ran
    assert all(s > 0 for s in probe.seconds.values())


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

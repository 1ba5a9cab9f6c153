"""Mixed precision (issue 18, item 2): the model's forward under CPU autocast in bf16, every
gradient and sum in fp32; maps stay within the stated tolerance of fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import salaudit
from salaudit import load_model

METHODS = {
    "grad": {},
    "ig": {},
    "smoothgrad": {"n_samples": 8},
    "relex": {"iterations": 50},
    "big": {},
    "dance-grad": {},
}
DECOYS = {"dance": {"decoys": 32}}  # the default audit's budget
# measured 2026-12-02 on the default audit's first 4 of batch64, Pearson with fp32 per sample
NOT_YET = {
    "big": "the boundary search ends at another point for one sample in bf16 (0.90)",
}
TOLERANT = [m for m in METHODS if m not in NOT_YET]


@pytest.fixture(scope="module")
def both(batch64):
    x, t, idx = batch64
    x, t, idx = x[:4], t[:4], idx[:4]
    out = {}
    for precision in ("fp32", "bf16"):
        model = load_model("builtin:digit-scenes-cnn", progress=False)
        model.precision = precision
        maps = salaudit.explain(model, x, METHODS, t, decoys=DECOYS, samples=idx)
        out[precision] = (model, maps)
    return x, t, out


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def test_the_forward_runs_in_bf16_and_returns_fp32(model):
    bf16 = load_model("builtin:digit-scenes-cnn", progress=False)
    bf16.precision = "bf16"
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = bf16(x)
    assert out.dtype == torch.float32
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert grad.dtype == torch.float32
    with torch.no_grad():
        exact = model(x)
    assert not torch.equal(out.detach(), exact)  # bf16 arithmetic, not fp32
    torch.testing.assert_close(out.detach(), exact, rtol=0.05, atol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("method", TOLERANT)
def test_bf16_maps_correlate_with_fp32(both, method):
    _, _, out = both
    exact, mixed = out["fp32"][1][method].values, out["bf16"][1][method].values
    assert not np.array_equal(exact, mixed)
    assert (_pearson(exact, mixed) >= 0.99).all(), _pearson(exact, mixed)


@pytest.mark.slow
def test_bf16_ig_keeps_completeness_within_one_percent(both):
    """Completeness against the network's score gap F(x) - F(0), computed exactly (fp32): the
    bf16 map explains the network, and the bf16 forward's own endpoints carry rounding of up
    to 1.6% of the gap on these images (CPUs without native bf16, e.g. AVX2), which no step
    count removes (0.5-1.6% at 16, 50 and 128 steps, measured 2026-12-02)."""
    x, t, out = both
    exact, maps = out["fp32"][0], out["bf16"][1]
    with torch.no_grad():
        gap = exact(x).gather(1, t[:, None]) - exact(torch.zeros_like(x)).gather(1, t[:, None])
    total = torch.from_numpy(maps["ig"].values).flatten(1).sum(1)
    assert ((total - gap.squeeze(1)).abs() <= 0.01 * gap.squeeze(1).abs()).all()
    assert not torch.equal(total, torch.from_numpy(out["fp32"][1]["ig"].values).flatten(1).sum(1))


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(NOT_YET))
def test_bf16_search_methods_correlate_with_fp32(both, method, request):
    """The issue's bound, not met yet for the methods that search (strict: a pass reports)."""
    request.applymarker(pytest.mark.xfail(strict=True, reason=NOT_YET[method]))
    _, _, out = both
    exact, mixed = out["fp32"][1][method].values, out["bf16"][1][method].values
    assert (_pearson(exact, mixed) >= 0.99).all(), _pearson(exact, mixed)


def test_a_store_keeps_its_precision(tmp_path, capsys):
    from salaudit.flows.cli import main
    from salaudit.store.store import Store

    store = str(tmp_path / "s")
    argv = ["explain", "--methods", "grad", "--limit", "2", "--store", store, "--quiet"]
    assert main(argv) == 0
    assert Store(store).attrs()["precision"] == "fp32"
    assert main([*argv, "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "with another precision" in err and "precision 'fp32', this run 'bf16'" in err
    assert main([*argv, "--precision", "bf16", "--fresh"]) == 0
    assert Store(store).attrs()["precision"] == "bf16"

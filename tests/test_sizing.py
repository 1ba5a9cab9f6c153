"""Micro-batches sized to memory (a probe measures a row, the budget bounds the batch), and
progress inside long units."""

from __future__ import annotations

import pytest
import torch

from salaudit.engine.batching import pass_bytes, row_bytes, size_micro_batch
from salaudit.errors import SalauditError
from salaudit.pipeline.run import make_run
from salaudit.pipeline.spec import parse_spec

CPU = torch.device("cpu")


def weight_bytes(model) -> int:
    return sum(t.nbytes for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("budget", [2**20, 3 * 2**20, 10 * 2**20])
def test_auto_micro_batch_never_exceeds_the_budget_it_states(model, budget):
    sizing = size_micro_batch(model, CPU, budget)
    assert sizing.budget == budget and sizing.row_bytes == row_bytes(model, CPU)
    assert 1 <= sizing.rows <= 64 and sizing.rows * sizing.row_bytes <= budget
    # what a pass of that many rows holds, weights aside, stays within the budget
    assert pass_bytes(model, sizing.rows, CPU) - weight_bytes(model) <= budget
    if sizing.rows < 64:  # and one more row would not fit: the budget, not the cap, decided
        assert (sizing.rows + 1) * sizing.row_bytes > budget
    assert f"micro-batch {sizing.rows} rows" in str(sizing)


def test_a_cpu_micro_batch_holds_at_most_its_pass_bytes():
    """At 224 a row holds tens of MiB: the CPU cap is the pass's bytes, not 64 rows (here a conv
    of 64 channels at 3x224x224, whose output alone is 12.25 MiB a row)."""
    from salaudit.engine.batching import CPU_PASS_BYTES

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    net.input_shape = (3, 224, 224)
    sizing = size_micro_batch(net, CPU, 2**40)
    assert sizing.row_bytes >= 4 * 64 * 224 * 224
    assert sizing.rows == CPU_PASS_BYTES // sizing.row_bytes < 64


def test_a_row_costs_its_activations(model):
    """The probe sees what the default CNN saves for its backward: per row, at least its input
    and the first convolution's output (16 channels at 32 x 32, float32)."""
    per_row = row_bytes(model, CPU)
    assert per_row >= 4 * (3 + 16) * 32 * 32
    assert pass_bytes(model, 8, CPU) > pass_bytes(model, 4, CPU)


def test_the_spec_sizes_the_run_to_its_budget(model, tmp_path):
    spec = parse_spec({"methods": ["grad"], "memory_budget": "2MiB", "store": {"url": "x"}})
    run = make_run(spec, model, None, [], [], None, CPU)
    assert run.micro_batch == size_micro_batch(model, CPU, 2**21).rows < 64
    fixed = parse_spec({"methods": ["grad"], "micro_batch": 5, "store": {"url": "x"}})
    assert make_run(fixed, model, None, [], [], None, CPU).micro_batch == 5


@pytest.mark.parametrize(
    ("field", "words"), [({"memory_budget": "lots"}, "512MB"), ({"micro_batch": 0}, "micro_batch")]
)
def test_a_bad_memory_setting_is_refused(field, words):
    with pytest.raises(SalauditError, match=words):
        parse_spec({"methods": ["grad"], **field})


def test_a_unit_reports_the_rows_through_the_model_as_it_goes(model):
    from salaudit.pipeline.progress import RowMeter

    seen = []
    with RowMeter(model, 2, lambda *r: seen.append(r), every=0.0) as meter:
        model(torch.rand(5, 3, 32, 32))
        meter.shard_done()
        model(torch.rand(3, 3, 32, 32))
    assert meter.rows == 8 and seen == [(5, 0, 2), (5, 1, 2), (8, 1, 2)]
    model(torch.rand(2, 3, 32, 32))  # the hook is gone once the unit ends
    assert meter.rows == 8

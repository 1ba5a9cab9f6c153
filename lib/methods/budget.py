"""Budgets for large inputs: where one row through the model costs a hundred times the default
model's (a 224x224 ImageNet net against the 32x32 default), the methods whose cost is many rows
per image (RelEx's copies, the boundary search's Carlini-Wagner) take a cheaper default,
measured against the full one on the default model (docs/robust.md, "Budgets at size").
A parameter set in a spec always wins."""

from __future__ import annotations

import math

from ..inputs.models import PixelModel

LARGE_INPUT = 3 * 64 * 64  # elements of one input above which the large-input budgets apply


def large_input(model: PixelModel) -> bool:
    """Whether `model`'s inputs are large enough for the large-input budgets."""
    return math.prod(model.input_shape) > LARGE_INPUT

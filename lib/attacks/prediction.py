"""PGD on the prediction (METHODS.md): untargeted L_inf PGD over a list of radii, batched over
images and radii; success = the prediction changed."""

from __future__ import annotations

import math

import torch

from ..engine.batching import cross_entropy, loss_gradient, predictions
from ..engine.keys import keyed_uniform
from ..engine.optim import linf_step, per_row
from ..inputs.models import PixelModel
from ..methods.context import Context
from .catalogue import AttackResult, pixel_unit, register_attack, result

Tensor = torch.Tensor
PGD_RADII = (1, 2, 4, 8, 16, 32)


@register_attack("pgd", method=False, dim="radius", labels="radii")
def attack_pgd(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    method: str | None = None,
    ctx: Context | None = None,
    radii: tuple[float, ...] = PGD_RADII,
    steps: int = 40,
    step_size: float = 2.5,
) -> AttackResult:
    """Untargeted L_inf PGD on the cross-entropy at each radius (units of 1/255 of the range):
    a random start in the ball, `steps` signed steps of step_size * eps / steps; per image and
    radius the iterate with the highest loss. Results have a radius dimension: (B, R, ...)."""
    ctx = ctx or Context()
    n, r = len(x), len(radii)
    keys = ctx.keys_for(n)
    rows_x = x.repeat_interleave(r, 0)
    rows_t = target.repeat_interleave(r, 0)
    eps = (torch.tensor([float(v) for v in radii], device=x.device) * pixel_unit(model)).repeat(n)
    eps = per_row(eps, x)
    lo, hi = model.value_range
    start_keys = [f"{keys[i]}/pgd/{radii[j]}" for i in range(n) for j in range(r)]
    start = keyed_uniform(start_keys, tuple(x.shape[1:]), x.device)
    current = (rows_x + (2 * start - 1) * eps).clamp(lo, hi)
    loss = cross_entropy(rows_t)
    _, before, _ = loss_gradient(model, rows_x, loss, ctx.micro_batch)
    best, best_loss = current.clone(), torch.full_like(before, -math.inf)
    for t in range(steps + 1):
        g, value, _ = loss_gradient(model, current, loss, ctx.micro_batch)
        better = value > best_loss
        best[better], best_loss[better] = current[better], value[better]
        if t < steps:
            current = linf_step(current, g, rows_x, eps, step_size * eps / steps, (lo, hi))
    success = predictions(model, best, ctx.micro_batch) != rows_t
    out = result(rows_x, best, success, before, best_loss)
    return AttackResult(*(v.view(n, r, *v.shape[1:]) for v in vars(out).values()))

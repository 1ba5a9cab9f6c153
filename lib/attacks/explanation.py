"""Explanation attacks (METHODS.md) against one named method's maps.

`topk`, `target` and `mass-center` (Ghorbani et al.) take signed steps of `alpha` inside the
L_inf ball `eps` to move an objective of the normalised map h = sum_channels |E| / sum |E|;
`manipulate` (Dombrowski et al.) runs Adam towards another image's map. After every step the
prediction is checked with the model itself, and each image keeps its best iterate whose
prediction is the clean one; success = the objective moved in the intended direction. Every
attack is batched over images.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..engine.batching import loss_gradient, predictions
from ..engine.optim import adam, linf_step
from ..errors import SalauditError
from ..inputs.kinds import KINDS
from ..inputs.models import PixelModel
from ..methods.context import Context
from ..methods.differentiable import DifferentiableMap, set_beta
from .catalogue import AttackResult, pixel_unit, register_attack, result

Tensor = torch.Tensor
HW0 = 224 * 224  # the papers' pixel count, for the scaling rule
IMPROVEMENT = 1e-6  # an objective must move by more than this (relative) to count


def normalised_map(e: Tensor) -> Tensor:
    """h = sum over channels of |E|, normalised to sum 1 per image: (B, H, W)."""
    h = e.abs().sum(1)
    return h / h.flatten(1).sum(1).clamp_min(1e-30).view(-1, 1, 1)


def centre_of_mass(h: Tensor) -> Tensor:
    """(y, x) centre of mass of normalised maps h (B, H, W), in pixels: (B, 2)."""
    ys = torch.arange(h.shape[1], device=h.device, dtype=h.dtype)
    xs = torch.arange(h.shape[2], device=h.device, dtype=h.dtype)
    return torch.stack([(h.sum(2) * ys).sum(1), (h.sum(1) * xs).sum(1)], 1)


def top_pixels(h: Tensor, fraction: float) -> Tensor:
    """Indicator (B, H, W) of each map's round(fraction * hw) largest pixels (at least 1)."""
    k = max(1, round(fraction * h[0].numel()))
    flat = torch.zeros_like(h.flatten(1))
    flat.scatter_(1, h.flatten(1).topk(k, dim=1).indices, 1.0)
    return flat.view_as(h)


def target_region(shape: tuple[int, int], side: float, like: Tensor) -> Tensor:
    """Indicator (H, W) of the bottom-right square of side round(side * H) (at least 1)."""
    s = max(1, round(side * shape[0]))
    region = torch.zeros(shape, device=like.device, dtype=like.dtype)
    region[-s:, -s:] = 1.0
    return region


# --- Ghorbani et al. ---------------------------------------------------------------------------

# objective(h) for reporting and the best iterate; loss(h) for the direction (minimised);
# sign: +1 when the objective should rise.
Objective = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], int]


def _topk_objective(h0: Tensor, fraction: float) -> Objective:
    top = top_pixels(h0, fraction)

    def mass(h):
        return (h * top).flatten(1).sum(1)

    return mass, mass, -1


def _target_objective(h0: Tensor, side: float) -> Objective:
    region = target_region(tuple(h0.shape[1:]), side, h0)

    def mass(h):
        return (h * region).flatten(1).sum(1)

    return mass, lambda h: -mass(h), 1


def _centre_objective(h0: Tensor) -> Objective:
    centre = centre_of_mass(h0)
    # As in the authors' code, the direction moves away from the clean centre rounded to whole
    # pixels: its gradient is not zero at the clean image, where the exact distance's is.
    anchor = centre.floor()

    def shift(h):
        return (centre_of_mass(h) - centre).norm(dim=1)

    return shift, lambda h: -((centre_of_mass(h) - anchor) ** 2).sum(1), 1


def _ghorbani(model, x, target, method, ctx, method_params, objective_of, eps, alpha, steps, beta):
    unit = pixel_unit(model)
    eps, alpha = eps * unit, alpha * unit
    maps = DifferentiableMap.build(method, model, target, ctx, method_params, beta)
    clean = maps.map(x)
    objective, loss, sign = objective_of(normalised_map(clean))

    def direction(current, e):
        e = e.detach().requires_grad_(True)
        with torch.enable_grad():
            (dmap,) = torch.autograd.grad(loss(normalised_map(e)).sum(), e)
        return maps.input_gradient(current, dmap)

    def step(current, gradient, _t):
        return linf_step(current, -gradient, x, eps, alpha, model.value_range)

    return _best_iterate(
        model, x, target, ctx, maps, clean, (objective, sign), steps, direction, step
    )


def _best_iterate(model, x, target, ctx, maps, clean, goal, steps, direction, step):
    """Iterate `step(current, direction(current, map of current), t)` from x (whose map is
    `clean`), keeping per image the iterate with the best objective whose prediction is
    unchanged; `goal` = (objective of h, +1 if it should rise else -1)."""
    objective, sign = goal
    current, best, e = x.clone(), x.clone(), clean
    before = objective(normalised_map(e))
    best_value = before.clone()
    for t in range(steps):
        current = step(current, direction(current, e), t)
        e = maps.map(current)
        value = objective(normalised_map(e))
        kept = predictions(model, current, ctx.micro_batch) == target
        better = kept & (sign * (value - best_value) > 0)
        best[better], best_value[better] = current[better], value[better]
    moved = sign * (best_value - before) > IMPROVEMENT * before.abs().clamp_min(1e-12)
    return result(x, best, moved, before, best_value)


GHORBANI = {"eps": 8.0, "alpha": 0.5, "steps": 300, "beta": 30.0}  # their notebooks' budget


def _ghorbani_attack(name: str, objective_of: Callable, doc: str, kinds=KINDS, **own) -> Callable:
    """Register Ghorbani attack `name`, whose objective is `objective_of(h0, **own)` (`own`:
    its own parameters and their defaults), with the shared budget `GHORBANI`: L_inf ball
    `eps` and step `alpha` (units of 1/255 of the range), `steps`, softplus `beta`."""
    defaults = {**own, **GHORBANI}

    def attack(
        model: PixelModel,
        x: Tensor,
        target: Tensor,
        method: str,
        ctx: Context | None = None,
        method_params: dict | None = None,
        **params,
    ) -> AttackResult:
        p = {**defaults, **params}
        objective = functools.partial(objective_of, **{k: p[k] for k in own})
        budget = (p["eps"], p["alpha"], p["steps"], p["beta"])
        return _ghorbani(
            model, x, target, method, ctx or Context(), method_params, objective, *budget
        )

    attack.__name__ = attack.__qualname__ = f"attack_{name.replace('-', '_')}"
    attack.__doc__ = doc
    return register_attack(name, params=defaults, kinds=kinds)(attack)


attack_topk = _ghorbani_attack(
    "topk", _topk_objective, "Lower the map's mass on the clean map's top `fraction` of pixels.",
    fraction=0.02,
)  # fmt: skip
attack_target = _ghorbani_attack(
    "target", _target_objective, "Raise the map's mass inside the bottom-right square of side "
    "`side` * H.", kinds=("image",), side=1 / 8,
)  # fmt: skip
attack_mass_center = _ghorbani_attack(
    "mass-center", _centre_objective, "Move the map's centre of mass away from the clean one "
    "(objective: the shift in pixels).", kinds=("image",),
)  # fmt: skip


# --- Dombrowski et al. -------------------------------------------------------------------------


@register_attack("manipulate", target_image=True, kinds=("image",))
def attack_manipulate(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    method: str,
    ctx: Context | None = None,
    method_params: dict | None = None,
    x_target: Tensor | None = None,
    w1: float = 1e11,
    w2: float = 1e6,
    lr: float = 2e-4,
    steps: int = 1500,
    beta_start: float = 10.0,
    beta_end: float = 100.0,
) -> AttackResult:
    """Match the map of another image `x_target` (one per image): Adam on w1 * MSE(h(x'), h_t)
    + w2 * MSE(softmax(x'), softmax(x)), w1 quoted at 224x224 and scaled by (hw / hw0)^2, lr per
    unit of the range, softplus beta annealed geometrically from beta_start to beta_end.
    Objective: MSE(h(x'), h_t), to be lowered."""
    if x_target is None or x_target.shape != x.shape:
        raise SalauditError("manipulate needs one target image per image (x_target, x's shape)")
    ctx = ctx or Context()
    hw = x.shape[2] * x.shape[3]
    w1 = w1 * (hw / HW0) ** 2
    lo, hi = model.value_range
    maps = DifferentiableMap.build(method, model, target, ctx, method_params, beta_start)
    soft, annealed = maps.soft, maps.soft is not model
    target_ctx = ctx.with_keys([f"{k}/manipulate-target" for k in ctx.keys_for(len(x))])
    target_class = predictions(model, x_target, ctx.micro_batch)  # its map as a user sees it
    goal = normalised_map(
        DifferentiableMap.build(method, model, target_class, target_ctx, method_params).map(
            x_target
        )
    )
    with torch.no_grad():
        clean_p = torch.cat(
            [
                model(x[s : s + ctx.micro_batch]).softmax(1)
                for s in range(0, len(x), ctx.micro_batch)
            ]
        )

    def objective(h):
        return ((h - goal) ** 2).flatten(1).mean(1)

    def direction(current, e):
        v = e.detach().requires_grad_(True)
        with torch.enable_grad():
            (dmap,) = torch.autograd.grad(w1 * objective(normalised_map(v)).sum(), v)
        g = maps.input_gradient(current, dmap)

        def keep_output(logits, rows):
            return w2 * ((logits.softmax(1) - clean_p[rows]) ** 2).mean(1)

        g_out, _, _ = loss_gradient(soft, current, keep_output, ctx.micro_batch)
        return g + g_out

    zero = torch.zeros(len(x), dtype=torch.long, device=x.device)
    state = {"m1": torch.zeros_like(x), "m2": torch.zeros_like(x), "steps": zero}

    def step(current, gradient, t):
        if annealed:
            set_beta(soft, beta_start * (beta_end / beta_start) ** ((t + 1) / steps))
        moved, state["m1"], state["m2"], state["steps"] = adam(
            current, gradient, state["m1"], state["m2"], state["steps"], lr * (hi - lo)
        )
        return moved.clamp(lo, hi)

    clean = maps.map(x)
    return _best_iterate(
        model, x, target, ctx, maps, clean, (objective, -1), steps, direction, step
    )

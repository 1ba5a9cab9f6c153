"""Attacks (METHODS.md): explanation attacks against one named method, and PGD on the prediction.

`topk`, `target` and `mass-center` (Ghorbani et al.) take signed steps of `alpha` inside the
L_inf ball `eps` to move an objective of the normalised map h = sum_channels |E| / sum |E|;
`manipulate` (Dombrowski et al.) runs Adam towards another image's map. After every step the
prediction is checked with the model itself, and each image keeps its best iterate whose
prediction is the clean one; success = the objective moved in the intended direction. `pgd`
attacks the prediction over a list of L_inf radii; success = the prediction changed.

Radii and steps are in units of 1/255 of the pixel range (METHODS.md's scaling rule); every
attack is batched over images, and over radii for `pgd`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .batching import cross_entropy, keyed_uniform, loss_gradient, predictions
from .differentiable import DIFFERENTIABLE, DifferentiableMap, set_beta
from .errors import SalauditError
from .models import PixelModel
from .saliency import Context

Tensor = torch.Tensor
HW0 = 224 * 224  # the papers' pixel count, for the scaling rule
PGD_RADII = (1, 2, 4, 8, 16, 32)
IMPROVEMENT = 1e-6  # an objective must move by more than this (relative) to count


@dataclass
class AttackResult:
    """Per sample (and radius for pgd): the attacked image, success, the perturbation's L_inf
    and L2 norms, and the attack's objective before and after."""

    image: Tensor
    success: Tensor
    linf: Tensor
    l2: Tensor
    objective_before: Tensor
    objective_after: Tensor


def parse_attack(name: str) -> tuple[str, str | None]:
    """`topk@grad` -> ("topk", "grad"); `pgd` -> ("pgd", None). Errors name what is valid."""
    attack, _, method = name.partition("@")
    if attack not in ATTACKS:
        raise SalauditError(
            f"unknown attack {attack!r} in {name!r}; valid: {', '.join(ATTACKS)} "
            "(written attack@method, e.g. topk@grad; pgd takes no method)"
        )
    if attack == "pgd":
        if method:
            raise SalauditError(
                f"pgd attacks the prediction and takes no method; write pgd, not {name}"
            )
        return attack, None
    if not method:
        raise SalauditError(
            f"{attack} attacks one method's maps; write {attack}@METHOD, e.g. {attack}@grad"
        )
    if method not in DIFFERENTIABLE:
        raise SalauditError(
            f"{name}: {method} has no differentiable path, so it cannot be attacked; attacks run "
            f"against one of: {', '.join(DIFFERENTIABLE)}"
        )
    return attack, method


def attack_params(name: str, params: dict | None = None) -> dict:
    """The attack's parameters with defaults filled in; unknown ones raise an error."""
    fn = ATTACKS[parse_attack(name)[0]]
    hidden = {"model", "x", "target", "method", "ctx", "method_params", "x_target"}
    allowed = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in hidden}
    unknown = set(params or {}) - set(allowed)
    if unknown:
        raise SalauditError(
            f"unknown parameter(s) {sorted(unknown)} for {name}; valid: {sorted(allowed)}"
        )
    return {**allowed, **(params or {})}


# --- maps to the attacked quantity ------------------------------------------------------------


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
    unit = _unit(model)
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
        moved = current - alpha * gradient.sign()
        return (x + (moved - x).clamp(-eps, eps)).clamp(*model.value_range)

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
    return _result(x, best, moved, before, best_value)


def attack_topk(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    method: str,
    ctx: Context | None = None,
    method_params: dict | None = None,
    fraction: float = 0.02,
    eps: float = 8.0,
    alpha: float = 0.5,
    steps: int = 300,
    beta: float = 30.0,
) -> AttackResult:
    """Lower the map's mass on the clean map's top `fraction` of pixels."""
    return _ghorbani(
        model,
        x,
        target,
        method,
        ctx or Context(),
        method_params,
        lambda h0: _topk_objective(h0, fraction),
        eps,
        alpha,
        steps,
        beta,
    )


def attack_target(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    method: str,
    ctx: Context | None = None,
    method_params: dict | None = None,
    side: float = 1 / 8,
    eps: float = 8.0,
    alpha: float = 0.5,
    steps: int = 300,
    beta: float = 30.0,
) -> AttackResult:
    """Raise the map's mass inside the bottom-right square of side `side` * H."""
    return _ghorbani(
        model,
        x,
        target,
        method,
        ctx or Context(),
        method_params,
        lambda h0: _target_objective(h0, side),
        eps,
        alpha,
        steps,
        beta,
    )


def attack_mass_center(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    method: str,
    ctx: Context | None = None,
    method_params: dict | None = None,
    eps: float = 8.0,
    alpha: float = 0.5,
    steps: int = 300,
    beta: float = 30.0,
) -> AttackResult:
    """Move the map's centre of mass away from the clean one (objective: the shift in pixels)."""
    return _ghorbani(
        model,
        x,
        target,
        method,
        ctx or Context(),
        method_params,
        _centre_objective,
        eps,
        alpha,
        steps,
        beta,
    )


# --- Dombrowski et al. -------------------------------------------------------------------------


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

    state = {"m": torch.zeros_like(x), "v": torch.zeros_like(x)}

    def step(current, gradient, t):
        if annealed:
            set_beta(soft, beta_start * (beta_end / beta_start) ** ((t + 1) / steps))
        b1, b2 = 0.9, 0.999
        state["m"] = b1 * state["m"] + (1 - b1) * gradient
        state["v"] = b2 * state["v"] + (1 - b2) * gradient**2
        m_hat = state["m"] / (1 - b1 ** (t + 1))
        v_hat = state["v"] / (1 - b2 ** (t + 1))
        return (current - lr * (hi - lo) * m_hat / (v_hat.sqrt() + 1e-8)).clamp(lo, hi)

    clean = maps.map(x)
    return _best_iterate(
        model, x, target, ctx, maps, clean, (objective, -1), steps, direction, step
    )


# --- PGD on the prediction ---------------------------------------------------------------------


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
    eps = (torch.tensor([float(v) for v in radii], device=x.device) * _unit(model)).repeat(n)
    eps = eps.view(-1, 1, 1, 1)
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
            moved = current + step_size * eps / steps * g.sign()
            current = (rows_x + (moved - rows_x).clamp(-eps, eps)).clamp(lo, hi)
    success = predictions(model, best, ctx.micro_batch) != rows_t
    result = _result(rows_x, best, success, before, best_loss)
    return AttackResult(*(v.view(n, r, *v.shape[1:]) for v in vars(result).values()))


# --- shared -------------------------------------------------------------------------------------


def _unit(model: PixelModel) -> float:
    lo, hi = model.value_range
    return (hi - lo) / 255


def _result(x: Tensor, adv: Tensor, success: Tensor, before: Tensor, after: Tensor) -> AttackResult:
    delta = (adv - x).flatten(1)
    return AttackResult(adv, success, delta.abs().amax(1), delta.norm(dim=1), before, after)


ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "topk": attack_topk,
    "target": attack_target,
    "mass-center": attack_mass_center,
    "manipulate": attack_manipulate,
    "pgd": attack_pgd,
}

"""The boundary search of the boundary attributions (paper big-*.txt, METHODS.md).

It runs an ensemble of attacks, each batched over images with per-sample early
stopping, and keeps per image the closest candidate that is adversarial: L2 PGD over a ladder
of radii, Carlini-Wagner L2, and APGD (L2, cross-entropy). Radii are in units of
sqrt(d) / 255 of the pixel range (METHODS.md's scaling rule). A sample without any adversarial
candidate is flagged and its BSM and BIG maps are left empty (NaN), never computed from a
non-adversarial point. At large inputs (`budget.large_input`) Carlini-Wagner defaults to 5
binary steps of 50 (250 rows, not 900): the ensemble's rows per image fall from 1,082 to 593 on
the default model, every image still found, the distance 4.3% larger on average
(docs/robust.md, "Budgets at size").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch

from ..engine.batching import cross_entropy, loss_gradient, predictions
from ..engine.keys import generator, keyed_normal
from ..engine.optim import adam, l2_step, per_row, project_l2, row_norm, unit_l2
from ..errors import SalauditError
from ..inputs.models import PixelModel
from .budget import large_input
from .context import Context

Tensor = torch.Tensor
FINDERS = ("pgd", "cw", "apgd")
FINDER_CODES = {"none": 0, "pgd": 1, "cw": 2, "apgd": 3}
CW_BUDGET = {False: (9, 100), True: (5, 50)}  # (binary steps, steps) by large_input


@dataclass(frozen=True)
class BoundaryConfig:
    """The boundary search: which finders, the radius ladder (units of sqrt(d)/255 of the
    range) for PGD and APGD, and each finder's budget (METHODS.md defaults)."""

    finders: tuple[str, ...] = FINDERS
    radii: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)
    pgd_steps: int = 40
    pgd_step: float = 2.5  # step = pgd_step * radius / pgd_steps
    cw_binary_steps: int | None = None  # 9 (5 at large inputs)
    cw_steps: int | None = None  # 100 (50 at large inputs)
    cw_lr: float = 0.01
    cw_const: float = 1e-3
    apgd_steps: int = 100
    refine_steps: int = 5  # salaudit's polish of the closest candidate (0: off)

    def __post_init__(self):
        if isinstance(self.finders, str):  # "pgd,cw" from a command line
            object.__setattr__(self, "finders", tuple(self.finders.split(",")))
        unknown = set(self.finders) - set(FINDERS)
        if unknown or not self.finders:
            raise SalauditError(
                f"unknown boundary finder(s) {sorted(unknown)}; valid: {', '.join(FINDERS)}"
            )
        object.__setattr__(self, "finders", tuple(self.finders))
        object.__setattr__(self, "radii", tuple(sorted(float(r) for r in self.radii)))

    def resolved(self, model: PixelModel) -> BoundaryConfig:
        """CW's budget filled in where unset: CW_BUDGET for the model's input size."""
        binary, steps = CW_BUDGET[large_input(model)]
        return replace(
            self,
            cw_binary_steps=binary if self.cw_binary_steps is None else self.cw_binary_steps,
            cw_steps=steps if self.cw_steps is None else self.cw_steps,
        )

    def params(self) -> dict:
        return asdict(self)


@dataclass
class Boundary:
    """Per image: the closest adversarial point found, its L2 distance (NaN if none), success,
    which finder found it (FINDER_CODES), and each finder's own best distance."""

    point: Tensor
    distance: Tensor
    success: Tensor
    finder: Tensor
    by_finder: dict[str, Tensor] = field(default_factory=dict)


def radiusunit_l2(model: PixelModel) -> float:
    """The L2 norm of an L_inf perturbation of 1/255 of the range spread over all elements."""
    lo, hi = model.value_range
    return math.sqrt(math.prod(model.input_shape)) / 255 * (hi - lo)


def find_boundary(
    model: PixelModel, x: Tensor, target: Tensor, config: BoundaryConfig, ctx: Context
) -> Boundary:
    """The ensemble search: per image the closest adversarial candidate of all finders."""
    config = config.resolved(model)
    keys = ctx.keys_for(len(x))
    best = Boundary(
        x.clone(),
        torch.full((len(x),), math.inf, device=x.device),
        torch.zeros(len(x), dtype=torch.bool, device=x.device),
        torch.zeros(len(x), dtype=torch.int8, device=x.device),
    )
    found_radius = torch.full((len(x),), math.inf, device=x.device)
    for name in config.finders:
        if name == "cw":
            point, dist = _cw(model, x, target, config, ctx.micro_batch)
        else:  # a ladder tries only radii below the smallest an earlier ladder succeeded at
            attack = _pgd if name == "pgd" else _apgd
            point, dist, radius = _ladder(
                model, x, target, config, keys, ctx.micro_batch, attack, name, found_radius
            )
            found_radius = torch.minimum(found_radius, radius)
        best.by_finder[name] = torch.where(torch.isfinite(dist), dist, torch.nan)
        closer = dist < best.distance
        best.point[closer] = point[closer]
        best.distance = torch.where(closer, dist, best.distance)
        best.finder[closer] = FINDER_CODES[name]
    best.success = torch.isfinite(best.distance)
    if config.refine_steps and best.success.any():
        rows = torch.nonzero(best.success).flatten()
        best.point[rows] = _refine(
            model, x[rows], target[rows], best.point[rows], config.refine_steps, ctx.micro_batch
        )
        best.distance[rows] = row_norm(best.point[rows] - x[rows])
    best.distance = torch.where(best.success, best.distance, torch.nan)
    return best


TIE = 1e-6  # relative L2 difference below which two candidate points count as equally close


def _refine(model, x, target, point, steps: int, micro_batch: int) -> Tensor:
    """Move adversarial points closer to x, never farther: bisect the segment from x to the
    boundary, then, `steps` times, project x onto the boundary linearised there (the margin
    between the target and the point's class) and keep the projection, bisected, if it is
    adversarial and closer. Exact on linear models; it removes the overshoot a finder's last
    step leaves (CW's first Adam step alone moves about lr * sqrt(d) / 2 in L2)."""
    lo, hi = model.value_range
    point = _bisect(model, x, target, point, micro_batch)
    for _ in range(steps):
        rival = predictions(model, point, micro_batch)
        g, margin, _ = loss_gradient(model, point, _margin(target, rival), micro_batch)
        # the plane margin + g . (z - point) = 0; its closest point to x
        lam = (margin + (g * (x - point)).flatten(1).sum(1)) / g.flatten(1).pow(2).sum(1)
        plane = x - per_row(lam.clamp_min(0), x) * g
        beyond = (x + 1.01 * (plane - x)).clamp(lo, hi)  # just past the plane
        ok = predictions(model, beyond, micro_batch) != target
        candidate = _bisect(
            model, x, target, torch.where(per_row(ok, x), beyond, point), micro_batch
        )
        # closer by more than float noise: a tie kept, whatever the batch layout's rounding
        closer = ok & (row_norm(candidate - x) < row_norm(point - x) * (1 - TIE))
        point = torch.where(per_row(closer, x), candidate, point)
    return point


def _bisect(model, x, target, point, micro_batch, rounds: int = 20) -> Tensor:
    """The adversarial point of the segment x -> point (adversarial) closest to x, to
    2^-rounds of its length."""
    near = torch.zeros(len(x), device=x.device)
    far = torch.ones(len(x), device=x.device)
    for _ in range(rounds):
        mid = (near + far) / 2
        adv = predictions(model, x + per_row(mid, x) * (point - x), micro_batch) != target
        far, near = torch.where(adv, mid, far), torch.where(adv, near, mid)
    return x + per_row(far, x) * (point - x)


def _margin(target: Tensor, rival: Tensor):
    """Z_target - Z_rival per row."""
    return lambda z, rows: (z.gather(1, target[rows, None]) - z.gather(1, rival[rows, None]))[:, 0]


def _random_start(x: Tensor, eps: Tensor, keys: list[str], value_range) -> Tensor:
    """A uniform draw from the L2 ball of radius eps around each image, keyed by sample."""
    direction = unit_l2(keyed_normal(keys, tuple(x.shape[1:]), x.device))
    u = torch.stack(
        [torch.rand((), generator=generator(k + "/r", x.device), device=x.device) for k in keys]
    )
    radius = eps * u ** (1 / x[0].numel())
    return (x + direction * per_row(radius, x)).clamp(*value_range)


def _ladder(model, x, target, config, keys, micro_batch, attack, name, below):
    """Run `attack` at ascending radii, each image stopping at its first success; `below`
    caps the radii tried per image (APGD need not try radii where PGD already succeeded)."""
    unit = radiusunit_l2(model)
    point = x.clone()
    dist = torch.full((len(x),), math.inf, device=x.device)
    radius = torch.full((len(x),), math.inf, device=x.device)
    for r in config.radii:
        todo = torch.nonzero(torch.isinf(dist) & (r * unit < below)).flatten()
        if len(todo) == 0:
            continue
        eps = torch.full((len(todo),), r * unit, device=x.device)
        sub_keys = [f"{keys[int(i)]}/{name}/{r}" for i in todo]
        adv, ok = attack(model, x[todo], target[todo], eps, config, sub_keys, micro_batch)
        hit = todo[ok]
        point[hit] = adv[ok]
        dist[hit] = row_norm(adv[ok] - x[hit])
        radius[hit] = r * unit
    return point, dist, radius


def _pgd(model, x, target, eps, config, keys, micro_batch):
    """L2 PGD on the cross-entropy: random start in the ball, `pgd_steps` steps of
    pgd_step * eps / pgd_steps along the unit gradient; a row stops at its first adversarial
    iterate. Returns the iterates and which rows succeeded."""
    lo_hi = model.value_range
    step = config.pgd_step * eps / config.pgd_steps
    current = _random_start(x, eps, keys, lo_hi)
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(config.pgd_steps):
        rows = torch.nonzero(~done).flatten()
        if len(rows) == 0:
            break
        g, _, logits = loss_gradient(model, current[rows], cross_entropy(target[rows]), micro_batch)
        hit = logits.argmax(1) != target[rows]
        done[rows[hit]] = True
        go = rows[~hit]
        current[go] = l2_step(current[go], g[~hit], x[go], eps[go], step[go], lo_hi)
    rows = torch.nonzero(~done).flatten()
    if len(rows):
        done[rows] = predictions(model, current[rows], micro_batch) != target[rows]
    return current, done


def _apgd(model, x, target, eps, config, keys, micro_batch):
    """APGD (Croce & Hein 2020), L2, cross-entropy: momentum 0.75, step size halved at the
    checkpoints where progress stalled, restarting from the best point; a row stops at its
    first adversarial iterate."""
    lo_hi = model.value_range
    n = config.apgd_steps
    checkpoints = _apgd_checkpoints(n)
    eta = 2 * eps
    current = _random_start(x, eps, keys, lo_hi)
    prev = current.clone()
    g, loss, logits = loss_gradient(model, current, cross_entropy(target), micro_batch)
    done = logits.argmax(1) != target
    best_loss, best_point, best_g = loss.clone(), current.clone(), g.clone()
    improved = torch.zeros(len(x), device=x.device)
    last_eta, last_best = eta.clone(), best_loss.clone()
    last_check = 0
    for k in range(n):
        rows = torch.nonzero(~done).flatten()
        if len(rows) == 0:
            break
        z = l2_step(current[rows], g[rows], x[rows], eps[rows], eta[rows], lo_hi)
        a = 0.75 if k > 0 else 1.0
        new = current[rows] + a * (z - current[rows]) + (1 - a) * (current[rows] - prev[rows])
        new = project_l2(x[rows], new, eps[rows], lo_hi)
        prev[rows], current[rows] = current[rows], new
        g_new, loss_new, logits = loss_gradient(
            model, new, cross_entropy(target[rows]), micro_batch
        )
        g[rows] = g_new
        done[rows] = logits.argmax(1) != target[rows]
        improved[rows] += (loss_new > loss[rows]).float()
        loss[rows] = loss_new
        better = loss_new > best_loss[rows]
        best_loss[rows[better]] = loss_new[better]
        best_point[rows[better]] = new[better]
        best_g[rows[better]] = g_new[better]
        if k + 1 in checkpoints:
            span = k + 1 - last_check
            stall = (improved < 0.75 * span) | ((eta == last_eta) & (best_loss == last_best))
            stall &= ~done
            last_eta, last_best = eta.clone(), best_loss.clone()
            eta = torch.where(stall, eta / 2, eta)
            current[stall], g[stall] = best_point[stall], best_g[stall]
            improved.zero_()
            last_check = k + 1
    return current, done


def _apgd_checkpoints(n: int) -> set[int]:
    """Iterations ceil(p_j n) with p_0 = 0, p_1 = 0.22, p_j+1 = p_j + max(p_j - p_j-1 - 0.03,
    0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {math.ceil(q * n) for q in p[1:] if q <= 1}


def _cw(model, x, target, config, micro_batch):
    """Carlini-Wagner L2 (tanh box, Adam, binary search over the constant, as foolbox); each
    row keeps its smallest adversarial perturbation and, within a binary step, stops once its
    loss no longer falls (checked every tenth of the steps, foolbox's abort_early). Returns
    points and distances (inf where none was found)."""
    lo, hi = model.value_range
    n = len(x)
    const = torch.full((n,), config.cw_const, device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), math.inf, device=x.device)
    best_point, best_dist = x.clone(), torch.full((n,), math.inf, device=x.device)
    start = torch.atanh(((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    check = max(1, config.cw_steps // 10)
    for _ in range(config.cw_binary_steps):
        w, m1, m2 = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        last = torch.full((n,), math.inf, device=x.device)
        for t in range(1, config.cw_steps + 1):
            rows = torch.nonzero(active).flatten()
            if len(rows) == 0:
                break
            g, loss, adv, dist, hit = _cw_gradient(
                model, x[rows], target[rows], w[rows], const[rows], (lo, hi), micro_batch
            )
            success[rows] |= hit
            closer = hit & (dist < best_dist[rows])
            best_dist[rows[closer]] = dist[closer]
            best_point[rows[closer]] = adv[closer]
            w[rows], m1[rows], m2[rows], steps[rows] = adam(
                w[rows], g, m1[rows], m2[rows], steps[rows], config.cw_lr
            )
            if t % check == 0:
                stalled = loss > 0.9999 * last[rows]
                active[rows[stalled]] = False
                last[rows] = loss
        upper = torch.where(success, torch.minimum(upper, const), upper)
        lower = torch.where(success, lower, torch.maximum(lower, const))
        const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
    return best_point, best_dist


def _cw_gradient(model, x, target, w, const, value_range, micro_batch):
    """CW's loss ||x' - x||^2 + c max(Z_c - max_j!=c Z_j, 0) at x' = tanh box(w), per row:
    gradient w.r.t. w, loss, x', ||x' - x|| and whether x' is adversarial."""
    lo, hi = value_range
    out = {k: [] for k in ("g", "loss", "adv", "dist", "hit")}
    for s in range(0, len(x), micro_batch):
        sl = slice(s, s + micro_batch)
        with torch.enable_grad():
            wb = w[sl].detach().requires_grad_(True)
            adv = lo + (hi - lo) * (torch.tanh(wb) + 1) / 2
            logits = model(adv)
            real = logits.gather(1, target[sl, None]).squeeze(1)
            rival = logits.scatter(1, target[sl, None], -math.inf).amax(1)
            sq = (adv - x[sl]).flatten(1).pow(2).sum(1)
            loss = sq + const[sl] * (real - rival).clamp_min(0)
            (g,) = torch.autograd.grad(loss.sum(), wb)
        out["g"].append(g)
        out["loss"].append(loss.detach())
        out["adv"].append(adv.detach())
        out["dist"].append(sq.detach().sqrt())
        out["hit"].append(logits.detach().argmax(1) != target[sl])
    return tuple(torch.cat(out[k]) for k in ("g", "loss", "adv", "dist", "hit"))

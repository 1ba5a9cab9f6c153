"""Boundary attributions (paper big-*.txt, METHODS.md): BSM and BIG from the boundary search's
points, and AGI's walk towards every false class. A sample whose search found no adversarial
point gets an empty (NaN) BSM and BIG map, never one computed from a non-adversarial point."""

from __future__ import annotations

import torch

from ..engine.keys import generator
from ..engine.optim import per_row
from ..inputs.models import PixelModel
from .boundary_search import Boundary
from .context import Context
from .gradients import grad, ig
from .registry import register

Tensor = torch.Tensor


@register("bsm", family="boundary", boundary=True, references=("grad",))
def bsm(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    ctx: Context | None = None,
    *,
    boundary: Boundary,
) -> Tensor:
    """Boundary-based saliency map: the gradient of the original class's logit at the boundary
    point; NaN for samples whose search failed."""
    out = grad(model, boundary.point, target, ctx or Context())
    return torch.where(per_row(boundary.success, out), out, torch.nan)


@register("big", family="boundary", boundary=True, references=("ig",))
def big(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    ctx: Context | None = None,
    *,
    boundary: Boundary,
    n_steps: int = 20,
) -> Tensor:
    """Boundary-based integrated gradients: IG from the boundary point to x with the `ig`
    quadrature (Gauss-Legendre), 20 steps; NaN for samples whose search failed."""
    out = ig(model, x, target, ctx or Context(), n_steps=n_steps, baseline=boundary.point)
    return torch.where(per_row(boundary.success, out), out, torch.nan)


@register("agi", family="boundary", references=("ig",))
def agi(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    ctx: Context | None = None,
    step: float = 0.05,
    max_steps: int = 20,
    max_classes: int = 20,
    anchored: bool = False,
) -> Tensor:
    """Adversarial gradient integration. For each false class t (all when there are at most
    `max_classes`, else that many drawn with the sample's generator) walk from x by steps of
    `step` of the range along sign(grad p_t), clipped to the range, until the prediction is t
    or `max_steps` steps are spent, accumulating -grad p_c(x_k) * (x_k+1 - x_k); sum over the
    classes. `anchored` reproduces the authors' code, where every step starts again from x
    (x_k+1 = x + step sign(grad p_t(x_k)), accumulating -grad p_c(x_k) * (x_k+1 - x))."""
    ctx = ctx or Context()
    lo, hi = model.value_range
    classes = _false_classes(model.num_classes, target, max_classes, ctx.keys_for(len(x)))
    n_classes = classes.shape[1]
    image = torch.arange(len(x), device=x.device).repeat_interleave(n_classes)
    rival, own = classes.flatten(), target[image]
    current = x[image].clone()
    active = torch.ones(len(image), dtype=torch.bool, device=x.device)
    out = torch.zeros_like(x)
    for _ in range(max_steps):
        rows = torch.nonzero(active).flatten()
        if len(rows) == 0:
            break
        g_rival, g_own, pred = _probability_gradients(
            model, current[rows], rival[rows], own[rows], ctx.micro_batch
        )
        reached = pred == rival[rows]
        active[rows[reached]] = False
        rows, g_rival, g_own = rows[~reached], g_rival[~reached], g_own[~reached]
        origin = x[image[rows]] if anchored else current[rows]
        moved = (origin + step * (hi - lo) * g_rival.sign()).clamp(lo, hi)
        out.index_add_(0, image[rows], -g_own * (moved - origin))
        current[rows] = moved
    return out


def _false_classes(n: int, target: Tensor, most: int, keys: list[str]) -> Tensor:
    """(B, T) false classes per image: all n - 1, or `most` drawn with the sample's key."""
    rows = []
    for t, key in zip(target.tolist(), keys, strict=True):
        false = [c for c in range(n) if c != t]
        if len(false) > most:
            order = torch.randperm(len(false), generator=generator(f"{key}/agi-classes", "cpu"))
            false = sorted(false[i] for i in order[:most].tolist())
        rows.append(false)
    return torch.tensor(rows, device=target.device)


def _probability_gradients(model, x, rival, own, micro_batch):
    """Per row: grad p_rival, grad p_own (softmax probabilities) and the prediction."""
    g_rival, g_own, pred = [], [], []
    for s in range(0, len(x), micro_batch):
        sl = slice(s, s + micro_batch)
        with torch.enable_grad():
            xb = x[sl].detach().requires_grad_(True)
            logits = model(xb)
            p = logits.softmax(1)
            (gr,) = torch.autograd.grad(p.gather(1, rival[sl, None]).sum(), xb, retain_graph=True)
            (go,) = torch.autograd.grad(p.gather(1, own[sl, None]).sum(), xb)
        g_rival.append(gr)
        g_own.append(go)
        pred.append(logits.detach().argmax(1))
    return torch.cat(g_rival), torch.cat(g_own), torch.cat(pred)

"""Robustness to attacks: sensitivity S_S (DANCE ICLR eq. 9), rank similarity between clean
and attacked maps, and RelEx's class retrieval under the prediction attack."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..engine.batching import predictions
from .catalogue import Cell, Family, Section, Variable, register
from .masks import (
    NAN,
    as_maps,
    check_like,
    check_same,
    check_target,
    masked_input,
    metric_baseline,
    pixel_count,
    pixel_order,
    ratio,
    saliency_mask,
    top_fraction,
)


def sensitivity(
    e: Tensor,
    e_adv: Tensor,
    x: Tensor,
    x_adv: Tensor,
    fraction: float = 0.2,
    keys: list[str] | None = None,
) -> Tensor:
    """S_S = ||E_bin(x) - E_bin(x')||_2 / ||x - x'||_2 (B,), E_bin the per-pixel binary top-K
    map (the numerator is sqrt of the number of pixels that entered or left the top K; both
    maps break ties in the sample's one keyed order); NaN where x' = x."""
    check_same(e, e_adv, "maps of x and x'")
    check_same(x, x_adv, "x and x'")
    a, b = top_fraction(e, fraction, keys), top_fraction(e_adv, fraction, keys)
    check_like(x, a, "map")
    num = (a - b).flatten(1).norm(dim=1)
    den = (x - x_adv).flatten(1).norm(dim=1)
    return ratio(num.to(den.dtype), den)


def class_retrieval(
    model: nn.Module,
    x_adv: Tensor,
    mask: Tensor,
    target: Tensor,
    baseline: Tensor | float | str | None = None,
    micro_batch: int = 64,
) -> Tensor:
    """Whether argmax F(m * x' + (1 - m) * b) = c (B,) bool (RelEx's class retrieval)."""
    check_target(x_adv, target)
    inputs = masked_input(x_adv, mask, metric_baseline(model, baseline, x_adv))
    return predictions(model, inputs, micro_batch) == target


def _ranks(v: Tensor) -> Tensor:
    """1-based ranks along dim 1 (float64), tied values sharing their average rank."""
    n = v.shape[1]
    values, order = v.double().sort(dim=1, stable=True)
    idx = torch.arange(n, device=v.device).expand_as(order)
    first = torch.ones_like(values, dtype=torch.bool)
    first[:, 1:] = values[:, 1:] != values[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, idx, 0).cummax(1).values
    end = torch.where(last, idx, n - 1).flip(1).cummin(1).values.flip(1)
    mean_rank = (start + end).double() / 2 + 1
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rho between the per-sample flattened maps (B,), average ranks for ties
    (as scipy.stats.spearmanr); NaN where a map is constant or holds a NaN."""
    check_same(a, b, "spearman")
    a, b = a.flatten(1), b.flatten(1)
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    rho = ratio((ra * rb).sum(1), ((ra * ra).sum(1) * (rb * rb).sum(1)).sqrt())
    bad = a.isnan().any(1) | b.isnan().any(1)
    return torch.where(bad, NAN, rho).to(a.dtype if a.is_floating_point() else torch.float64)


def topk_intersection(
    a: Tensor, b: Tensor, fraction: float = 0.02, keys: list[str] | None = None
) -> Tensor:
    """|top-k(a) n top-k(b)| / k (B,) over per-pixel scores (channel-summed |map|), k =
    round(fraction * H * W) >= 1; ties in the sample's keyed order, the same for a and b."""
    check_same(a, b, "topk_intersection")
    sa, sb = (as_maps(m).abs().sum(1).flatten(1) for m in (a, b))
    k = pixel_count(fraction, sa.shape[1])
    hits = torch.zeros_like(sa, dtype=torch.bool)
    ta = hits.scatter(1, pixel_order(sa, True, keys)[:, :k], True)
    tb = hits.scatter(1, pixel_order(sb, True, keys)[:, :k], True)
    return (ta & tb).sum(1).to(sa.dtype) / k


def _sensitivity(cell: Cell) -> dict[str, Tensor]:
    x_adv, e_adv = cell.source.attacked(cell.attack, cell.method.name)
    return {"sensitivity": sensitivity(cell.e, e_adv, cell.x, x_adv, keys=cell.keys)}


def _rank(cell: Cell) -> dict[str, Tensor]:
    e = cell.e
    _, e_adv = cell.source.attacked(cell.attack, cell.method.name)
    return {
        "spearman": spearman(e.abs().sum(1), e_adv.abs().sum(1)),
        "topk_intersection": topk_intersection(e, e_adv, keys=cell.keys),
    }


def _retrieval(cell: Cell) -> dict[str, Tensor]:
    x_adv, e_adv = cell.source.attacked(cell.attack, cell.method.name)
    r, mb, b = x_adv.shape[1], cell.micro_batch, cell.baseline
    flat_x, flat_t = x_adv.flatten(0, 1), cell.target.repeat_interleave(r)
    m_adv = saliency_mask(e_adv.flatten(0, 1), cell.is_mask)
    m_0 = saliency_mask(cell.e, cell.is_mask).repeat_interleave(r, 0)
    return {
        "retrieval_adv": class_retrieval(cell.model, flat_x, m_adv, flat_t, b, mb).view(-1, r),
        "retrieval_clean": class_retrieval(cell.model, flat_x, m_0, flat_t, b, mb).view(-1, r),
    }


ROBUSTNESS = Section.ROBUSTNESS
register(
    Family(
        "sensitivity",
        (
            Variable(
                "sensitivity",
                "Sensitivity S_S: |E_bin(x) - E_bin(x')| / |x - x'|",
                False,
                headline=True,
            ),
        ),
        _sensitivity,
        needs="attacks",
        dim="attack",
        section=ROBUSTNESS,
    )
)
register(
    Family(
        "rank",
        (
            Variable(
                "spearman", "Spearman rank correlation of clean and attacked maps", True, True
            ),
            Variable("topk_intersection", "Top-2% intersection of clean and attacked maps", True),
        ),
        _rank,
        needs="attacks",
        dim="attack",
        section=ROBUSTNESS,
    )
)
register(
    Family(
        "retrieval",
        (
            Variable("retrieval_adv", "Class retrieval with the attacked image's mask", True, True),
            Variable("retrieval_clean", "Class retrieval with the clean image's mask", True),
        ),
        _retrieval,
        needs="prediction",
        dim="radius",
        section=ROBUSTNESS,
    )
)

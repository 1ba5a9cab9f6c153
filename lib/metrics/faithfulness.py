"""Faithfulness: fidelity S_F (DANCE ICLR eq. 8) and RelEx's deletion and preservation."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import SalauditError
from .catalogue import Cell, Family, Variable, register
from .masks import (
    as_maps,
    check_like,
    check_target,
    masked_input,
    metric_baseline,
    pixel_order,
    ratio,
    saliency_mask,
    target_log_probs,
    top_fraction,
)


def fidelity(
    model: nn.Module,
    x: Tensor,
    e: Tensor,
    target: Tensor,
    baseline: Tensor | float | str | None = None,
    fraction: float = 0.2,
    micro_batch: int = 64,
    keys: list[str] | None = None,
) -> Tensor:
    """S_F = -log(p_c(E_bin * x + (1 - E_bin) * b) / p_c(x)) (B,), E_bin the binary top-K map
    (ties in the samples' keyed order); computed as a difference of log-softmax values.
    `baseline`: as `metric_baseline` takes it (None: `mean`, the model's colour b)."""
    check_target(x, target)
    keep = top_fraction(e, fraction, keys)
    check_like(x, keep, "map")
    rows = torch.cat([x, masked_input(x, keep, metric_baseline(model, baseline, x))])
    targets = torch.cat([target, target])
    logp = target_log_probs(
        model, len(rows), lambda r: (rows[r], targets[r]), micro_batch, x.device
    )
    return logp[: len(x)] - logp[len(x) :]


def _removal_counts(n: int, step_fraction: float) -> list[int]:
    """Pixels removed after each step 0..S: round(k * step_fraction * n), the last all n."""
    if not 0 < step_fraction <= 1:
        raise SalauditError(f"step_fraction must be in (0, 1], got {step_fraction}")
    steps = math.ceil(1 / step_fraction - 1e-9)
    counts = [min(n, math.floor(k * step_fraction * n + 0.5)) for k in range(steps + 1)]
    counts[-1] = n
    return counts


def _positions(score: Tensor, descending: bool, keys: list[str] | None) -> Tensor:
    """Each pixel's position in the removal order (B, N), ties in the keyed order."""
    order = pixel_order(score, descending, keys)
    pos = torch.arange(score.shape[1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def deletion_preservation(
    model: nn.Module,
    x: Tensor,
    mask: Tensor,
    target: Tensor,
    baseline: Tensor | float | str | None = None,
    step_fraction: float = 1 / 64,
    micro_batch: int = 64,
    keys: list[str] | None = None,
) -> dict[str, Tensor]:
    """RelEx's deletion D and preservation P (B,): pixels set to b in decreasing (D) or
    increasing (P) mask order (ties in the samples' keyed order), step_fraction of the pixels
    per step, p_c after each step (curves (B, S + 1) from nothing to everything removed) and
    the trapezoid area under p_c over the removed fraction in [0, 1]; R with
    1/R = (1/P + 1/(1 - D)) / 2 (0 where P = 0 or D = 1). All steps of all images go through
    the model as one stream of micro-batches."""
    check_target(x, target)
    m = as_maps(mask, "mask")
    check_like(x, m, "mask")
    n_img, _, h, w = x.shape
    counts = torch.tensor(_removal_counts(h * w, step_fraction), device=x.device)
    n_pts = len(counts)
    score = m.mean(1).flatten(1)
    positions = torch.stack([_positions(score, True, keys), _positions(score, False, keys)])
    base = metric_baseline(model, baseline, x).expand_as(x)

    def build(rows: Tensor) -> tuple[Tensor, Tensor]:
        which, rest = rows // (n_img * n_pts), rows % (n_img * n_pts)
        i, k = rest // n_pts, rest % n_pts
        removed = (positions[which, i] < counts[k, None]).view(-1, 1, h, w)
        return torch.where(removed, base[i], x[i]), target[i]

    n_rows = 2 * n_img * n_pts
    p = target_log_probs(model, n_rows, build, micro_batch, x.device).exp()
    deletion_curve, preservation_curve = p.view(2, n_img, n_pts)
    frac = counts.to(p.dtype) / (h * w)
    d = torch.trapezoid(deletion_curve, frac, dim=1)
    pres = torch.trapezoid(preservation_curve, frac, dim=1)
    r = torch.nan_to_num(ratio(2 * pres * (1 - d), pres + 1 - d), nan=0.0)
    return {
        "deletion": d,
        "preservation": pres,
        "r_score": r,
        "deletion_curve": deletion_curve,
        "preservation_curve": preservation_curve,
    }


def _fidelity(cell: Cell) -> dict[str, Tensor]:
    return {
        "fidelity": fidelity(
            cell.model,
            cell.x,
            cell.e,
            cell.target,
            cell.baseline,
            micro_batch=cell.micro_batch,
            keys=cell.keys,
        )
    }


def _deletion(cell: Cell) -> dict[str, Tensor]:
    mask = saliency_mask(cell.e, cell.is_mask)
    out = deletion_preservation(
        cell.model,
        cell.x,
        mask,
        cell.target,
        cell.baseline,
        micro_batch=cell.micro_batch,
        keys=cell.keys,
    )
    return {k: out[k] for k in ("deletion", "preservation", "r_score")}


register(
    Family(
        "fidelity",
        (
            Variable(
                "fidelity",
                "Fidelity S_F: -log p_c(top 20% kept) / p_c(x)",
                False,
                headline=True,
                caption=True,
                short="S_F",
            ),
        ),
        _fidelity,
    )
)
register(
    Family(
        "deletion",
        (
            Variable("deletion", "Deletion D: area under p_c as the most salient pixels go", False),
            Variable(
                "preservation",
                "Preservation P: area under p_c as the least salient pixels go",
                True,
            ),
            Variable("r_score", "R: harmonic mean of P and 1 - D", True, headline=True),
        ),
        _deletion,
    )
)

"""Localisation against boxes: BIG's Loc, energy game, positive percentage and concentration
(appendix B.1), and DANCE's box accuracy by thresholding (A17)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import SalauditError
from .catalogue import Cell, Family, Section, Variable, register
from .masks import NAN, as_maps, ratio

THRESHOLDINGS = ("value", "energy", "mean")


def _box_mask(box: Tensor, b: int, h: int, w: int, device: torch.device) -> Tensor:
    """(B, H, W) bool: inside the half-open box (y0, x0, y1, x1) of each sample."""
    box = torch.as_tensor(box, device=device)
    if box.shape != (b, 4):
        raise SalauditError(
            f"boxes must be (B, 4) = ({b}, 4) as y0 x0 y1 x1, got {tuple(box.shape)}"
        )
    y0, x0, y1, x1 = (box[:, i, None, None] for i in range(4))
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def localisation(e: Tensor, box: Tensor) -> dict[str, Tensor]:
    """BIG's localisation metrics (appendix B.1) on a = e summed over channels, each (B,).

    P = {a > 0}, B the half-open box: "loc" |P n B| / (|B| + |P minus B|) (NaN for an empty
    box); "energy_game" sum_B a+ / sum a+ (NaN if no positive attribution); "positive_percentage"
    sum_B a+ / sum_B |a| (NaN if a is 0 on the box); "concentration" sum_{i in B} â_i / (1 +
    d(i, centre of mass)), â = |a| / sum |a|, the centre of mass of â over the image, d the
    Euclidean distance in pixels between pixel indices (NaN for an all-zero map).
    """
    a = as_maps(e).sum(1)
    n, h, w = a.shape
    inbox = _box_mask(box, n, h, w, a.device)
    pos = a > 0
    dims = (1, 2)
    loc = ratio(
        (pos & inbox).sum(dims).to(a.dtype),
        (inbox.sum(dims) + (pos & ~inbox).sum(dims)).to(a.dtype),
    )
    ap = a.clamp_min(0)
    in_pos = (ap * inbox).sum(dims)
    energy = ratio(in_pos, ap.sum(dims))
    positive = ratio(in_pos, (a.abs() * inbox).sum(dims))
    mass = a.abs()
    total = mass.sum(dims, keepdim=True)
    share = mass / torch.where(total > 0, total, torch.ones_like(total))
    ys = torch.arange(h, device=a.device, dtype=a.dtype)[None, :, None]
    xs = torch.arange(w, device=a.device, dtype=a.dtype)[None, None, :]
    cy = (share * ys).sum(dims, keepdim=True)
    cx = (share * xs).sum(dims, keepdim=True)
    dist = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
    conc = (share * inbox / (1 + dist)).sum(dims)
    conc = torch.where(total.view(-1) > 0, conc, NAN)
    out = {"loc": loc, "energy_game": energy, "positive_percentage": positive}
    out["concentration"] = conc
    has_box = inbox.any(dims)  # a sample without a box, (-1, -1, -1, -1), scores NaN
    return {k: torch.where(has_box, v, NAN) for k, v in out.items()}


def _kept_pixels(h: Tensor, thresholding: str, threshold: float) -> Tensor:
    """(B, N) bool: the pixels of the non-negative maps h (B, N) that survive thresholding."""
    if thresholding == "value":
        lo = h.amin(1, keepdim=True)
        keep = h - lo >= threshold * (h.amax(1, keepdim=True) - lo)
    elif thresholding == "mean":
        keep = h >= threshold * h.mean(1, keepdim=True)
    elif thresholding == "energy":
        values = h.sort(dim=1, descending=True).values
        cum = values.cumsum(1)
        short = (cum < threshold * cum[:, -1:]).sum(1, keepdim=True)
        keep = h >= values.gather(1, short.clamp_max(h.shape[1] - 1))
    else:
        raise SalauditError(
            f"unknown thresholding {thresholding!r}; valid: {', '.join(THRESHOLDINGS)}"
        )
    return keep & (h > 0)


def _tight_box(keep: Tensor) -> Tensor:
    """(B, 4) half-open tight box of the True pixels of (B, H, W); the whole image if none."""
    n, h, w = keep.shape
    rows, cols = keep.any(2), keep.any(1)
    y0 = rows.int().argmax(1)
    y1 = h - rows.flip(1).int().argmax(1)
    x0 = cols.int().argmax(1)
    x1 = w - cols.flip(1).int().argmax(1)
    box = torch.stack([y0, x0, y1, x1], 1)
    whole = torch.tensor([0, 0, h, w], device=keep.device).expand_as(box)
    return torch.where(rows.any(1, keepdim=True), box, whole)


def threshold_box(e: Tensor, thresholding: str = "value", threshold: float = 0.25) -> Tensor:
    """The box (B, 4) (y0, x0, y1, x1, half-open) that DANCE A17 extracts from a map, with the
    thresholding strategies of Fong & Vedaldi (2017, "Interpretable explanations of black boxes
    by meaningful perturbation", sec. 5.2) as their released code applies them, on h = |E|
    summed over channels (alpha = threshold):

    - "value": pixels with h - min h >= alpha * (max h - min h);
    - "energy": the fewest top pixels holding at least alpha of sum h (all pixels tied with the
      last one included; their code stops one pixel short of alpha);
    - "mean": pixels with h >= alpha * mean h.

    Only pixels with h > 0 count; the box is the tight box of all kept pixels (not of the
    largest connected component), the whole image when none is kept.
    """
    h = as_maps(e).abs().sum(1)
    keep = _kept_pixels(h.flatten(1), thresholding, threshold)
    return _tight_box(keep.view(h.shape))


def box_iou(p: Tensor, g: Tensor) -> Tensor:
    """Intersection over union of half-open boxes (B, 4) y0 x0 y1 x1 (0 for empty unions)."""
    p, g = p.double(), torch.as_tensor(g, device=p.device).double()
    ih = (torch.minimum(p[:, 2], g[:, 2]) - torch.maximum(p[:, 0], g[:, 0])).clamp_min(0)
    iw = (torch.minimum(p[:, 3], g[:, 3]) - torch.maximum(p[:, 1], g[:, 1])).clamp_min(0)
    inter = ih * iw
    area_p = (p[:, 2] - p[:, 0]).clamp_min(0) * (p[:, 3] - p[:, 1]).clamp_min(0)
    area_g = (g[:, 2] - g[:, 0]).clamp_min(0) * (g[:, 3] - g[:, 1]).clamp_min(0)
    return torch.nan_to_num(ratio(inter, area_p + area_g - inter), nan=0.0)


def box_accuracy(
    e: Tensor, box: Tensor, thresholding: str = "value", threshold: float = 0.25
) -> Tensor:
    """Whether the box `threshold_box` extracts overlaps the true box with IoU > 0.5 (B,) bool
    (DANCE A17, after Fong & Vedaldi 2017)."""
    e = as_maps(e)
    _box_mask(box, e.shape[0], 1, 1, e.device)  # shape check
    return box_iou(threshold_box(e, thresholding, threshold), box) > 0.5


def _localisation(cell: Cell) -> dict[str, Tensor]:
    return localisation(cell.e, cell.source.boxes())


def _box_accuracy(cell: Cell) -> dict[str, Tensor]:
    box = cell.source.boxes()
    hit = torch.stack([box_accuracy(cell.e, box, t) for t in cell.labels], 1).float()
    has_box = (box[:, 2:] > box[:, :2]).all(1, keepdim=True)  # no box: NaN, not a miss
    return {"box_accuracy": torch.where(has_box, hit, NAN)}


register(
    Family(
        "localisation",
        (
            Variable("loc", "Loc: |P n B| / (|B| + |P \\ B|)", True, headline=True),
            Variable(
                "energy_game",
                "Energy game: share of positive attribution inside the box",
                True,
                headline=True,
            ),
            Variable("positive_percentage", "Positive percentage inside the box", True),
            Variable(
                "concentration", "Concentration around the centre of mass inside the box", True
            ),
        ),
        _localisation,
        needs="boxes",
        section=Section.LOCALISATION,
    )
)
register(
    Family(
        "box_accuracy",
        (Variable("box_accuracy", "Box accuracy: IoU of the thresholded map's box > 0.5", True),),
        _box_accuracy,
        needs="boxes",
        dim="threshold",
        labels=lambda model: list(THRESHOLDINGS),
        section=Section.LOCALISATION,
    )
)

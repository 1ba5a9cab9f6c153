"""The metrics of METHODS.md ("From maps to masks", "Metrics").

Every metric is computed per sample and returned as a tensor with the batch first, on the input's
device; nothing is normalised across a batch. Model calls go through micro-batches of rows.

Conventions where METHODS.md is silent:
- boxes are (y0, x0, y1, x1) in pixels, half-open (rows y0..y1-1, columns x0..x1-1), as
  `salaudit.scenes` stores them;
- the binary top-K map is one value per pixel (B, 1, H, W), broadcast over channels where it
  masks an image; the sensitivity's numerator is therefore sqrt(number of pixels whose
  membership changed);
- ties in a pixel order (top-K maps, deletion/preservation) go to the lower flat index.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batching import predictions, seed_of
from .decoys import representation_difference
from .errors import SalauditError
from .models import PixelModel

# explain(model, x, target) -> map of x's shape
Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]
THRESHOLDINGS = ("value", "energy", "mean")
NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# shapes and small helpers


def _maps(e: Tensor, name: str = "map") -> Tensor:
    """A batch of maps as (B, C, H, W); (B, H, W) gains a channel axis."""
    if e.ndim == 3:
        return e[:, None]
    if e.ndim != 4:
        raise SalauditError(f"{name} must be (B, C, H, W) or (B, H, W), got {tuple(e.shape)}")
    return e


def _check_like(x: Tensor, m: Tensor, name: str) -> None:
    """`m` (B, 1 or C, H, W) must fit the images x (B, C, H, W)."""
    if x.ndim != 4:
        raise SalauditError(f"images must be (B, C, H, W), got {tuple(x.shape)}")
    if m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:] or m.shape[1] not in (1, x.shape[1]):
        raise SalauditError(
            f"{name} of shape {tuple(m.shape)} does not fit images of shape {tuple(x.shape)}"
        )


def _check_same(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise SalauditError(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")


def _check_target(x: Tensor, target: Tensor) -> None:
    if target.shape != (x.shape[0],):
        raise SalauditError(
            f"target of shape {tuple(target.shape)} does not fit {x.shape[0]} images"
        )


def _count(fraction: float, n: int) -> int:
    """round(fraction * n), half up, at least 1 and at most n."""
    if not 0 < fraction <= 1:
        raise SalauditError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, min(n, math.floor(fraction * n + 0.5)))


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, NaN where den is 0."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), NAN)


def _quantile(v: Tensor, q: float) -> Tensor:
    """Per-row q-quantile of (B, N) with linear interpolation (numpy's default)."""
    s = v.sort(dim=1).values
    pos = q * (s.shape[1] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, s.shape[1] - 1)
    return torch.lerp(s[:, lo], s[:, hi], pos - lo)


def _order(score: Tensor, descending: bool) -> Tensor:
    """Flat pixel indices per row sorted by score; ties go to the lower index."""
    return score.argsort(dim=1, descending=descending, stable=True)


def _baseline(model: nn.Module, baseline: Tensor | float | None, x: Tensor) -> Tensor:
    """The baseline colour as a tensor broadcastable to x: None takes the model's baseline
    colour b; a (C,) vector becomes (1, C, 1, 1)."""
    if baseline is None:
        baseline = model.baseline_colour
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if b.ndim == 1:
        b = b.view(1, -1, 1, 1)
    try:
        torch.broadcast_shapes(b.shape, x.shape)
    except RuntimeError:
        raise SalauditError(
            f"baseline of shape {tuple(b.shape)} does not broadcast to images {tuple(x.shape)}"
        ) from None
    return b


def _target_log_probs(
    model: nn.Module,
    n_rows: int,
    build: Callable[[Tensor], tuple[Tensor, Tensor]],
    micro_batch: int,
    device: torch.device,
) -> Tensor:
    """log p_target of rows 0..n_rows-1, whose (inputs, targets) `build(rows)` makes, in
    micro-batches without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, n_rows, micro_batch):
            rows = torch.arange(start, min(start + micro_batch, n_rows), device=device)
            inputs, target = build(rows)
            logp = F.log_softmax(model(inputs).float(), dim=1)
            out.append(logp.gather(1, target[:, None]).squeeze(1))
    return torch.cat(out) if out else torch.empty(0, device=device)


# ---------------------------------------------------------------------------------------------
# from maps to masks


def saliency_mask(e: Tensor, is_mask: bool = False) -> Tensor:
    """The saliency mask in [0, 1] per pixel (B, 1, H, W): a mask (RelEx) as it is (mean over
    channels if it has several); any other map |E| summed over channels, clipped at its
    per-sample 99th percentile and divided by it (an all-zero map stays 0)."""
    e = _maps(e)
    if is_mask:
        return e.mean(1, keepdim=True) if e.shape[1] > 1 else e
    a = e.abs().sum(1, keepdim=True)
    q = _quantile(a.flatten(1), 0.99).view(-1, 1, 1, 1)
    ok = q > 0
    return torch.where(ok, a.minimum(q) / torch.where(ok, q, torch.ones_like(q)), 0.0)


def top_fraction(e: Tensor, fraction: float) -> Tensor:
    """The binary top-K map (B, 1, H, W) in {0, 1}: the round(fraction * H * W) pixels (at
    least 1) with the largest max-over-channels |E|; ties go to the lower flat index."""
    e = _maps(e)
    b, _, h, w = e.shape
    score = e.abs().amax(1).flatten(1)
    top = _order(score, descending=True)[:, : _count(fraction, h * w)]
    dtype = e.dtype if e.is_floating_point() else torch.get_default_dtype()
    return (
        torch.zeros(score.shape, dtype=dtype, device=e.device)
        .scatter_(1, top, 1.0)
        .view(b, 1, h, w)
    )


def masked_input(x: Tensor, mask: Tensor, baseline: Tensor | float) -> Tensor:
    """mask * x + (1 - mask) * b, a (B, 1, H, W) mask broadcast over channels."""
    m = _maps(mask, "mask")
    _check_like(x, m, "mask")
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if b.ndim == 1:
        b = b.view(1, -1, 1, 1)
    return m * x + (1 - m) * b


# ---------------------------------------------------------------------------------------------
# fidelity, sensitivity, class retrieval, deletion and preservation


def fidelity(
    model: nn.Module,
    x: Tensor,
    e: Tensor,
    target: Tensor,
    baseline: Tensor | float | None = None,
    fraction: float = 0.2,
    micro_batch: int = 64,
) -> Tensor:
    """S_F = -log(p_c(E_bin * x + (1 - E_bin) * b) / p_c(x)) (B,), E_bin the binary top-K map;
    computed as a difference of log-softmax values. `baseline` None: the model's colour b."""
    _check_target(x, target)
    keep = top_fraction(e, fraction)
    _check_like(x, keep, "map")
    rows = torch.cat([x, masked_input(x, keep, _baseline(model, baseline, x))])
    targets = torch.cat([target, target])
    logp = _target_log_probs(
        model, len(rows), lambda r: (rows[r], targets[r]), micro_batch, x.device
    )
    return logp[: len(x)] - logp[len(x) :]


def sensitivity(
    e: Tensor, e_adv: Tensor, x: Tensor, x_adv: Tensor, fraction: float = 0.2
) -> Tensor:
    """S_S = ||E_bin(x) - E_bin(x')||_2 / ||x - x'||_2 (B,), E_bin the per-pixel binary top-K
    map (the numerator is sqrt of the number of pixels that entered or left the top K); NaN
    where x' = x."""
    _check_same(e, e_adv, "maps of x and x'")
    _check_same(x, x_adv, "x and x'")
    a, b = top_fraction(e, fraction), top_fraction(e_adv, fraction)
    _check_like(x, a, "map")
    num = (a - b).flatten(1).norm(dim=1)
    den = (x - x_adv).flatten(1).norm(dim=1)
    return _ratio(num.to(den.dtype), den)


def class_retrieval(
    model: nn.Module,
    x_adv: Tensor,
    mask: Tensor,
    target: Tensor,
    baseline: Tensor | float | None = None,
    micro_batch: int = 64,
) -> Tensor:
    """Whether argmax F(m * x' + (1 - m) * b) = c (B,) bool (RelEx's class retrieval)."""
    _check_target(x_adv, target)
    inputs = masked_input(x_adv, mask, _baseline(model, baseline, x_adv))
    return predictions(model, inputs, micro_batch) == target


def _removal_counts(n: int, step_fraction: float) -> list[int]:
    """Pixels removed after each step 0..S: round(k * step_fraction * n), the last all n."""
    if not 0 < step_fraction <= 1:
        raise SalauditError(f"step_fraction must be in (0, 1], got {step_fraction}")
    steps = math.ceil(1 / step_fraction - 1e-9)
    counts = [min(n, math.floor(k * step_fraction * n + 0.5)) for k in range(steps + 1)]
    counts[-1] = n
    return counts


def _positions(score: Tensor, descending: bool) -> Tensor:
    """Each pixel's position in the removal order (B, N)."""
    order = _order(score, descending)
    pos = torch.arange(score.shape[1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def deletion_preservation(
    model: nn.Module,
    x: Tensor,
    mask: Tensor,
    target: Tensor,
    baseline: Tensor | float | None = None,
    step_fraction: float = 1 / 64,
    micro_batch: int = 64,
) -> dict[str, Tensor]:
    """RelEx's deletion D and preservation P (B,): pixels set to b in decreasing (D) or
    increasing (P) mask order, step_fraction of the pixels per step, p_c after each step
    (curves (B, S + 1) from nothing to everything removed) and the trapezoid area under p_c
    over the removed fraction in [0, 1]; R with 1/R = (1/P + 1/(1 - D)) / 2 (0 where P = 0 or
    D = 1). All steps of all images go through the model as one stream of micro-batches."""
    _check_target(x, target)
    m = _maps(mask, "mask")
    _check_like(x, m, "mask")
    n_img, _, h, w = x.shape
    counts = torch.tensor(_removal_counts(h * w, step_fraction), device=x.device)
    n_pts = len(counts)
    score = m.mean(1).flatten(1)
    positions = torch.stack([_positions(score, True), _positions(score, False)])
    base = _baseline(model, baseline, x).expand_as(x)

    def build(rows: Tensor) -> tuple[Tensor, Tensor]:
        which, rest = rows // (n_img * n_pts), rows % (n_img * n_pts)
        i, k = rest // n_pts, rest % n_pts
        removed = (positions[which, i] < counts[k, None]).view(-1, 1, h, w)
        return torch.where(removed, base[i], x[i]), target[i]

    n_rows = 2 * n_img * n_pts
    p = _target_log_probs(model, n_rows, build, micro_batch, x.device).exp()
    deletion_curve, preservation_curve = p.view(2, n_img, n_pts)
    frac = counts.to(p.dtype) / (h * w)
    d = torch.trapezoid(deletion_curve, frac, dim=1)
    pres = torch.trapezoid(preservation_curve, frac, dim=1)
    r = torch.nan_to_num(_ratio(2 * pres * (1 - d), pres + 1 - d), nan=0.0)
    return {
        "deletion": d,
        "preservation": pres,
        "r_score": r,
        "deletion_curve": deletion_curve,
        "preservation_curve": preservation_curve,
    }


# ---------------------------------------------------------------------------------------------
# rank similarity


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
    _check_same(a, b, "spearman")
    a, b = a.flatten(1), b.flatten(1)
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    rho = _ratio((ra * rb).sum(1), ((ra * ra).sum(1) * (rb * rb).sum(1)).sqrt())
    bad = a.isnan().any(1) | b.isnan().any(1)
    return torch.where(bad, NAN, rho).to(a.dtype if a.is_floating_point() else torch.float64)


def topk_intersection(a: Tensor, b: Tensor, fraction: float = 0.02) -> Tensor:
    """|top-k(a) n top-k(b)| / k (B,) over per-pixel scores (channel-summed |map|), k =
    round(fraction * H * W) >= 1; ties go to the lower flat index."""
    _check_same(a, b, "topk_intersection")
    sa, sb = (_maps(m).abs().sum(1).flatten(1) for m in (a, b))
    k = _count(fraction, sa.shape[1])
    hits = torch.zeros_like(sa, dtype=torch.bool)
    ta = hits.scatter(1, _order(sa, True)[:, :k], True)
    tb = hits.scatter(1, _order(sb, True)[:, :k], True)
    return (ta & tb).sum(1).to(sa.dtype) / k


# ---------------------------------------------------------------------------------------------
# localisation against boxes


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
    a = _maps(e).sum(1)
    n, h, w = a.shape
    inbox = _box_mask(box, n, h, w, a.device)
    pos = a > 0
    dims = (1, 2)
    loc = _ratio(
        (pos & inbox).sum(dims).to(a.dtype),
        (inbox.sum(dims) + (pos & ~inbox).sum(dims)).to(a.dtype),
    )
    ap = a.clamp_min(0)
    in_pos = (ap * inbox).sum(dims)
    energy = _ratio(in_pos, ap.sum(dims))
    positive = _ratio(in_pos, (a.abs() * inbox).sum(dims))
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
    return {
        "loc": loc,
        "energy_game": energy,
        "positive_percentage": positive,
        "concentration": conc,
    }


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
    h = _maps(e).abs().sum(1)
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
    return torch.nan_to_num(_ratio(inter, area_p + area_g - inter), nan=0.0)


def box_accuracy(
    e: Tensor, box: Tensor, thresholding: str = "value", threshold: float = 0.25
) -> Tensor:
    """Whether the box `threshold_box` extracts overlaps the true box with IoU > 0.5 (B,) bool
    (DANCE A17, after Fong & Vedaldi 2017)."""
    e = _maps(e)
    _box_mask(box, e.shape[0], 1, 1, e.device)  # shape check
    return box_iou(threshold_box(e, thresholding, threshold), box) > 0.5


# ---------------------------------------------------------------------------------------------
# structural similarity and the sanity check


def _planes(a: Tensor) -> Tensor:
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise SalauditError(f"ssim takes 2-D maps (B, H, W) or (B, 1, H, W), got {tuple(a.shape)}")
    return a.double()


def ssim(
    a: Tensor, b: Tensor, data_range: float | Tensor | None = None, win_size: int = 7
) -> Tensor:
    """Mean SSIM (B,) of 2-D maps, as skimage.metrics.structural_similarity with its defaults
    (uniform win_size x win_size window, K1 = 0.01, K2 = 0.03, sample covariance, the mean over
    the region (win_size - 1) // 2 away from the border). `data_range` None: per sample
    max(a, b) - min(a, b) over both maps (Quantus' convention); identical constant maps give 1.
    """
    _check_same(a, b, "ssim")
    x, y = _planes(a), _planes(b)
    if win_size < 3 or win_size % 2 == 0 or win_size > min(x.shape[1:]):
        raise SalauditError(
            f"win_size must be odd, at least 3 and at most the maps' side {min(x.shape[1:])}, "
            f"got {win_size}"
        )
    if data_range is None:
        hi = torch.maximum(x.flatten(1).amax(1), y.flatten(1).amax(1))
        rng = hi - torch.minimum(x.flatten(1).amin(1), y.flatten(1).amin(1))
    else:
        rng = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).expand(len(x))
    c1 = ((0.01 * rng) ** 2).view(-1, 1, 1)
    c2 = ((0.03 * rng) ** 2).view(-1, 1, 1)
    stats = F.avg_pool2d(torch.stack([x, y, x * x, y * y, x * y], 1), win_size, stride=1)
    ux, uy, uxx, uyy, uxy = stats.unbind(1)
    cov = win_size**2 / (win_size**2 - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out = s.mean((1, 2))
    return torch.where(rng == 0, (x == y).flatten(1).all(1).double(), out).to(a.dtype)


def _unit_range(v: Tensor) -> Tensor:
    """Min-max rescaling of each sample's map to [0, 1] (a constant map becomes 0)."""
    flat = v.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    span = (hi - lo).view(-1, *[1] * (v.ndim - 1))
    lo = lo.view_as(span)
    return torch.where(span > 0, (v - lo) / torch.where(span > 0, span, 1.0), 0.0)


def sanity_views(e: Tensor) -> dict[str, Tensor]:
    """The per-sample 2-D views of a map (B, H, W) the sanity check compares (Adebayo et al.
    2018, their released notebooks): "abs" channel-summed |E| clipped at its 99th percentile
    (their grayscale view; equal to `saliency_mask`); "signed" channel-summed E divided by the
    99th percentile of its |.| and clipped to [-1, 1] (their diverging view, made symmetric);
    "unit" channel-summed |E| min-max rescaled to [0, 1] (their 0-1 normalisation, the view DANCE
    fig. A5 shows), the input of SSIM."""
    e = _maps(e)
    signed = e.sum(1)
    q = _quantile(signed.abs().flatten(1), 0.99).view(-1, 1, 1)
    signed = torch.where(q > 0, (signed / torch.where(q > 0, q, 1.0)).clamp(-1, 1), 0.0)
    return {
        "abs": saliency_mask(e)[:, 0],
        "signed": signed,
        "unit": _unit_range(e.abs().sum(1)),
    }


def cascade_layers(net: nn.Module) -> list[str]:
    """The layers the cascade re-initialises, top (output) first: the modules of `net` with
    parameters of their own and a `reset_parameters` method, in reverse definition order."""
    return [
        name
        for name, m in reversed(list(net.named_modules()))
        if name and hasattr(m, "reset_parameters") and any(True for _ in m.parameters(False))
    ]


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise a layer with `reset_parameters()` on a CPU copy under a seeded CPU
    generator (the same weights on any device); BatchNorm's running statistics are reset too
    (mean 0, variance 1), as in a freshly built network."""
    fresh = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh.reset_parameters()
    module.load_state_dict(fresh.state_dict())


def cascading_randomisation(
    model: PixelModel,
    explain: Explain,
    x: Tensor,
    target: Tensor,
    layers: list[str] | None = None,
    seed: int = 0,
) -> dict:
    """Adebayo et al.'s cascading model-parameter randomisation (DANCE A11) on a copy of the
    model (the caller's stays untouched, in eval mode throughout): layers are re-initialised
    one by one from the top (`cascade_layers`, or the given module paths of `model.net` in the
    given order), and after each the map `explain(model, x, target)` is compared with the
    original one per sample: "ssim" (data range 1) of the "unit" views, "spearman" of the
    "signed" views and "spearman_abs" of the "abs" views (`sanity_views`), each (B, L)."""
    _check_target(x, target)
    rand = copy.deepcopy(model).eval()
    net = getattr(rand, "net", rand)
    names = cascade_layers(net) if layers is None else list(layers)
    modules = {name: _cascade_module(net, name) for name in names}
    ref = sanity_views(explain(rand, x, target))
    out: dict[str, list[Tensor]] = {"ssim": [], "spearman": [], "spearman_abs": []}
    for name in names:
        _reinitialise(modules[name], seed_of(f"cascade/{seed}/{name}"))
        views = sanity_views(explain(rand, x, target))
        out["ssim"].append(ssim(ref["unit"], views["unit"], data_range=1.0))
        out["spearman"].append(spearman(ref["signed"], views["signed"]))
        out["spearman_abs"].append(spearman(ref["abs"], views["abs"]))
    empty = torch.empty(len(x), 0, device=x.device)
    return {"layers": names} | {k: torch.stack(v, 1) if v else empty for k, v in out.items()}


def _cascade_module(net: nn.Module, name: str) -> nn.Module:
    try:
        module = net.get_submodule(name)
    except AttributeError:
        raise SalauditError(
            f"layer {name!r} is not in the model; re-initialisable layers: "
            f"{', '.join(cascade_layers(net))}"
        ) from None
    if not hasattr(module, "reset_parameters"):
        raise SalauditError(f"layer {name!r} ({type(module).__name__}) has no reset_parameters")
    return module


# ---------------------------------------------------------------------------------------------
# decoys


def decoy_validity(
    model: PixelModel, layer: str, x: Tensor, population: Tensor, micro_batch: int = 64
) -> Tensor:
    """Relative L_inf difference of F_l between x and each decoy (B, K) (DANCE fig. 5):
    max |F_l(x~) - F_l(x)| / max |F_l(x)|, population (B, K, C, H, W)."""
    if (
        population.ndim != 5
        or population.shape[0] != x.shape[0]
        or population.shape[2:] != x.shape[1:]
    ):
        raise SalauditError(
            f"decoys of shape {tuple(population.shape)} do not fit images {tuple(x.shape)}; "
            "expected (B, K, C, H, W)"
        )
    return representation_difference(model, layer, x, population, micro_batch)

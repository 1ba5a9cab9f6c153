"""From maps to masks (METHODS.md), and what every metric shares: shape checks, pixel orders,
the metric baseline and the model's target probabilities in micro-batches.

Every metric is computed per sample and returned as a tensor with the batch first, on the input's
device; nothing is normalised across a batch. Model calls go through micro-batches of rows.

Conventions where METHODS.md is silent:
- boxes are (y0, x0, y1, x1) in pixels, half-open (rows y0..y1-1, columns x0..x1-1), as
  `salaudit.inputs.scenes` stores them;
- the binary top-K map is one value per pixel (B, 1, H, W), broadcast over channels where it
  masks an image; the sensitivity's numerator is therefore sqrt(number of pixels whose
  membership changed);
- ties in a pixel order (top-K maps, deletion/preservation, ROAD) are taken in a random order
  drawn from the sample's key (`<key>/ties`), never by pixel index: a RelEx mask is exactly 0
  on most pixels, and an index rule would fill its top 20% from the image's first rows.
  The same key gives the same order, so two maps of one sample (clean and attacked) break
  their ties alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.keys import keyed_uniform
from ..errors import SalauditError

NAN = float("nan")


def as_maps(e: Tensor, name: str = "map") -> Tensor:
    """A batch of maps as (B, C, H, W); (B, H, W) gains a channel axis."""
    if e.ndim == 3:
        return e[:, None]
    if e.ndim != 4:
        raise SalauditError(f"{name} must be (B, C, H, W) or (B, H, W), got {tuple(e.shape)}")
    return e


def check_like(x: Tensor, m: Tensor, name: str) -> None:
    """`m` (B, 1 or C, H, W) must fit the images x (B, C, H, W)."""
    if x.ndim != 4:
        raise SalauditError(f"images must be (B, C, H, W), got {tuple(x.shape)}")
    if m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:] or m.shape[1] not in (1, x.shape[1]):
        raise SalauditError(
            f"{name} of shape {tuple(m.shape)} does not fit images of shape {tuple(x.shape)}"
        )


def check_same(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise SalauditError(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")


def check_target(x: Tensor, target: Tensor) -> None:
    if target.shape != (x.shape[0],):
        raise SalauditError(
            f"target of shape {tuple(target.shape)} does not fit {x.shape[0]} images"
        )


def pixel_count(fraction: float, n: int) -> int:
    """round(fraction * n), half up, at least 1 and at most n."""
    if not 0 < fraction <= 1:
        raise SalauditError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, min(n, math.floor(fraction * n + 0.5)))


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, NaN where den is 0."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), NAN)


def quantile(v: Tensor, q: float) -> Tensor:
    """Per-row q-quantile of (B, N) with linear interpolation (numpy's default)."""
    s = v.sort(dim=1).values
    pos = q * (s.shape[1] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, s.shape[1] - 1)
    return torch.lerp(s[:, lo], s[:, hi], pos - lo)


def tie_order(n_rows: int, n: int, device, keys: list[str] | None = None) -> Tensor:
    """(n_rows, n): per row a random permutation of 0..n-1 drawn from its key (`<key>/ties`;
    keys default to the row positions "0", "1", ...), the order in which tied pixels go."""
    keys = [str(i) for i in range(n_rows)] if keys is None else keys
    if len(keys) != n_rows:
        raise SalauditError(f"{len(keys)} keys for {n_rows} samples: give one key per sample")
    return keyed_uniform([f"{k}/ties" for k in keys], (n,), device).argsort(dim=1)


def pixel_order(score: Tensor, descending: bool, keys: list[str] | None = None) -> Tensor:
    """Flat pixel indices per row sorted by score, ties in the row's keyed random order
    (`tie_order`), never by index."""
    perm = tie_order(*score.shape, score.device, keys)
    order = score.gather(1, perm).argsort(dim=1, descending=descending, stable=True)
    return perm.gather(1, order)


METRIC_BASELINES = ("mean", "zero", "blur")  # what replaces removed pixels (`metric_baseline`)


def blurred(x: Tensor) -> Tensor:
    """x under a Gaussian blur of sigma = side / 16 pixels (2 at 32, 14 at 224), reflected at
    the border: the `blur` metric baseline."""
    from torchvision.transforms.functional import gaussian_blur

    sigma = max(x.shape[-2:]) / 16
    kernel = 2 * math.ceil(2 * sigma) + 1
    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def check_metric_baseline(kind: str) -> str:
    """`kind` if it names a metric baseline, else an error naming the choices."""
    if kind not in METRIC_BASELINES:
        raise SalauditError(
            f"metric baseline {kind!r} is unknown; give one of {', '.join(METRIC_BASELINES)}"
        )
    return kind


def metric_baseline(model: nn.Module, baseline: Tensor | float | str | None, x: Tensor) -> Tensor:
    """What replaces removed pixels of x, broadcastable to x: `mean` (or None) the model's
    baseline colour b (the training data's mean), `zero` 0, `blur` x blurred (`blurred`); a
    number or tensor as given, a (C,) vector as (1, C, 1, 1)."""
    if baseline is None or isinstance(baseline, str):
        kind = check_metric_baseline(baseline or "mean")
        if kind == "blur":
            return blurred(x)
        baseline = model.baseline_colour if kind == "mean" else 0.0
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


def target_log_probs(
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


def saliency_mask(e: Tensor, is_mask: bool = False) -> Tensor:
    """The saliency mask in [0, 1] per pixel (B, 1, H, W): a mask (RelEx) as it is (mean over
    channels if it has several); any other map |E| summed over channels, clipped at its
    per-sample 99th percentile and divided by it (an all-zero map stays 0)."""
    e = as_maps(e)
    if is_mask:
        return e.mean(1, keepdim=True) if e.shape[1] > 1 else e
    a = e.abs().sum(1, keepdim=True)
    q = quantile(a.flatten(1), 0.99).view(-1, 1, 1, 1)
    ok = q > 0
    return torch.where(ok, a.minimum(q) / torch.where(ok, q, torch.ones_like(q)), 0.0)


def top_fraction(e: Tensor, fraction: float, keys: list[str] | None = None) -> Tensor:
    """The binary top-K map (B, 1, H, W) in {0, 1}: the round(fraction * H * W) pixels (at
    least 1) with the largest max-over-channels |E|; ties in the keyed order of `tie_order`."""
    e = as_maps(e)
    b, _, h, w = e.shape
    score = e.abs().amax(1).flatten(1)
    top = pixel_order(score, descending=True, keys=keys)[:, : pixel_count(fraction, h * w)]
    dtype = e.dtype if e.is_floating_point() else torch.get_default_dtype()
    return (
        torch.zeros(score.shape, dtype=dtype, device=e.device)
        .scatter_(1, top, 1.0)
        .view(b, 1, h, w)
    )


def masked_input(x: Tensor, mask: Tensor, baseline: Tensor | float) -> Tensor:
    """mask * x + (1 - mask) * b, a (B, 1, H, W) mask broadcast over channels."""
    m = as_maps(mask, "mask")
    check_like(x, m, "mask")
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if b.ndim == 1:
        b = b.view(1, -1, 1, 1)
    return m * x + (1 - m) * b

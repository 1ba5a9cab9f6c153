"""Base saliency methods (METHODS.md), batched over images and over steps or noise samples.

Each method is `method(model, x, target, ctx, **params) -> attribution` of x's shape, the raw
signed attribution in pixel space. `ctx` carries one random key per image, so noise and random
baselines depend on the sample, never on how samples are batched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .batching import CPU_MICRO_BATCH, keyed_normal, keyed_uniform, row_gradients
from .layers import captured
from .models import PixelModel

Tensor = torch.Tensor


@dataclass
class Context:
    """Per-call settings shared by all methods: one random key per image row of x, the
    micro-batch size, and reference images (the baselines of expected gradients)."""

    keys: list[str] | None = None
    micro_batch: int = CPU_MICRO_BATCH
    references: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def keys_for(self, n: int) -> list[str]:
        return self.keys if self.keys is not None else [str(i) for i in range(n)]

    def with_keys(self, keys: list[str]) -> Context:
        return Context(keys, self.micro_batch, self.references, self.extra)


def gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of n-point Gauss-Legendre quadrature on [0, 1] (weights sum to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.tensor((nodes + 1) / 2), torch.tensor(weights / 2)


def weighted_gradient_sum(
    model: PixelModel,
    target: Tensor,
    n_images: int,
    n_per_image: int,
    point: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    ctx: Context,
    like: Tensor,
) -> Tensor:
    """sum_k weight(i, k) * grad F_c(point(i, k)) per image i; `point(i, k)` returns the rows'
    inputs and weights for row indices i (image) and k (step or sample)."""
    out = torch.zeros_like(like)

    def build(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        i, k = rows // n_per_image, rows % n_per_image
        inputs, weight = point(i, k)
        return inputs, target[i.to(target.device)], weight

    n_rows = n_images * n_per_image
    for rows, grad, _, weight in row_gradients(model, n_rows, build, ctx.micro_batch):
        out.index_add_(0, (rows // n_per_image).to(out.device), grad * weight)
    return out


def grad(model: PixelModel, x: Tensor, target: Tensor, ctx: Context | None = None) -> Tensor:
    """Signed gradient of the target logit w.r.t. the input."""
    ctx = ctx or Context()
    return weighted_gradient_sum(
        model, target, len(x), 1, lambda i, k: (x[i], torch.ones(())), ctx, x
    )


def gradxinput(model: PixelModel, x: Tensor, target: Tensor, ctx: Context | None = None) -> Tensor:
    """Gradient times input."""
    return grad(model, x, target, ctx) * x


def ig(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    ctx: Context | None = None,
    n_steps: int = 50,
    baseline: Tensor | None = None,
) -> Tensor:
    """Integrated gradients from `baseline` (zero) to x, Gauss-Legendre quadrature."""
    ctx = ctx or Context()
    b = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    alphas, weights = (t.to(x) for t in gauss_legendre(n_steps))
    delta = x - b

    def point(i: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        i, k = i.to(x.device), k.to(x.device)
        return b[i] + alphas[k].view(-1, 1, 1, 1) * delta[i], weights[k].view(-1, 1, 1, 1)

    return delta * weighted_gradient_sum(model, target, len(x), n_steps, point, ctx, x)


def intuniform(
    model: PixelModel, x: Tensor, target: Tensor, ctx: Context | None = None, n_steps: int = 50
) -> Tensor:
    """Integrated gradients from a uniform random baseline in the pixel range."""
    ctx = ctx or Context()
    keys = [f"{k}/intuniform-baseline" for k in ctx.keys_for(len(x))]
    lo, hi = model.value_range
    baseline = lo + (hi - lo) * keyed_uniform(keys, tuple(x.shape[1:]), x.device)
    return ig(model, x, target, ctx, n_steps=n_steps, baseline=baseline)


def noisy_gradient_stats(
    model: PixelModel, x: Tensor, target: Tensor, ctx: Context, n_samples: int, noise: float
) -> dict[str, Tensor]:
    """Mean, variance (population) and range (max - min) of the gradients at n noisy copies
    x + N(0, sigma^2), sigma = noise * (max(x) - min(x)) per image."""
    keys = ctx.keys_for(len(x))
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    total = torch.zeros_like(x, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    high = torch.full_like(x, -torch.inf)
    low = torch.full_like(x, torch.inf)

    def build(rows: Tensor) -> tuple[Tensor, Tensor, None]:
        i, k = rows // n_samples, rows % n_samples
        draws = keyed_normal(
            [
                f"{keys[a]}/smoothgrad-noise/{b}"
                for a, b in zip(i.tolist(), k.tolist(), strict=True)
            ],
            tuple(x.shape[1:]),
            x.device,
        )
        i = i.to(x.device)
        return x[i] + sigma[i].view(-1, 1, 1, 1) * draws, target[i], None

    for rows, g, _, _ in row_gradients(model, len(x) * n_samples, build, ctx.micro_batch):
        i = (rows // n_samples).to(x.device)
        total.index_add_(0, i, g.double())
        total_sq.index_add_(0, i, g.double() ** 2)
        spread = i.view(-1, 1, 1, 1).expand_as(g)
        high.scatter_reduce_(0, spread, g, "amax")
        low.scatter_reduce_(0, spread, g, "amin")
    mean = total / n_samples
    var = (total_sq / n_samples - mean**2).clamp_min(0)
    return {"mean": mean.to(x.dtype), "var": var.to(x.dtype), "range": high - low}


def _noisy(stat: str, name: str, doc: str) -> Callable[..., Tensor]:
    def method(
        model: PixelModel,
        x: Tensor,
        target: Tensor,
        ctx: Context | None = None,
        n_samples: int = 25,
        noise: float = 0.15,
    ) -> Tensor:
        return noisy_gradient_stats(model, x, target, ctx or Context(), n_samples, noise)[stat]

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


smoothgrad = _noisy("mean", "smoothgrad", "Mean gradient over noisy copies (SmoothGrad).")
vargrad = _noisy("var", "vargrad", "Variance of the SmoothGrad gradients (VarGrad).")
sgrange = _noisy("range", "sgrange", "Range (max - min) of the SmoothGrad gradients.")


def expgrad(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    ctx: Context | None = None,
    n_samples: int = 25,
) -> Tensor:
    """Expected gradients: mean of (x - x') * grad F_c(x' + a (x - x')) over baselines x' drawn
    from the data's reference images and a ~ U(0, 1)."""
    ctx = ctx or Context()
    if ctx.references is None:
        raise ValueError("expgrad needs reference images (ctx.references) to draw baselines from")
    refs = ctx.references.to(x)
    keys = ctx.keys_for(len(x))

    def point(i: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        draws = keyed_uniform(
            [f"{keys[a]}/expgrad/{b}" for a, b in zip(i.tolist(), k.tolist(), strict=True)],
            (2,),
            x.device,
        )
        j = (draws[:, 0] * len(refs)).long().clamp_max(len(refs) - 1)
        alpha = draws[:, 1].view(-1, 1, 1, 1)
        i = i.to(x.device)
        delta = x[i] - refs[j]
        return refs[j] + alpha * delta, delta / n_samples

    return weighted_gradient_sum(model, target, len(x), n_samples, point, ctx, x)


def gradcam(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    ctx: Context | None = None,
    layer: str | None = None,
) -> Tensor:
    """Grad-CAM at `layer` (the model's default), ReLU on, upsampled bilinearly to the input
    size and repeated over the input channels."""
    ctx = ctx or Context()
    layer = layer or model.default_layer("gradcam")
    out = torch.empty_like(x)
    for start in range(0, len(x), ctx.micro_batch):
        xb, tb = x[start : start + ctx.micro_batch], target[start : start + ctx.micro_batch]
        with torch.enable_grad(), captured(model, layer) as store:
            logits = model(xb.detach().requires_grad_(True))
            acts = store["output"]
            (g,) = torch.autograd.grad(logits.gather(1, tb[:, None]).sum(), acts)
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
        out[start : start + ctx.micro_batch] = cam.expand(-1, x.shape[1], -1, -1)
    return out

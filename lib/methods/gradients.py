"""Base saliency methods (METHODS.md), batched over images and over steps or noise samples.

Each method is `method(model, x, target, ctx, **params) -> attribution` of x's shape, the raw
signed attribution in pixel space. `ctx` carries one random key per image, so noise and random
baselines depend on the sample, never on how samples are batched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.batching import row_gradients
from ..engine.keys import keyed_normal, keyed_uniform
from ..engine.layers import captured
from ..engine.optim import per_row
from ..inputs.models import PixelModel
from .context import Context
from .registry import register

Tensor = torch.Tensor


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


@dataclass(frozen=True)
class GradientPath:
    """A map of the form pre(x) * sum_r w_r grad F_c(p_r) over `rows` rows per image (IG steps,
    noise samples) at points p_r = a_r x + (1 - a_r) b (+ fixed noise). `point(i, k)` gives the
    inputs, a and w of the rows (image i, row k); `pre` and `dpre` are pre(x) and its
    derivative. The base methods of this form compute their maps through it, and
    `differentiable` differentiates it, so both use the same points, weights and draws."""

    rows: int
    point: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
    pre: Tensor
    dpre: Tensor

    def gradient_sum(self, model: PixelModel, x: Tensor, target: Tensor, ctx: Context) -> Tensor:
        """S = sum_r w_r grad F_c(p_r) per image."""

        def inputs_and_weights(i: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
            inputs, _, w = self.point(i.to(x.device), k.to(x.device))
            return inputs, w

        return weighted_gradient_sum(model, target, len(x), self.rows, inputs_and_weights, ctx, x)

    def map(self, model: PixelModel, x: Tensor, target: Tensor, ctx: Context) -> Tensor:
        return self.pre * self.gradient_sum(model, x, target, ctx)


def _constants(x: Tensor) -> tuple[Tensor, Tensor]:
    return torch.ones((), device=x.device, dtype=x.dtype), torch.zeros(
        (), device=x.device, dtype=x.dtype
    )


def _one(_params: dict) -> int:
    return 1


def _steps(params: dict) -> int:
    return params["n_steps"]


def _samples(params: dict) -> int:
    return params["n_samples"]


def grad_path(x: Tensor, ctx: Context, cache: dict | None = None) -> GradientPath:
    """The gradient itself: one row per image at x, pre(x) = 1."""
    one, zero = _constants(x)
    return GradientPath(1, lambda i, k: (x[i], one, one), one, zero)


def gradxinput_path(x: Tensor, ctx: Context, cache: dict | None = None) -> GradientPath:
    """The gradient at x times x: pre(x) = x."""
    one, _ = _constants(x)
    return GradientPath(1, lambda i, k: (x[i], one, one), x, one)


def ig_path(
    x: Tensor, ctx: Context, *, n_steps: int, baseline: Tensor | None = None, cache=None
) -> GradientPath:
    """Integrated gradients from `baseline` (zero) to x: Gauss-Legendre nodes a_k and weights
    w_k, points b + a_k (x - b), pre(x) = x - b."""
    one, _ = _constants(x)
    b = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    alphas, weights = (t.to(x) for t in gauss_legendre(n_steps))
    delta = x - b

    def point(i: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = per_row(alphas[k], x)
        return b[i] + a * delta[i], a, per_row(weights[k], x)

    return GradientPath(n_steps, point, delta, one)


def noise_key(key: str, j: int) -> str:
    """The key of SmoothGrad's j-th noise draw of the sample keyed `key`."""
    return f"{key}/smoothgrad-noise/{j}"


def noise_scale(x: Tensor, noise: float) -> Tensor:
    """SmoothGrad's sigma per image: `noise` times the image's range max(x) - min(x)."""
    return noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))


def smoothgrad_path(
    x: Tensor, ctx: Context, *, n_samples: int, noise: float, cache: dict | None = None
) -> GradientPath:
    """The mean gradient at x + sigma z_k, z_k SmoothGrad's keyed draws (kept in `cache`,
    reused for every x of one attack), sigma held constant in the derivative."""
    one, zero = _constants(x)
    cache = {} if cache is None else cache
    if "draws" not in cache:
        flat = [noise_key(k, j) for k in ctx.keys_for(len(x)) for j in range(n_samples)]
        draws = keyed_normal(flat, tuple(x.shape[1:]), x.device)
        cache["draws"] = draws.view(len(x), n_samples, *x.shape[1:])
    draws, sigma, w = cache["draws"], noise_scale(x, noise), one / n_samples

    def point(i: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return x[i] + per_row(sigma[i], x) * draws[i, k], one, w

    return GradientPath(n_samples, point, one, zero)


@register("grad", decoys=True, path=grad_path, rows=_one)
def grad(model: PixelModel, x: Tensor, target: Tensor, ctx: Context | None = None) -> Tensor:
    """Signed gradient of the target logit w.r.t. the input."""
    ctx = ctx or Context()
    return grad_path(x, ctx).map(model, x, target, ctx)


@register("gradxinput", decoys=True, path=gradxinput_path, rows=_one)
def gradxinput(model: PixelModel, x: Tensor, target: Tensor, ctx: Context | None = None) -> Tensor:
    """Gradient times input."""
    ctx = ctx or Context()
    return gradxinput_path(x, ctx).map(model, x, target, ctx)


@register("ig", decoys=True, path=ig_path, rows=_steps)
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
    return ig_path(x, ctx, n_steps=n_steps, baseline=baseline).map(model, x, target, ctx)


def noisy_gradient_stats(
    model: PixelModel, x: Tensor, target: Tensor, ctx: Context, n_samples: int, noise: float
) -> dict[str, Tensor]:
    """Mean, variance (population) and range (max - min) of the gradients at n noisy copies
    x + N(0, sigma^2), sigma = noise * (max(x) - min(x)) per image."""
    keys = ctx.keys_for(len(x))
    sigma = noise_scale(x, noise)
    total = torch.zeros_like(x, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    high = torch.full_like(x, -torch.inf)
    low = torch.full_like(x, torch.inf)

    def build(rows: Tensor) -> tuple[Tensor, Tensor, None]:
        i, k = rows // n_samples, rows % n_samples
        draws = keyed_normal(
            [noise_key(keys[a], b) for a, b in zip(i.tolist(), k.tolist(), strict=True)],
            tuple(x.shape[1:]),
            x.device,
        )
        i = i.to(x.device)
        return x[i] + per_row(sigma[i], x) * draws, target[i], None

    for rows, g, _, _ in row_gradients(model, len(x) * n_samples, build, ctx.micro_batch):
        i = (rows // n_samples).to(x.device)
        total.index_add_(0, i, g.double())
        total_sq.index_add_(0, i, g.double() ** 2)
        spread = per_row(i, g).expand_as(g)
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


smoothgrad = register("smoothgrad", decoys=True, path=smoothgrad_path, rows=_samples)(
    _noisy("mean", "smoothgrad", "Mean gradient over noisy copies (SmoothGrad).")
)
vargrad = register("vargrad", decoys=True, rows=_samples)(
    _noisy("var", "vargrad", "Variance of the SmoothGrad gradients (VarGrad).")
)
sgrange = register("sgrange", decoys=True, rows=_samples)(
    _noisy("range", "sgrange", "Range (max - min) of the SmoothGrad gradients.")
)


@register("expgrad", decoys=True, needs_references=True, rows=_samples)
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
        alpha = per_row(draws[:, 1], x)
        i = i.to(x.device)
        delta = x[i] - refs[j]
        return refs[j] + alpha * delta, delta / n_samples

    return weighted_gradient_sum(model, target, len(x), n_samples, point, ctx, x)


@register("intuniform", decoys=True, rows=_steps)
def intuniform(
    model: PixelModel, x: Tensor, target: Tensor, ctx: Context | None = None, n_steps: int = 50
) -> Tensor:
    """Integrated gradients from a uniform random baseline in the pixel range."""
    ctx = ctx or Context()
    keys = [f"{k}/intuniform-baseline" for k in ctx.keys_for(len(x))]
    lo, hi = model.value_range
    baseline = lo + (hi - lo) * keyed_uniform(keys, tuple(x.shape[1:]), x.device)
    return ig(model, x, target, ctx, n_steps=n_steps, baseline=baseline)


@register("gradcam", decoys=True, rows=_one, kinds=("image",))
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
    layer = layer or model.default_layer("cam")
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

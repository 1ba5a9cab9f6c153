"""RelEx: a saliency mask learned from a batch of noisy copies (paper relex-*.txt, METHODS.md).

J(m) = mean_i[-log p_c(m x_i + (1 - m) b)] + l1 sum|m| + l2 mean_i[-log(1 - p_c((1 - m) x_i + m b)
+ 1e-7)], x_i = x + N(0, sigma^2) drawn afresh every iteration, m in [0, 1] per pixel and
channel, b the data's mean colour. SGD with momentum on the per-image unit-norm gradient, m
clamped to [0, 1] after every step. The L1 term's gradient is sign(m), 0 where the clamp left
m at exactly 0 (torch's derivative of |m|, as in the authors' code): the penalty stops pushing
an element that is already off. 100 iterations, the top of the authors' 50-100: from
m0 ~ U(0, 0.01) with momentum 0.99, 50 steps move a unit-norm direction too little to cover a
digit (the class is kept for 62% of 16 default images at 50, by our code and the authors' alike,
100% at 100; docs/robust.md).
All images of a call are optimised together, their copies going through the model in
micro-batches. At large inputs (`budget.large_input`) the default is 8 copies per iteration,
not 50: 1,600 rows per image instead of 10,000 (docs/robust.md, "Budgets at size").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..engine.keys import generator
from ..engine.optim import per_row
from ..inputs.models import PixelModel
from .budget import large_input
from .context import Context
from .registry import register

Tensor = torch.Tensor
REFERENCE_ELEMENTS = 3 * 224 * 224  # d0: the input size the authors' constants belong to
AUTHORS_L1 = 1e-4  # on a sum over all elements at d0
AUTHORS_LR = 0.1  # at d0
COPIES = 50  # noisy copies per iteration (METHODS.md)
LARGE_INPUT_COPIES = 8  # at large inputs (docs/robust.md, "Budgets at size")


def scaled_l1(d: int) -> float:
    """The authors' l1 (1e-4 at 3x224x224) scaled by d0 / d: the same per-element weight."""
    return AUTHORS_L1 * REFERENCE_ELEMENTS / d


def scaled_lr(d: int) -> float:
    """The authors' learning rate (0.1 at 3x224x224) scaled by sqrt(d / d0): a unit-norm step
    then moves each element as far as at d0."""
    return AUTHORS_LR * math.sqrt(d / REFERENCE_ELEMENTS)


def sized(params: dict, model: PixelModel) -> dict:
    """`n_noise` where the spec leaves it: COPIES, or LARGE_INPUT_COPIES at large inputs."""
    if params.get("n_noise") is None:
        copies = LARGE_INPUT_COPIES if large_input(model) else COPIES
        params = {**params, "n_noise": copies}
    return params


@register(
    "relex",
    family="relex",
    mask=True,
    references=("grad", "ig", "smoothgrad"),
    resolve=sized,
    rows=lambda p: 2 * p["iterations"] * p["n_noise"],  # kept and removed part of each copy
)
def relex(
    model: PixelModel,
    x: Tensor,
    target: Tensor,
    ctx: Context | None = None,
    n_noise: int | None = None,
    noise: float = 0.1,
    iterations: int = 100,
    l1: float | None = None,
    l2: float = 1.0,
    lr: float | None = None,
    momentum: float = 0.99,
    init: float = 0.01,
) -> Tensor:
    """The RelEx mask in [0, 1] of x's shape; `n_noise` defaults to `sized`'s, `l1` and `lr`
    to the authors' values scaled to x's size (`scaled_l1`, `scaled_lr`)."""
    ctx = ctx or Context()
    n_noise = sized({"n_noise": n_noise}, model)["n_noise"]
    keys = ctx.keys_for(len(x))
    d = x[0].numel()
    l1 = scaled_l1(d) if l1 is None else l1
    lr = scaled_lr(d) if lr is None else lr
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    b = model.baseline_colour.to(x).expand_as(x[:1])
    draws = [generator(f"{k}/relex", x.device) for k in keys]
    mask = torch.cat([torch.rand(x[:1].shape, generator=g, device=x.device) * init for g in draws])
    velocity = torch.zeros_like(mask)
    for _ in range(iterations):
        copies = torch.stack(
            [torch.randn((n_noise, *x.shape[1:]), generator=g, device=x.device) for g in draws]
        )  # (B, N, C, H, W): each image's copies from its own stream
        copies = x[:, None] + per_row(sigma, copies) * copies
        grad = _data_gradient(model, mask, copies, target, b, l2, ctx.micro_batch)
        grad = grad + l1 * (mask > 0)  # d|m|/dm as torch (and the authors' code) takes it
        norm = per_row(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
        velocity = momentum * velocity + grad / norm
        mask = (mask - lr * velocity).clamp(0, 1)
    return mask


def _data_gradient(model, mask, copies, target, b, l2, micro_batch) -> Tensor:
    """Gradient w.r.t. the mask of the two data terms of J, per image (B, C, H, W). Each copy
    gives two rows, the kept part (m x_i + (1 - m) b) and the removed part ((1 - m) x_i + m b);
    a micro-batch holds whole images' copies where they fit, else a slice of one image's."""
    n_images, n_noise = copies.shape[:2]
    per_call = max(1, micro_batch // 2)  # copies per model call
    images, noise = max(1, per_call // n_noise), min(n_noise, per_call)
    grad = torch.zeros_like(mask)
    for i in range(0, n_images, images):
        rows, t = slice(i, i + images), target[i : i + images, None]
        for j in range(0, n_noise, noise):
            x = copies[rows, j : j + noise]  # (k, n, C, H, W)
            with torch.enable_grad():
                m = mask[rows].detach().requires_grad_(True)
                mm = m[:, None]
                both = torch.cat([mm * x + (1 - mm) * b, (1 - mm) * x + mm * b], 1)
                logp = F.log_softmax(model(both.flatten(0, 1)), 1).view(
                    len(x), -1, model.num_classes
                )
                logp = logp.gather(2, t[:, :, None].expand(-1, logp.shape[1], 1)).squeeze(2)
                kept, removed = logp.split(x.shape[1], 1)
                loss = -kept.sum() - l2 * torch.log(1 - removed.exp() + 1e-7).sum()
                (g,) = torch.autograd.grad(loss / n_noise, m)
            grad[rows] += g
    return grad

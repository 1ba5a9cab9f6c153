"""Saliency maps with an input gradient, for attacks: `grad`, `gradxinput`, `ig`, `smoothgrad`.

Captum's maps carry no gradient. Each of these maps is pre(x) * sum_r w_r grad F_c(p_r) over
rows r (IG steps, noise samples) at points p_r = a_r x + (1 - a_r) b (+ fixed noise). For a loss
L(map), the input gradient is

    dL/dx = dL/dmap * S * pre'(x) + sum_r a_r H_r (dL/dmap * pre(x) * w_r),   S = sum_r w_r g_r,

with H_r the Hessian of F_c at p_r. The map (and so the attack's objective) comes from the model
itself; the Hessian-vector products go through a copy with ReLU replaced by softplus(beta), as
ReLU has no second derivative. Both passes stream all rows of all images through the model in
micro-batches, so memory does not grow with the step or sample count. Noise draws and the noise
scale are those of `salaudit.saliency`, so `map(x)` equals the method's map there exactly; the
noise scale (a function of x's range) is held constant in the gradient.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .batching import keyed_normal
from .errors import SalauditError
from .models import PixelModel
from .saliency import Context, gauss_legendre, weighted_gradient_sum

Tensor = torch.Tensor
DIFFERENTIABLE = ("grad", "gradxinput", "ig", "smoothgrad")


def softplus_copy(model: PixelModel, beta: float) -> tuple[PixelModel, bool]:
    """The model with every nn.ReLU module replaced by softplus(beta), and whether any was
    (a model without ReLU modules is returned as is). ReLUs called functionally are not seen."""
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        return model, False
    soft = copy.deepcopy(model)
    for module in list(soft.modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, nn.ReLU):
                setattr(module, child, nn.Softplus(beta=beta))
    return soft, True


def set_beta(model: nn.Module, beta: float) -> None:
    """Set the beta of every softplus in `model` (for annealing)."""
    for m in model.modules():
        if isinstance(m, nn.Softplus):
            m.beta = beta


@dataclass
class DifferentiableMap:
    """One method's map of a batch of images and its input gradient (see the module doc).

    `keys` are the method's per-sample random keys (as in `Context.keys`); `params` the method's
    parameters (n_steps for ig; n_samples and noise for smoothgrad). SmoothGrad's noise is drawn
    once, on first use, and reused for every iterate."""

    method: str
    model: PixelModel
    soft: PixelModel
    target: Tensor
    ctx: Context
    params: dict
    noise: Tensor | None = None

    @classmethod
    def build(
        cls,
        method: str,
        model: PixelModel,
        target: Tensor,
        ctx: Context,
        params: dict | None = None,
        beta: float = 30.0,
    ) -> DifferentiableMap:
        if method not in DIFFERENTIABLE:
            raise SalauditError(
                f"{method} has no differentiable path, so it cannot be attacked; attacks run "
                f"against one of: {', '.join(DIFFERENTIABLE)} (e.g. topk@grad)"
            )
        soft, _ = softplus_copy(model, beta)
        return cls(method, model, soft, target, ctx, dict(params or {}))

    @property
    def rows_per_image(self) -> int:
        if self.method == "ig":
            return self.params.get("n_steps", 50)
        return self.params.get("n_samples", 25) if self.method == "smoothgrad" else 1

    def _draws(self, x: Tensor) -> Tensor:
        """SmoothGrad's standard-normal draws (B, N, C, H, W), keyed as in `saliency`."""
        if self.noise is None:
            n, keys = self.rows_per_image, self.ctx.keys_for(len(x))
            flat = [f"{k}/smoothgrad-noise/{j}" for k in keys for j in range(n)]
            self.noise = keyed_normal(flat, tuple(x.shape[1:]), x.device).view(
                len(x), n, *x.shape[1:]
            )
        return self.noise

    def _plan(self, x: Tensor):
        """(point(i, k) -> (inputs, a, w), pre, pre') for images x."""
        one = torch.ones((), device=x.device, dtype=x.dtype)
        zero = torch.zeros((), device=x.device, dtype=x.dtype)
        if self.method == "ig":
            alphas, weights = (t.to(x) for t in gauss_legendre(self.rows_per_image))

            def point(i, k):
                a = alphas[k].view(-1, 1, 1, 1)
                return a * x[i], a, weights[k].view(-1, 1, 1, 1)

            return point, x, one
        if self.method == "smoothgrad":
            sigma = self.params.get("noise", 0.15) * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
            draws, w = self._draws(x), one / self.rows_per_image

            def point(i, k):
                return x[i] + sigma[i].view(-1, 1, 1, 1) * draws[i, k], one, w

            return point, one, zero
        if self.method == "gradxinput":
            return (lambda i, k: (x[i], one, one)), x, one
        return (lambda i, k: (x[i], one, one)), one, zero

    def _inner_sum(self, x: Tensor, point) -> Tensor:
        """S = sum_r w_r grad F_c(p_r) per image, from the model itself."""

        def inputs_and_weights(i, k):
            inputs, _, w = point(i.to(x.device), k.to(x.device))
            return inputs, w

        n = self.rows_per_image
        return weighted_gradient_sum(
            self.model, self.target, len(x), n, inputs_and_weights, self.ctx, x
        )

    def map(self, x: Tensor) -> Tensor:
        """The method's map of x (no graph)."""
        point, pre, _ = self._plan(x)
        return pre * self._inner_sum(x, point)

    def input_gradient(self, x: Tensor, dmap: Tensor) -> Tensor:
        """dL/dx for a loss L whose gradient w.r.t. the map at x is `dmap`."""
        point, pre, dpre = self._plan(x)
        n, micro_batch = self.rows_per_image, self.ctx.micro_batch
        out = dmap * self._inner_sum(x, point) * dpre if dpre.any() else torch.zeros_like(x)
        v = dmap * pre
        for start in range(0, len(x) * n, micro_batch):
            rows = torch.arange(start, min(start + micro_batch, len(x) * n), device=x.device)
            i, k = rows // n, rows % n
            inputs, a, w = point(i, k)
            hv = _hessian_vector(self.soft, inputs, self.target[i], v[i] * w)
            out.index_add_(0, i, a * hv)
        return out


def _hessian_vector(model: nn.Module, x: Tensor, target: Tensor, v: Tensor) -> Tensor:
    """Per row: H v, with H the input Hessian of the target logit at x."""
    with torch.enable_grad():
        p = x.detach().requires_grad_(True)
        logit = model(p).gather(1, target[:, None]).sum()
        (g,) = torch.autograd.grad(logit, p, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), p)
    return hv

"""Saliency maps with an input gradient, for attacks: the methods registered with a path.

Captum's maps carry no gradient. Each of these maps is pre(x) * sum_r w_r grad F_c(p_r) over
rows r (IG steps, noise samples) at points p_r = a_r x + (1 - a_r) b (+ fixed noise). For a loss
L(map), the input gradient is

    dL/dx = dL/dmap * S * pre'(x) + sum_r a_r H_r (dL/dmap * pre(x) * w_r),   S = sum_r w_r g_r,

with H_r the Hessian of F_c at p_r. The map (and so the attack's objective) comes from the model
itself; the Hessian-vector products go through a copy with ReLU replaced by softplus(beta), as
ReLU has no second derivative. Both passes stream all rows of all images through the model in
micro-batches, so memory does not grow with the step or sample count. The points, weights,
noise draws and parameter defaults are the method's own (`gradients.GradientPath`, the
registry), so `map(x)` is the method's map; the noise scale (a function of x's range) is held
constant in the gradient.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SalauditError
from ..inputs.models import PixelModel
from .context import Context
from .gradients import GradientPath
from .registry import MethodInfo, get_method, registry

Tensor = torch.Tensor


def differentiable_methods() -> list[str]:
    """The base methods with a differentiable path (the ones attacks can target)."""
    return [name for name, info in registry().items() if info.path is not None]


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

    `params` are the method's parameters (its defaults filled in by the registry). SmoothGrad's
    noise is drawn once, on first use, and reused for every iterate (`cache`)."""

    info: MethodInfo
    model: PixelModel
    soft: PixelModel
    target: Tensor
    ctx: Context
    params: dict
    cache: dict = field(default_factory=dict)

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
        full = get_method(method, params)
        if full.info.path is None or full.decoys is not None:
            raise SalauditError(
                f"{method} has no differentiable path, so it cannot be attacked; attacks run "
                f"against one of: {', '.join(differentiable_methods())} (e.g. topk@grad)"
            )
        soft, _ = softplus_copy(model, beta)
        return cls(full.info, model, soft, target, ctx, full.params)

    def path(self, x: Tensor) -> GradientPath:
        return self.info.path(x, self.ctx, cache=self.cache, **self.params)

    def map(self, x: Tensor) -> Tensor:
        """The method's map of x (no graph)."""
        return self.path(x).map(self.model, x, self.target, self.ctx)

    def input_gradient(self, x: Tensor, dmap: Tensor) -> Tensor:
        """dL/dx for a loss L whose gradient w.r.t. the map at x is `dmap`."""
        path = self.path(x)
        n, micro_batch = path.rows, self.ctx.micro_batch
        if path.dpre.any():
            out = dmap * path.gradient_sum(self.model, x, self.target, self.ctx) * path.dpre
        else:
            out = torch.zeros_like(x)
        v = dmap * path.pre
        for start in range(0, len(x) * n, micro_batch):
            rows = torch.arange(start, min(start + micro_batch, len(x) * n), device=x.device)
            i, k = rows // n, rows % n
            inputs, a, w = path.point(i, k)
            hv = hessian_vector(self.soft, inputs, self.target[i], v[i] * w)
            out.index_add_(0, i, a * hv)
        return out


def hessian_vector(model: nn.Module, x: Tensor, target: Tensor, v: Tensor) -> Tensor:
    """Per row: H v, with H the input Hessian of the target logit at x."""
    with torch.enable_grad():
        p = x.detach().requires_grad_(True)
        logit = model(p).gather(1, target[:, None]).sum()
        (g,) = torch.autograd.grad(logit, p, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), p)
    return hv

"""Access to a model's intermediate layers: truncated forward passes and receptive fields."""

from __future__ import annotations

from contextlib import contextmanager, suppress

import torch

from ..inputs.models import PixelModel


class LayerReached(Exception):
    """Raised by a forward hook to stop the forward pass once the layer has run."""


@contextmanager
def captured(model: PixelModel, layer: str, stop: bool = False):
    """Record `layer`'s output of the forward passes run inside; with `stop`, a pass ends at
    the layer (call it through `forward_to`)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["output"] = output.float()  # fp32 under autocast too (a differentiable cast)
        if stop:
            raise LayerReached

    handle = model.layer(layer).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def forward_to(model: PixelModel, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The representation F_l(x) at `layer`, computing only the layers before it."""
    with captured(model, layer, stop=True) as store, suppress(LayerReached):
        model(x)
    if "output" not in store:
        raise RuntimeError(f"layer {layer} did not run in the forward pass")
    return store["output"]


def receptive_field(model: PixelModel, layer: str, probes: int = 4) -> tuple[int, int]:
    """Height and width of the input window that one spatial unit of `layer` depends on,
    measured by the support of its gradient over random inputs; the whole input for a layer
    without spatial dimensions."""
    c, h, w = model.input_shape
    device = model.mean.device
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(probes, c, h, w, generator=gen).to(device).requires_grad_(True)
    with torch.enable_grad():
        out = forward_to(model, layer, x)
        if out.ndim == 3 and h == 1 and out.shape[2] == w:  # a sequence layer (batch, C, T)
            out = out[:, :, None]
        if out.ndim != 4:
            return h, w
        cy, cx = out.shape[2] // 2, out.shape[3] // 2
        (grad,) = torch.autograd.grad(out[:, :, cy, cx].sum(), x)
    support = grad.abs().sum(dim=(0, 1)) > 0
    ys = torch.nonzero(support.any(1)).flatten()
    xs = torch.nonzero(support.any(0)).flatten()
    if ys.numel() == 0:
        return 1, 1
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)

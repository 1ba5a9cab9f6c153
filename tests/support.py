"""Small models for tests, loadable as python:support:<factory> specs."""

from __future__ import annotations

import torch
from torch import nn


def linear_model() -> nn.Module:
    """A linear classifier on 3x32x32 images (10 classes): its gradient is the same everywhere."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    net.input_shape = (3, 32, 32)
    return net


def closest_linear_boundary(model, x: torch.Tensor, target: torch.Tensor):
    """For a PixelModel around `linear_model`: per image the L2 distance to the closest decision
    boundary (box ignored) and whether that closest point lies inside the pixel range."""
    shape = model.input_shape
    w = model.net[1].weight.detach() / model.std.flatten().repeat_interleave(shape[1] * shape[2])
    with torch.no_grad():
        z = model(x)
    dist, inside = [], []
    for i, c in enumerate(target.tolist()):
        diff, margin = w[c] - w, z[i, c] - z[i]  # (classes, d), (classes,)
        r = margin / diff.norm(dim=1)
        r[c] = torch.inf
        j = int(r.argmin())
        point = x[i].flatten() - margin[j] / diff[j].norm() ** 2 * diff[j]
        dist.append(r[j])
        inside.append(bool(((point >= 0) & (point <= 1)).all()))
    return torch.stack(dist), torch.tensor(inside)


def tiny_conv() -> nn.Module:
    """A small untrained conv net with a pooling layer, for decoy tests on other models."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 4),
    )


def not_a_classifier() -> nn.Module:
    """Returns images, not logits."""
    return nn.Identity()


def poisoned_cnn() -> nn.Module:
    """The default model, refusing (RuntimeError) any batch holding an image whose pixel sum
    is listed in the JSON file named by $SALAUDIT_TEST_POISON: a shard that fails for real."""
    import json
    import os
    from pathlib import Path

    from salaudit import load_model

    class Poisoned(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = load_model("builtin:digit-scenes-cnn", progress=False)

        def forward(self, x):
            flag = Path(os.environ.get("SALAUDIT_TEST_POISON", "/nonexistent"))
            if flag.exists():
                sums = torch.tensor(json.loads(flag.read_text()), dtype=x.dtype)
                if (x.sum((1, 2, 3))[:, None] - sums[None]).abs().min() < 1e-3:
                    raise RuntimeError("poisoned image in this batch (a planted failure)")
            return self.inner(x)

    net = Poisoned()
    net.input_shape = (3, 32, 32)
    return net


def explain_spec(
    store,
    methods,
    *,
    model: str = "builtin:digit-scenes-cnn",
    data: str = "builtin:digit-scenes",
    n: int = 4,
    mode: str = "random",
    seed: int = 0,
    params: dict | None = None,
    decoys: dict | None = None,
    boundary: dict | None = None,
    **fields,
):
    """The spec of an explain run of `methods` (with their `params`) into `store`, on the CPU."""
    from salaudit.pipeline.spec import parse_spec

    return parse_spec(
        {
            "model": model,
            "data": data,
            "methods": {m: dict((params or {}).get(m, {})) for m in methods},
            "decoys": decoys or {},
            "boundary": boundary or {},
            "selection": {"mode": mode, "n": n},
            "seed": seed,
            "store": {"url": str(store)},
            "device": "cpu",
            **fields,
        }
    )


NOT_CALLABLE = 3  # python:support:NOT_CALLABLE names no factory


def raising_factory() -> nn.Module:
    """A factory that fails, as a user's might."""
    raise RuntimeError("the checkpoint server is down")


def zero_head_vit() -> nn.Module:
    """A small torchvision VisionTransformer as torchvision builds it: its classifier head is
    zero-initialised, so every image gets the same logits (all zero)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(3)
    net = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    net.input_shape = (3, 32, 32)
    return net


def untrained_cnn() -> nn.Module:
    """A randomly initialised conv net on 3x32x32 images (10 classes)."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    )
    net.input_shape = (3, 32, 32)
    return net


def _small224(seed: int, pool: nn.Module, pooled: int, classes: int) -> nn.Module:
    """A small untrained conv net on 3x224x224 images: a strided conv, `pool` to `pooled`
    pixels a side, a linear head."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=4, padding=2),
        nn.SiLU(),
        pool,
        nn.Flatten(),
        nn.Linear(4 * pooled * pooled, classes),
    )
    net.input_shape = (3, 224, 224)
    return net


def cnn224() -> nn.Module:
    """A small untrained conv net on 3x224x224 images (two classes), for audits at size."""
    net = _small224(5, nn.AvgPool2d(4), 14, 2)
    net.classes = ["cat", "dog"]
    return net


def pooled224() -> nn.Module:
    """A small untrained conv net on 3x224x224 images (three classes) that takes any size (its
    head pools adaptively), as torchvision's CNNs do."""
    return _small224(7, nn.AdaptiveAvgPool2d(4), 4, 3)


def grey_cnn() -> nn.Module:
    """A small untrained conv net on one-channel 32x32 images (two classes)."""
    torch.manual_seed(6)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(1024, 2)
    )
    net.input_shape = (1, 32, 32)
    return net


def table_mlp() -> nn.Module:
    """An untrained MLP on tables of 4 features (for bad-table tests)."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))

"""What each method costs per 224x224 image: rows through the model, counted, and the seconds
that means for a resnet18 on this machine (README, "Your own model and data").

Rows are counted with a forward hook on a small 224x224 net (every row of every micro-batch,
to the output or, for DANCE, to the decoy layer); the searches (DANCE's rounds, the boundary
search) stop early where they succeed, so their counts depend on the model. The seconds are
rows times the bare forward+backward time of one row of resnet18 (random weights, nothing
downloaded), measured in the same run.

    python benchmarks/knobs_224.py [--methods grad,ig,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from salaudit import load_model
from salaudit.methods.context import Context
from salaudit.methods.decoys import masks_for
from salaudit.methods.registry import get_method
from salaudit.pipeline.explain import method_maps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

METHODS = "grad,gradxinput,ig,smoothgrad,expgrad,gradcam,relex,bsm,big,agi,dance-grad"


def first_layer(model) -> nn.Module:
    """The network's first leaf module: every row through the model passes it once."""
    return next(m for m in model.net.modules() if not list(m.children()))


def row_seconds(arch: str = "resnet18", batch: int = 8) -> float:
    """Bare forward+backward seconds per row of a torchvision net at 224 (best of 3)."""
    import torchvision

    net = torchvision.models.get_model(arch, weights=None).eval().requires_grad_(False)
    net = net.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 224, 224)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(net(xx).sum(), xx)
        best = min(best, time.perf_counter() - start)
    return best / batch


def resnet18_decoys() -> int:
    """DANCE's decoys per image on resnet18 at 224 with the default settings."""
    import torchvision

    from salaudit.inputs.models import IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_LAYERS, PixelModel

    net = torchvision.models.get_model("resnet18", weights=None)
    model = PixelModel(
        net,
        input_shape=(3, 224, 224),
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        layers=TORCHVISION_LAYERS["resnet18"],
    ).eval()
    model.requires_grad_(False)
    m = get_method("dance-grad").resolved(model)
    return 2 * masks_for(model, m.decoys).n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=METHODS)
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_model("python:support:cnn224")
    x = torch.rand(1, 3, 224, 224)
    target = model(x).argmax(1)
    per_row = row_seconds()
    print(f"resnet18 forward+backward: {per_row:.3f} s per 224x224 row on this machine")
    print(f"DANCE decoys per image on resnet18 (default settings): {resnet18_decoys()}")
    print(f"{'method':<12} {'rows/image':>11} {'resnet18 s/image':>17}")
    refs = torch.rand(8, 3, 224, 224)
    for name in args.methods.split(","):
        method = get_method(name).resolved(model)
        rows = [0]

        def count(_module, inputs, _out, rows=rows):
            rows[0] += len(inputs[0])

        hook = first_layer(model).register_forward_hook(count)
        list(method_maps(model, [method], x, target, lambda n: Context([f"0/0/{n}"], 64, refs)))
        hook.remove()
        print(f"{name:<12} {rows[0]:>11} {rows[0] * per_row:>17.1f}", flush=True)


if __name__ == "__main__":
    main()

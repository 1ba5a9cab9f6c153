"""salaudit side by side with the authors' own code, on the default model and the first
`--images` of the 64 seeded default test images (targets: the clean predictions).

RelEx (JBNU-VL/RelEx, `models/saliency/optim_methods/relex.py`): the authors' class run one
image at a time as their code runs it, on the default model seen through a wrapper that adds
the baseline colour b back, so their masking of a b-centred image (m (x - b), the mask of their
normalised space) is salaudit's m x + (1 - m) b; the same scaled l1 and lr (METHODS.md), 50
copies, 50 iterations. Per image: Spearman over the mask's elements and the IoU of the top-20%
pixels (max over channels, ties in the sample's keyed order, the same for both masks), for
ours against theirs and for each code against itself with another seed; the share of
positive elements and whether the masked image keeps the class, at 50 and 100 iterations.

Carlini-Wagner L2 (`--foolbox`): salaudit's CW alone against foolbox 3.3.4's
`L2CarliniWagnerAttack`, which the authors' boundary code (zifanw/boundary) calls, at the same
settings, on the batch and one image at a time, with and without abort-early.

Nothing is fetched at run time: without `--relex PATH` (a clone of JBNU-VL/RelEx) or without
foolbox installed a part is skipped, saying how to get the code.

    git clone https://github.com/JBNU-VL/RelEx /tmp/RelEx
    pip install foolbox==3.3.4
    python benchmarks/authors_agreement.py --relex /tmp/RelEx --foolbox [--images 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from common import Output  # benchmarks/ is on the path
from robust_choices import default_images
from torch import nn

from salaudit.methods.context import Context
from salaudit.methods.relex import COPIES, relex, scaled_l1, scaled_lr
from salaudit.metrics.masks import top_fraction
from salaudit.metrics.robustness import spearman

RELEX_FILE = "models/saliency/optim_methods/relex.py"
RELEX_HOW = (
    "skipped: the authors' RelEx is not given; git clone https://github.com/JBNU-VL/RelEx "
    "and pass --relex <that folder>"
)


class Centred(nn.Module):
    """The model seen on b-centred images: net(z) = model(z + b)."""

    def __init__(self, model: nn.Module, b: torch.Tensor):
        super().__init__()
        self.model, self.b = model, b

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z + self.b)


def authors_relex(path: Path):
    """The authors' RelEx class, loaded from their file (it imports only torch)."""
    spec = importlib.util.spec_from_file_location("authors_relex", path / RELEX_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RelEx


def theirs(cls, model, x, t, seed: int, iterations: int) -> torch.Tensor:
    """The authors' masks, image by image, their noise from torch's global stream seeded by
    `seed` and the image's position."""
    b = model.baseline_colour.to(x)
    net, d = Centred(model, b), x[0].numel()
    out = []
    for i in range(len(x)):
        torch.manual_seed(1000 * seed + i)
        r = cls(net, x[i : i + 1].shape, COPIES, scaled_lr(d), max_iters=iterations,
                lambda1=scaled_l1(d), device=x.device)  # fmt: skip
        mask, _ = r(x[i : i + 1] - b, target_cls=int(t[i]))
        out.append(mask.detach())
    return torch.cat(out)


def ours(model, idx, x, t, seed: int, iterations: int) -> torch.Tensor:
    ctx = Context([f"{seed}/{int(i)}/relex" for i in idx])
    return relex(model, x, t, ctx, iterations=iterations)


def iou(a: torch.Tensor, b: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """Per image, the IoU of the top-20% pixels of two masks (ties in one keyed order)."""
    ta, tb = top_fraction(a, 0.2, keys).bool(), top_fraction(b, 0.2, keys).bool()
    return (ta & tb).flatten(1).sum(1) / (ta | tb).flatten(1).sum(1)


def kept(model, x, m, t) -> float:
    b = model.baseline_colour.to(x)
    with torch.no_grad():
        return float((model(m * x + (1 - m) * b).argmax(1) == t).float().mean())


def relex_part(path: Path | None, n: int, emit) -> None:
    emit("## RelEx: ours against the authors' code", "")
    if path is None:
        emit(RELEX_HOW, "")
        return
    cls = authors_relex(path)
    model, idx, x, t = default_images(n)
    keys = [f"0/{int(i)}/agreement" for i in idx]
    runs = {
        "ours": lambda seed, iterations: ours(model, idx, x, t, seed, iterations),
        "theirs": lambda seed, iterations: theirs(cls, model, x, t, seed, iterations),
    }
    masks, seconds = {}, {}
    for who, run in runs.items():
        for seed, iterations in ((0, 50), (1, 50), (0, 100)):
            start = time.perf_counter()
            masks[who, seed, iterations] = run(seed, iterations)
            seconds[who, seed, iterations] = time.perf_counter() - start

    def pair(a, b) -> str:
        rho, both = spearman(a.flatten(1), b.flatten(1)), iou(a, b, keys)
        return " | ".join(f"{v.mean():.3f} ({v.min():.2f}-{v.max():.2f})" for v in (rho, both))

    emit(
        f"{n} default images, 50 iterations unless said; Spearman over mask elements | IoU of "
        "the top-20% pixels, means over images (range over images).",
        "",
        "| comparison | Spearman | top-20% IoU |",
        "|---|---:|---:|",
        f"| ours vs theirs (seed 0) | {pair(masks['ours', 0, 50], masks['theirs', 0, 50])} |",
        f"| theirs seed 0 vs seed 1 | {pair(masks['theirs', 0, 50], masks['theirs', 1, 50])} |",
        f"| ours seed 0 vs seed 1 | {pair(masks['ours', 0, 50], masks['ours', 1, 50])} |",
        f"| ours vs theirs, 100 iterations | "
        f"{pair(masks['ours', 0, 100], masks['theirs', 0, 100])} |",
        "",
        "| code, iterations | positive elements | class kept | seconds |",
        "|---|---:|---:|---:|",
    )
    for (who, seed, iterations), m in masks.items():
        if seed:
            continue
        share = float((m > 0).float().mean())
        emit(
            f"| {who}, {iterations} | {share:.1%} | {kept(model, x, m, t):.0%} | "
            f"{seconds[who, seed, iterations]:.0f} |"
        )
    emit("")


FOOLBOX_HOW = (
    "skipped: pass --foolbox, with foolbox installed (pip install foolbox==3.3.4, the version "
    "the authors' zifanw/boundary uses)"
)


def foolbox_cw(model, x, t, steps: int, binary: int, abort_early: bool, per_image: bool):
    """foolbox's L2 Carlini-Wagner (the authors' boundary code calls it) at salaudit's CW
    settings: distances (inf where it found nothing), on the batch or one image at a time."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model.eval(), bounds=model.value_range)
    attack = fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=binary, steps=steps, stepsize=0.01, initial_const=1e-3,
        abort_early=abort_early,
    )  # fmt: skip
    parts = [slice(i, i + 1) for i in range(len(x))] if per_image else [slice(None)]
    out = []
    for sl in parts:
        adv = attack.run(fmodel, x[sl], fb.criteria.Misclassification(t[sl]))
        with torch.no_grad():
            hit = model(adv).argmax(1) != t[sl]
        d = (adv - x[sl]).flatten(1).norm(dim=1)
        out.append(torch.where(hit, d, torch.full_like(d, math.inf)))
    return torch.cat(out)


def cw_part(use: bool, n: int, emit) -> None:
    """salaudit's CW (`boundary_search._cw`) against foolbox's on the same images, settings
    and targets: mean L2 of the adversarial points each finds."""
    emit("## Carlini-Wagner L2: ours against foolbox's", "")
    if not use or importlib.util.find_spec("foolbox") is None:
        emit(FOOLBOX_HOW, "")
        return
    from salaudit.methods.boundary_search import BoundaryConfig, _cw

    model, _, x, t = default_images(n)
    emit(
        f"{n} default images, targets the clean predictions; 9 binary steps from c = 1e-3, "
        "Adam lr 0.01. Distance ratio: per image ours / foolbox's, where both succeed.",
        "",
        "| steps | foolbox run | foolbox found | ours found | foolbox mean L2 | ours mean L2 "
        "| ours / foolbox: mean (max) | ours farther on |",
        "|---:|---|---:|---:|---:|---:|---|---:|",
    )
    for steps in (100,):
        cfg = BoundaryConfig(finders=("cw",), cw_binary_steps=9, cw_steps=steps)
        with torch.no_grad():
            _, ours_d = _cw(model, x, t, cfg.resolved(model), micro_batch=64)
        for label, abort, per_image in (
            ("batch, abort early", True, False),
            ("per image, abort early", True, True),
            ("batch, no abort", False, False),
        ):
            theirs_d = foolbox_cw(model, x, t, steps, 9, abort, per_image)
            both = torch.isfinite(ours_d) & torch.isfinite(theirs_d)
            r = ours_d[both] / theirs_d[both]
            emit(
                f"| {steps} | {label} | {int(torch.isfinite(theirs_d).sum())}/{n} | "
                f"{int(torch.isfinite(ours_d).sum())}/{n} | {theirs_d[both].mean():.4f} | "
                f"{ours_d[both].mean():.4f} | {r.mean() - 1:+.2%} ({r.max() - 1:+.2%}) | "
                f"{int((r > 1 + 1e-4).sum())}/{int(both.sum())} |"
            )
    emit("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--relex", type=Path, default=None, help="a clone of JBNU-VL/RelEx")
    ap.add_argument("--foolbox", action="store_true", help="compare CW with foolbox 3.3.4's")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    emit = Output(args.out)
    emit(
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads; torch "
        f"{torch.__version__}; {date.today()}; the default model, the first {args.images} "
        "of 64 seeded test images.",
        "",
    )
    relex_part(args.relex, args.images, emit)
    cw_part(args.foolbox, args.images, emit)
    emit.write()


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

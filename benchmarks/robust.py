"""RelEx and BIG throughput: the batched engine against a per-image loop and the floor, in one run.

Rows are model inputs per second (forward passes; all of RelEx's and IG's rows and most of the
boundary search's also run backward). The per-image alternatives use the authors' settings:
RelEx as its authors' code runs it, one image at a time, each iteration one batch of 50 noisy
copies through the model for each of the two data terms (written out below with
torch.optim.SGD); BIG as one boundary search per image (the same ensemble, batch of one) and
Captum's IntegratedGradients from the boundary point (20 Gauss-Legendre steps). Usage:

    python benchmarks/robust.py [--images 32] [--device cpu|cuda] [--out results.md]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients
from common import Bench, floor, timed

from salaudit import get_method
from salaudit.methods.boundary_search import BoundaryConfig, find_boundary
from salaudit.methods.gradients import Context
from salaudit.methods.relex import scaled_l1, scaled_lr


class RowCounter:
    """Counts the rows that go through a model's forward."""

    def __init__(self, model):
        self.rows = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, _module, args):
        self.rows += len(args[0])


def relex_one_image(model, x, c, n_noise=50, iterations=100):
    """RelEx for one image, the authors' loop: SGD with momentum on the unit-norm gradient."""
    d = x.numel()
    b = model.baseline_colour.to(x)
    sigma = 0.1 * (x.max() - x.min())
    mask = (torch.rand_like(x) * 0.01)[None].requires_grad_(True)
    opt = torch.optim.SGD([mask], lr=scaled_lr(d), momentum=0.99)
    for _ in range(iterations):
        copies = x + sigma * torch.randn(n_noise, *x.shape, device=x.device)
        kept = F.log_softmax(model(mask * copies + (1 - mask) * b), 1)[:, c]
        removed = F.softmax(model((1 - mask) * copies + mask * b), 1)[:, c]
        loss = -kept.mean() + scaled_l1(d) * mask.sum() - torch.log(1 - removed + 1e-7).mean()
        opt.zero_grad()
        loss.backward()
        mask.grad /= mask.grad.norm()
        opt.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
    return mask.detach()[0]


def main() -> None:
    bench = Bench.from_args(__doc__, images=32)
    model, x, target, keys, mb = bench.model, bench.x, bench.target, bench.keys, bench.micro_batch
    device = bench.device
    counter = RowCounter(model)

    def measure(fn):
        counter.rows = 0
        seconds = timed(fn, device)
        return counter.rows, seconds

    full, full_b, full_fmt = floor(model, device)
    bench.head(
        f"Floor (full model): {full:,.0f} rows/s at batch {full_b} ({full_fmt}).",
        "per-image loop",
    )
    report = bench.report

    relex = get_method("relex")
    rows, seconds = measure(lambda: relex(model, x, target, Context(keys, mb)))
    _, loop = measure(lambda: [relex_one_image(model, x[i], int(target[i])) for i in range(len(x))])
    report("relex (100 iterations x 2 x 50 copies)", rows, seconds, full, loop)

    config = BoundaryConfig()
    found = None

    def search():
        nonlocal found
        found = find_boundary(model, x, target, config, Context(keys, mb))

    rows, seconds = measure(search)
    per_image = []
    _, loop_search = measure(
        lambda: per_image.extend(
            find_boundary(model, x[i : i + 1], target[i : i + 1], config, Context(keys[i : i + 1]))
            for i in range(len(x))
        )
    )
    report(
        f"boundary search ({found.success.float().mean():.0%} found)",
        rows,
        seconds,
        full,
        loop_search,
    )
    big = get_method("big")
    rows_big, seconds_big = measure(
        lambda: big(model, x, target, Context(keys, mb, extra={"boundary": found}))
    )
    captum = IntegratedGradients(model)
    _, loop_big = measure(
        lambda: [
            captum.attribute(
                x[i : i + 1],
                per_image[i].point,
                target=int(target[i]),
                n_steps=20,
                method="gausslegendre",
            )
            for i in range(len(x))
        ]
    )
    report("big integration (20 steps)", rows_big, seconds_big, full, loop_big)
    report(
        "big, search included",
        rows + rows_big,
        seconds + seconds_big,
        full,
        loop_search + loop_big,
    )
    bench.write()


if __name__ == "__main__":
    main()

"""Throughput of the attacks and the model-bound metrics, batched, against a per-image loop of
the same functions and against the bare forward+backward floor of the same model.

Model rows: an explanation-attack step on `grad` is one gradient row and one Hessian-vector row
per image (plus a forward for the label check), counted as 2 rows; PGD is one gradient row per
image, radius and step; deletion/preservation are forward rows (2 x 65 per image).

    python benchmarks/attacks_metrics.py --images 16 [--out table.md]
"""

from __future__ import annotations

import torch
from common import Bench, floor, timed

import salaudit as metrics
from salaudit.attacks.catalogue import attacks
from salaudit.methods.gradients import Context, grad

STEPS = 20
RADII = (2, 8, 32)
REPEATS = 3  # best of 3, as the other benchmarks: the first run pays for warm-up


def main() -> None:
    bench = Bench.from_args(__doc__.split("\n\n")[0], images=16)
    model, x, target, dev = bench.model, bench.x, bench.target, bench.device
    rate, batch, fmt = floor(model, dev)
    bench.head(
        f"Floor: {rate:,.0f} rows/s forward+backward (batch {batch}, {fmt}).", "per-image loop"
    )
    n = len(x)

    def ctx(keys):
        return Context([f"{k}/grad" for k in keys], bench.micro_batch)

    def topk(rows):
        return attacks()["topk"].fn(
            model,
            x[rows],
            target[rows],
            "grad",
            ctx([bench.keys[i] for i in rows.tolist()]),
            steps=STEPS,
        )

    def pgd(rows):
        return attacks()["pgd"].fn(
            model,
            x[rows],
            target[rows],
            None,
            ctx([bench.keys[i] for i in rows.tolist()]),
            radii=RADII,
            steps=STEPS,
        )

    e = grad(model, x, target)
    mask = metrics.saliency_mask(e)

    def deletion(rows):
        return metrics.deletion_preservation(
            model, x[rows], mask[rows], target[rows], micro_batch=bench.micro_batch
        )

    def fidelity(rows):
        return metrics.fidelity(
            model, x[rows], e[rows], target[rows], micro_batch=bench.micro_batch
        )

    work = [
        (f"topk@grad, {STEPS} steps", topk, n * 2 * STEPS),
        (f"pgd, {len(RADII)} radii x {STEPS} steps", pgd, n * len(RADII) * (STEPS + 2)),
        ("deletion + preservation", deletion, n * 2 * 65),
        ("fidelity", fidelity, n),
    ]
    everything = torch.arange(n)
    for what, fn, rows in work:
        batched = timed(lambda fn=fn: fn(everything), dev, REPEATS)
        loop = timed(lambda fn=fn: [fn(torch.tensor([i])) for i in range(n)], dev, REPEATS)
        bench.report(what, rows, batched, rate, loop)
    bench.write()


if __name__ == "__main__":
    main()

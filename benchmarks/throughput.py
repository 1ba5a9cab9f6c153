"""Engine throughput against the floor and against a per-image Captum loop, in one run.

The floor is the best bare forward+backward throughput of the same model over batch sizes (and
memory formats); for decoy optimisation, through the layers up to the decoy layer. The engine's
rate counts model rows (images x steps x samples x decoys) per second. The alternative calls
Captum once per image on that image's decoys (or steps). Usage:

    python benchmarks/throughput.py [--images 64] [--device cpu|cuda] [--out results.md]
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients, Saliency
from common import Bench, floor, timed

from salaudit import get_method
from salaudit.methods.decoys import make_decoys
from salaudit.methods.gradients import Context


def main() -> None:
    bench = Bench.from_args(__doc__, images=64)
    model, x, target, keys, mb = bench.model, bench.x, bench.target, bench.keys, bench.micro_batch
    device = bench.device
    full, full_b, full_fmt = floor(model, device)
    dance = get_method("dance-grad").resolved(model)
    layer = dance.decoys.layer
    part, part_b, part_fmt = floor(model, device, layer)
    bench.head(
        f"Floor (full model): {full:,.0f} rows/s at batch {full_b} ({full_fmt}); floor to "
        f"`{layer}`: {part:,.0f} rows/s at batch {part_b} ({part_fmt}).",
        "per-image Captum",
    )

    ig = get_method("ig")
    ctx = Context(keys, mb)
    t_ig = timed(lambda: ig(model, x, target, ctx), device, 3)
    captum_ig = IntegratedGradients(model)
    t_cap_ig = timed(
        lambda: [
            captum_ig.attribute(x[i : i + 1], target=int(target[i]), n_steps=50)
            for i in range(len(x))
        ],
        device,
        3,
    )
    rows_ig = len(x) * 50
    bench.report("ig (50 steps)", rows_ig, t_ig, full, t_cap_ig)

    decoys = None

    def optimise():
        nonlocal decoys
        decoys = make_decoys(model, x, dance.decoys, Context(keys, mb))

    t_opt = timed(optimise, device)
    bench.report(
        f"decoy optimisation to `{layer}` ({decoys.population.shape[1]} decoys/image, "
        f"{decoys.success.float().mean():.1%} succeed)",
        int(decoys.passes.sum()),
        t_opt,
        part,
    )

    k1 = decoys.population.shape[1] + 1
    population = torch.cat([x[:, None], decoys.population], 1)
    saliency = Saliency(model)
    t_dg = timed(lambda: dance.decoy_maps(model, x, target, decoys, Context(keys, mb)), device, 3)
    t_cap_dg = timed(
        lambda: [
            saliency.attribute(population[i], target=int(target[i]), abs=False)
            for i in range(len(x))
        ],
        device,
        3,
    )
    bench.report("dance-grad saliency over decoys", len(x) * k1, t_dg, full, t_cap_dg)

    dance_ig = get_method("dance-ig").resolved(model)
    t_di = timed(lambda: dance_ig.decoy_maps(model, x, target, decoys, Context(keys, mb)), device)
    t_cap_di = timed(
        lambda: [
            captum_ig.attribute(population[i], target=int(target[i]), n_steps=50)
            for i in range(len(x))
        ],
        device,
    )
    rows_di = len(x) * k1 * 50
    bench.report("dance-ig saliency over decoys (50 steps)", rows_di, t_di, full, t_cap_di)

    bench.write()


if __name__ == "__main__":
    main()

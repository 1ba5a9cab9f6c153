"""Every method and attack of the default audit at 224 x 224 on torchvision nets with random
weights (nothing downloaded): rows through the model per second, the ratio to the bare
forward+backward floor of the same net measured in the same run, the ratio to Captum called
once per image where Captum has the method, and peak memory.

Rows are counted by a hook on the net (every row of every micro-batch; DANCE's optimisation
rows go to the decoy layer only and are compared with the floor to that layer). An explanation
attack's rows are of three kinds: maps (forward+backward), predictions (forward only) and
Hessian-vector products through the softplus copy (forward, backward with its graph, and the
backward of that, about 4 floor rows on resnet18); its own floor is those rows at the bare rates
of the three, measured in the same run ("/ own floor"). Calls of a few seconds are timed as the
best of 3, ours and Captum's alike. On a CPU a resnet18 image costs seconds to minutes per
method, so keep `--images` to a few.

    python benchmarks/real_size.py [--archs resnet18,resnet50] [--images 2] [--device cpu|cuda]
        [--precision fp32|bf16] [--methods grad,ig,...] [--out table.md]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, floor, timed  # noqa: E402

from salaudit.attacks.catalogue import attack_info, attack_params, parse_attack  # noqa: E402
from salaudit.attacks.explanation import GHORBANI  # noqa: E402
from salaudit.engine.batching import size_micro_batch  # noqa: E402
from salaudit.inputs.models import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_LAYERS,
    PixelModel,
)
from salaudit.methods.context import Context  # noqa: E402
from salaudit.methods.decoys import make_decoys  # noqa: E402
from salaudit.methods.differentiable import hessian_vector, softplus_copy  # noqa: E402
from salaudit.methods.registry import get_method  # noqa: E402
from salaudit.pipeline.spec import AuditSpec  # noqa: E402

METHODS = "grad,ig,smoothgrad,dance-grad,relex"
QUICK = 5.0  # seconds: calls shorter than this are timed as the best of 3
ATTACKS = "topk@grad,mass-center@grad,pgd"


def torchvision_model(arch: str, device: torch.device, precision: str) -> PixelModel:
    """A torchvision classifier with random weights (seeded), wrapped as `load_model` does."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None)
    model = PixelModel(
        net,
        input_shape=(3, 224, 224),
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        layers=TORCHVISION_LAYERS.get(arch),
    ).eval()
    model.requires_grad_(False)
    model.precision = precision
    return model.to(memory_format=torch.channels_last).to(device)


class Rows:
    """Rows through the net and to the decoy layer, counted by forward hooks (copied with the
    net into an attack's softplus copy), and the net's rows by kind: with gradients, without,
    through a softplus copy (Hessian-vector products)."""

    def __init__(self, model: PixelModel, layer: str):
        self.full = self.layer = 0
        self.kinds = dict.fromkeys(KINDS, 0)
        first = next(m for m in model.net.modules() if not list(m.children()))
        self.hooks = [
            model.net.register_forward_hook(lambda m, i, _o: self._add("full", i, m)),
            first.register_forward_hook(lambda _m, i, _o: self._add("layer", i)),
        ]

    def _add(self, which: str, inputs, net: torch.nn.Module | None = None) -> None:
        setattr(self, which, getattr(self, which) + len(inputs[0]))
        if net is not None:
            soft = any(isinstance(m, torch.nn.Softplus) for m in net.modules())
            kind = "hvp" if soft else "grad" if torch.is_grad_enabled() else "forward"
            self.kinds[kind] += len(inputs[0])

    def reset(self) -> None:
        self.full = self.layer = 0
        self.kinds = dict.fromkeys(KINDS, 0)


KINDS = ("grad", "forward", "hvp")


def kind_rates(model: PixelModel, device: torch.device, batch: int) -> dict[str, float]:
    """Bare rows/s of each kind of row at `batch`: forward+backward, forward only, and a
    Hessian-vector product through the softplus copy the attacks use (best of 3)."""
    soft, _ = softplus_copy(model, GHORBANI["beta"])
    x = torch.rand(batch, *model.input_shape, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    v = torch.rand_like(x)

    def grad():
        p = x.detach().requires_grad_(True)
        torch.autograd.grad(model(p)[:, 0].sum(), p)

    def forward():
        with torch.no_grad():
            model(x)

    calls = {"grad": grad, "forward": forward, "hvp": lambda: hessian_vector(soft, x, t, v)}
    for fn in calls.values():
        fn()
    return {k: batch / timed(fn, device, repeats=3) for k, fn in calls.items()}


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB (process RSS)"


def captum_loop(name: str, method, model, x, target, decoys=None):
    """The same maps by Captum, called once per image (None where Captum has no such method)."""
    if name == "grad":
        sal = Saliency(model)
        return lambda: [
            sal.attribute(x[i : i + 1], target=int(target[i]), abs=False) for i in range(len(x))
        ]
    if name == "ig":
        ig = IntegratedGradients(model)
        steps = method.params["n_steps"]
        return lambda: [
            ig.attribute(x[i : i + 1], target=int(target[i]), n_steps=steps) for i in range(len(x))
        ]
    if name == "smoothgrad":
        nt = NoiseTunnel(Saliency(model))
        n, noise = method.params["n_samples"], method.params["noise"]
        sigma = [noise * float(x[i].max() - x[i].min()) for i in range(len(x))]  # ours: x's range
        return lambda: [
            nt.attribute(
                x[i : i + 1],
                target=int(target[i]),
                nt_type="smoothgrad",
                nt_samples=n,
                stdevs=sigma[i],
                abs=False,
            )
            for i in range(len(x))
        ]
    if name.startswith("dance-") and decoys is not None:  # the base maps over the population
        sal = Saliency(model)
        pop = torch.cat([x[:, None], decoys.population], 1)
        return lambda: [
            sal.attribute(pop[i], target=int(target[i]), abs=False) for i in range(len(x))
        ]
    return None


@dataclass
class Case:
    """One net at 224 on the bench: its inputs, floors, row counter and the table's lines."""

    model: PixelModel
    x: torch.Tensor
    target: torch.Tensor
    micro_batch: int
    floor: float
    layer: str
    layer_floor: float
    rows: Rows
    emit: Callable[..., None]
    rates: dict[str, float]  # bare rows/s by kind (`kind_rates`)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def ctx(self, stage: str) -> Context:
        return Context([f"0/{i}/{stage}" for i in range(len(self.x))], self.micro_batch)

    def row(self, what: str, n: int, seconds: float, rate_floor: float, alt=None, own=None) -> None:
        rate = n / seconds
        vs = f"{alt / seconds:.2f}x" if alt else "-"
        mine = f"{own / seconds:.2f}" if own else "-"
        self.emit(
            f"| {what} | {n:,} | {seconds:.2f} | {seconds / len(self.x):.2f} | {rate:,.1f} | "
            f"{rate / rate_floor:.2f} | {mine} | {vs} | {peak_memory(self.device)} |"
        )

    def timed_rows(self, fn: Callable[[], object]) -> tuple[int, int, float]:
        """(rows through the net, rows to the decoy layer only, seconds) of one call; a call
        of under QUICK seconds is timed as the best of 3."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rows.reset()
        seconds = timed(fn, self.device)
        full, layer, self.kinds = self.rows.full, self.rows.layer, dict(self.rows.kinds)
        if seconds < QUICK:
            seconds = min(seconds, timed(fn, self.device, repeats=2))
        return full, layer - full, seconds

    def own_floor(self) -> float:
        """Seconds of the last timed call's rows at the bare rate of each kind."""
        return sum(n / self.rates[k] for k, n in self.kinds.items())


def bench_method(case: Case, spec: AuditSpec, name: str) -> None:
    settings = spec.decoys.get("dance") if name.startswith("dance-") else None
    method = get_method(name, spec.methods.get(name), settings).resolved(case.model)
    model, x, target, ctx = case.model, case.x, case.target, case.ctx(name)
    if method.decoys is None:
        full, _, seconds = case.timed_rows(lambda: method(model, x, target, ctx))
        alt = captum_loop(name, method, model, x, target)
        case.row(name, full, seconds, case.floor, alt and best_time(alt, case.device))
        return
    made = []
    _, to_layer, seconds = case.timed_rows(
        lambda: made.append(make_decoys(model, x, method.decoys, ctx))
    )
    decoys = made[0]
    share = decoys.success.float().mean()
    what = f"{name}: {decoys.population.shape[1]} decoys ({share:.0%} succeed), to `{case.layer}`"
    case.row(what, to_layer, seconds, case.layer_floor)
    full, _, seconds = case.timed_rows(lambda: method.decoy_maps(model, x, target, decoys, ctx))
    alt = captum_loop(name, method, model, x, target, decoys)
    case.row(
        f"{name}: maps of x and its decoys",
        full,
        seconds,
        case.floor,
        alt and best_time(alt, case.device),
    )


def bench_attack(case: Case, spec: AuditSpec, name: str) -> None:
    attack, on = parse_attack(name)
    info = attack_info(name)
    params = attack_params(name, spec.attack_params.get(attack, {}))
    if info.labels:
        params[info.labels] = tuple(spec.radii)
    model, x, target, ctx = case.model, case.x, case.target, case.ctx(name)
    if on:
        args = (model, x, target, on, ctx, dict(get_method(on).params))
    else:
        args = (model, x, target, None, ctx)
    full, _, seconds = case.timed_rows(lambda: info.fn(*args, **params))
    kinds = ", ".join(f"{n:,} {k}" for k, n in case.kinds.items() if n)
    case.row(f"attack {name} ({kinds})", full, seconds, case.floor, own=case.own_floor())


def best_time(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of `fn`, the best of 3 where one call takes under QUICK seconds."""
    seconds = timed(fn, device)
    return min(seconds, timed(fn, device, repeats=2)) if seconds < QUICK else seconds


def bench_arch(
    arch: str, args: argparse.Namespace, emit: Callable[..., None], spec: AuditSpec | None = None
) -> None:
    """The table of one torchvision net: every method and attack of `spec` (default: the
    default audit's settings) on `args.images` random images."""
    device = torch.device(args.device)
    spec = spec or AuditSpec()
    model = torchvision_model(arch, device, args.precision)
    sizing = size_micro_batch(model, device)
    torch.manual_seed(1)
    x = torch.rand(args.images, 3, 224, 224, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)
    # batches up to the micro-batch the engine uses (at 224 a CPU batch of 512 is 11 GB)
    batches = [b for b in (2, 4, 8, 16, 32, 64, 128, 256, 512) if b <= max(2, sizing.rows)]
    full, full_b, _ = floor(model, device, seconds=2.0, batches=batches)
    layer = get_method("dance-grad").resolved(model).decoys.layer
    part, part_b, _ = floor(model, device, layer, seconds=2.0, batches=batches)
    rates = kind_rates(model, device, full_b)
    emit(
        f"### {arch} ({sizing})",
        "",
        f"Floor: {full:,.1f} rows/s (batch {full_b}); to `{layer}`: {part:,.1f} rows/s "
        f"(batch {part_b}). At batch {full_b}, bare rows/s: "
        + ", ".join(f"{k} {r:,.1f}" for k, r in rates.items())
        + ".",
        "",
        "| stage | rows | seconds | s/image | rows/s | / floor | / own floor | "
        "vs per-image Captum | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    )
    rows = Rows(model, layer)
    case = Case(model, x, target, sizing.rows, full, layer, part, rows, emit, rates)
    for name in filter(None, args.methods.split(",")):
        bench_method(case, spec, name)
    for name in filter(None, args.attacks.split(",")):
        bench_attack(case, spec, name)
    emit("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="resnet18")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--attacks", default=ATTACKS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    machine = gpu or f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    emit = Output(args.out)
    emit(
        f"Machine: {machine}; torch {torch.__version__}; {date.today()}; {args.images} random "
        f"224x224 images; precision {args.precision}.",
        "",
    )
    for arch in args.archs.split(","):
        bench_arch(arch, args, emit)
    emit.write()


if __name__ == "__main__":
    main()

"""Every method and attack of the default audit at 224 x 224 on torchvision nets with random
weights (nothing downloaded): rows through the model per second, the ratio to the bare
forward+backward floor of the same net measured in the same run, the ratio to Captum called
once per image where Captum has the method, and peak memory.

Rows are counted by a hook on the net (every row of every micro-batch; DANCE's optimisation
rows go to the decoy layer only and are compared with the floor to that layer). On a CPU a
resnet18 image costs seconds to minutes per method, so keep `--images` to a few.

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
from common import floor, timed  # noqa: E402

from salaudit.attacks.catalogue import attack_info, attack_params, parse_attack  # noqa: E402
from salaudit.engine.batching import size_micro_batch  # noqa: E402
from salaudit.inputs.models import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_LAYERS,
    PixelModel,
)
from salaudit.methods.context import Context  # noqa: E402
from salaudit.methods.decoys import make_decoys  # noqa: E402
from salaudit.methods.registry import get_method  # noqa: E402
from salaudit.pipeline.spec import AuditSpec  # noqa: E402

METHODS = "grad,ig,smoothgrad,dance-grad,relex"
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
    """Rows through the net and to the decoy layer, counted by forward hooks."""

    def __init__(self, model: PixelModel, layer: str):
        self.full = self.layer = 0
        first = next(m for m in model.net.modules() if not list(m.children()))
        self.hooks = [
            model.net.register_forward_hook(lambda _m, i, _o: self._add("full", i)),
            first.register_forward_hook(lambda _m, i, _o: self._add("layer", i)),
        ]

    def _add(self, which: str, inputs) -> None:
        setattr(self, which, getattr(self, which) + len(inputs[0]))

    def reset(self) -> None:
        self.full = self.layer = 0


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

    @property
    def device(self) -> torch.device:
        return self.x.device

    def ctx(self, stage: str) -> Context:
        return Context([f"0/{i}/{stage}" for i in range(len(self.x))], self.micro_batch)

    def row(self, what: str, n: int, seconds: float, rate_floor: float, alt=None) -> None:
        rate = n / seconds
        vs = f"{alt / seconds:.2f}x" if alt else "-"
        self.emit(
            f"| {what} | {n:,} | {seconds:.2f} | {seconds / len(self.x):.2f} | {rate:,.1f} | "
            f"{rate / rate_floor:.2f} | {vs} | {peak_memory(self.device)} |"
        )

    def timed_rows(self, fn: Callable[[], object]) -> tuple[int, int, float]:
        """(rows through the net, rows to the decoy layer only, seconds) of one call."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rows.reset()
        seconds = timed(fn, self.device)
        return self.rows.full, self.rows.layer - self.rows.full, seconds


def bench_method(case: Case, spec: AuditSpec, name: str) -> None:
    settings = spec.decoys.get("dance") if name.startswith("dance-") else None
    method = get_method(name, spec.methods.get(name), settings).resolved(case.model)
    model, x, target, ctx = case.model, case.x, case.target, case.ctx(name)
    if method.decoys is None:
        full, _, seconds = case.timed_rows(lambda: method(model, x, target, ctx))
        alt = captum_loop(name, method, model, x, target)
        case.row(name, full, seconds, case.floor, alt and timed(alt, case.device))
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
        alt and timed(alt, case.device),
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
    case.row(f"attack {name}", full, seconds, case.floor)


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
    emit(
        f"### {arch} ({sizing})",
        "",
        f"Floor: {full:,.1f} rows/s (batch {full_b}); to `{layer}`: {part:,.1f} rows/s "
        f"(batch {part_b}).",
        "",
        "| stage | rows | seconds | s/image | rows/s | / floor | vs per-image Captum | "
        "peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    )
    case = Case(model, x, target, sizing.rows, full, layer, part, Rows(model, layer), emit)
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
    lines: list[str] = []

    def emit(*text: str) -> None:
        print("\n".join(text), flush=True)
        lines.extend(text)

    emit(
        f"Machine: {machine}; torch {torch.__version__}; {date.today()}; {args.images} random "
        f"224x224 images; precision {args.precision}.",
        "",
    )
    for arch in args.archs.split(","):
        bench_arch(arch, args, emit)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""What every benchmark shares: the seeded default inputs, timing, the floor and the table."""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field
from datetime import date

import torch

from salaudit import load_dataset, load_model
from salaudit.engine.batching import micro_batch_size
from salaudit.engine.layers import forward_to
from salaudit.inputs.selection import Selection, select_samples

BATCHES = (8, 16, 32, 64, 128, 256, 512)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int = 1) -> float:
    """Seconds of the fastest of `repeats` runs (the floor is a best too)."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def floor(model, device, layer=None, seconds=2.0, batches=BATCHES) -> tuple[float, int, str]:
    """Best rows/s of bare forward+backward (to `layer` if given) over batch sizes and memory
    formats, each the median of 5 repeats."""
    best = (0.0, 0, "")
    for fmt in (torch.channels_last, torch.contiguous_format):
        net = model.to(memory_format=fmt)
        for b in batches:
            x = torch.rand(b, *model.input_shape, device=device)

            def step(x=x, net=net):
                xx = x.detach().requires_grad_(True)
                out = forward_to(net, layer, xx) if layer else net(xx)
                torch.autograd.grad(out.sum(), xx)

            step()
            rates = []
            for _ in range(5):  # the median of 5 repeats: one noisy repeat does not set it
                n, spent = 0, 0.0
                while spent < seconds / 5:
                    spent += timed(step, device)
                    n += 1
                rates.append(n * b / spent)
            rate = sorted(rates)[2]
            if rate > best[0]:
                best = (rate, b, "channels_last" if fmt is torch.channels_last else "NCHW")
    model.to(memory_format=torch.channels_last)
    return best


@dataclass
class Output:
    """A benchmark's markdown: each call prints its lines and keeps them; `write` saves them
    to `out` (nothing where it is None)."""

    out: str | None = None
    lines: list[str] = field(default_factory=list)

    def __call__(self, *text: str) -> None:
        print("\n".join(text), flush=True)
        self.lines.extend(text)

    def write(self) -> None:
        if self.out:
            with open(self.out, "w") as f:
                f.write("\n".join(self.lines) + "\n")


@dataclass
class Bench:
    """The default model on `images` seeded test images, their targets and sample keys."""

    images: int
    device: torch.device
    out: str | None
    model: torch.nn.Module = field(init=False)
    x: torch.Tensor = field(init=False)
    target: torch.Tensor = field(init=False)
    keys: list[str] = field(init=False)
    micro_batch: int = field(init=False)
    output: Output = field(init=False)

    def __post_init__(self):
        self.model = load_model("builtin:digit-scenes-cnn", device=self.device)
        data = load_dataset("builtin:digit-scenes")
        idx = select_samples(data, Selection("random", self.images, seed=0))
        self.x = data.load(idx).image.to(self.device)
        with torch.no_grad():
            self.target = self.model(self.x).argmax(1)
        self.keys = [f"0/{int(i)}" for i in idx]
        self.micro_batch = micro_batch_size(self.model, self.device)
        self.output = Output(self.out)

    @classmethod
    def from_args(cls, doc: str, images: int) -> Bench:
        ap = argparse.ArgumentParser(description=doc)
        ap.add_argument("--images", type=int, default=images)
        ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        ap.add_argument("--out", default=None, help="also write the markdown table here")
        args = ap.parse_args()
        return cls(args.images, torch.device(args.device), args.out)

    def head(self, floors: str, alternative: str) -> None:
        """Print (and keep) the machine line, the floors and the table's header."""
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
        machine = gpu or f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
        self._emit(
            f"Machine: {machine}; torch {torch.__version__}; {date.today()}; {self.images} "
            f"seeded test images; engine micro-batch {self.micro_batch}.",
            floors,
            "",
            f"| stage | model rows | seconds | rows/s | / floor | vs {alternative} |",
            "|---|---|---|---|---|---|",
        )

    def report(self, what: str, rows: int, seconds: float, floor_rate: float, alt=None) -> None:
        """One table row; `alt` is the alternative's seconds for the same work."""
        rate = rows / seconds
        speedup = f"{alt / seconds:.2f}x" if alt else "-"
        self._emit(
            f"| {what} | {rows:,} | {seconds:.2f} | {rate:,.0f} | {rate / floor_rate:.2f} | "
            f"{speedup} |"
        )

    def _emit(self, *lines: str) -> None:
        self.output(*lines)

    def write(self) -> None:
        self.output.write()

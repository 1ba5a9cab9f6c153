"""The GPU checks in one command (under 8 minutes on one H100/H200): the `gpu`-marked tests
(the audit on LocalCUDACluster equal to the CPU library), then resnet50 at 224 in fp32 and bf16
through grad, ig, smoothgrad, dance-grad, dance-ig (16 decoys, 20 IG steps: the 1M-image goal's
method) and big: rows/s, ratio to the bare forward+backward floor, ratio to Captum called per
image, peak GPU memory. Writes one markdown file (default gpu-results.md, or $OUT/gpu.md).

    python benchmarks/gpu.py [--images 64] [--out FILE]     # or: make bench-gpu
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_size import bench_arch  # noqa: E402

from salaudit.pipeline.spec import AuditSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = "grad,ig,smoothgrad,dance-grad,dance-ig,big"


def gpu_tests() -> str:
    """The gpu-marked tests' summary line."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
    return f"`pytest -m gpu`: {tail[0]} (exit {done.returncode})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu.md"))
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device; none is visible (torch.cuda)")
    lines: list[str] = [f"# GPU checks: {torch.cuda.get_device_name()}", ""]

    def emit(*text: str) -> None:
        print("\n".join(text), flush=True)
        lines.extend(text)
        Path(args.out).write_text("\n".join(lines) + "\n")  # kept if a later step times out

    stamp = time.perf_counter()
    if not args.skip_tests:
        emit(gpu_tests(), "")
    spec = AuditSpec()
    spec.methods["dance-ig"] = {"n_steps": 20}
    spec.methods["ig"] = {"n_steps": 20}
    for precision in ("fp32", "bf16"):
        run = argparse.Namespace(
            images=args.images,
            device="cuda",
            precision=precision,
            methods=METHODS,
            attacks="",
        )
        emit(f"## resnet50, {precision}", "")
        bench_arch("resnet50", run, emit, spec)
    emit(f"Total {time.perf_counter() - stamp:.0f} s.")


if __name__ == "__main__":
    main()

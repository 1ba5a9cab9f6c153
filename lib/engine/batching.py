"""Micro-batching: rows of model inputs (images x steps x samples x decoys) go through the model
in micro-batches sized to a memory budget, never one image at a time."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SalauditError

# On a 2-core CPU forward+backward throughput peaks at a few dozen rows of a small CNN, and at a
# pass of a few hundred MiB of a large one (resnet18 at 224: 18-19 rows/s from 8 to 32 rows,
# 14.7 at 64 rows, 1.4 GiB; docs/benchmarks.md); on a GPU the memory budget decides.
CPU_MICRO_BATCH = 64
CPU_PASS_BYTES = 512 * 2**20  # what one CPU micro-batch's rows may hold
GPU_MAX_MICRO_BATCH = 4096
MEMORY_FRACTION = {"cuda": 0.5, "cpu": 0.25}  # of the free memory, when no budget is given
UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}

# build(rows) -> (inputs, targets, aux): the rows' model inputs, target classes and anything the
# caller wants handed back with their gradients.
RowBuilder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, Any]]


def parse_bytes(text: str) -> int:
    """'512MB', '4GiB', '2e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.e+]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and UNITS.get(match.group(2).lower() or "b")
    if not unit:
        raise SalauditError(f"memory budget {text!r} is not a size; write e.g. 512MB or 4GiB")
    return int(float(match.group(1)) * unit)


def free_memory(device: torch.device) -> int:
    """Bytes free on `device`: CUDA's free memory, or the RAM the kernel reports available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def pass_bytes(model: torch.nn.Module, rows: int, device: torch.device) -> int:
    """Bytes a forward+backward pass of `rows` rows holds: on CUDA the allocator's peak above
    what was allocated before; on a CPU the input, its gradient and every tensor autograd saves
    for the backward (each storage counted once), weights included."""
    x = torch.rand(rows, *model.input_shape, device=device)
    target = torch.zeros(rows, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        target_gradient(model, x, target)
        return torch.cuda.max_memory_allocated(device) - before
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        target_gradient(model, x, target)
    return sum(storages.values()) + 2 * x.nbytes


def row_bytes(model: torch.nn.Module, device: torch.device | str, probe: int = 2) -> int:
    """Memory one more row adds to a forward+backward pass: the difference between passes of
    2 * probe and probe rows, so weights and buffers drop out."""
    device = torch.device(device)
    extra = pass_bytes(model, 2 * probe, device) - pass_bytes(model, probe, device)
    return max(1, extra // probe)


@dataclass(frozen=True)
class Sizing:
    """A micro-batch and what it was sized from."""

    rows: int
    row_bytes: int
    budget: int

    def __str__(self) -> str:
        return (
            f"micro-batch {self.rows} rows ({self.row_bytes / 2**20:.1f} MiB a row, budget "
            f"{self.budget / 2**20:.0f} MiB)"
        )


def size_micro_batch(
    model: torch.nn.Module, device: torch.device | str, budget: int | None = None
) -> Sizing:
    """Rows per micro-batch so a forward+backward pass fits `budget` bytes (default: a fraction
    of the free memory), measured by a probe on `device`; on a CPU at most 64 rows and
    `CPU_PASS_BYTES` of them (throughput falls beyond), on a GPU at most 4096 rows."""
    device = torch.device(device)
    per_row = row_bytes(model, device)
    if budget is None:
        budget = int(MEMORY_FRACTION[device.type] * free_memory(device))
    if device.type == "cuda":
        cap = GPU_MAX_MICRO_BATCH
    else:
        cap = min(CPU_MICRO_BATCH, CPU_PASS_BYTES // per_row)
    return Sizing(max(1, min(cap, budget // per_row)), per_row, budget)


def micro_batch_size(model: torch.nn.Module, device: torch.device | str) -> int:
    """Rows per micro-batch in the default budget (`size_micro_batch`)."""
    return size_micro_batch(model, device).rows


def target_gradient(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of each row's target logit w.r.t. its input, and the target logits."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x).gather(1, target[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(logits.sum(), x)
    return grad, logits.detach()


def logits(model: torch.nn.Module, x: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """The logits of each row, in micro-batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[s : s + micro_batch]) for s in range(0, len(x), micro_batch)])


def predictions(model: torch.nn.Module, x: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """The predicted class of each row, in micro-batches, without gradients."""
    return logits(model, x, micro_batch).argmax(1)


def row_gradients(
    model: torch.nn.Module, n_rows: int, build: RowBuilder, micro_batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]]:
    """For rows 0..n_rows-1 in micro-batches: (row ids, target-logit gradients, logits, aux),
    with the rows' inputs, targets and aux from `build(rows)`."""
    for start in range(0, n_rows, micro_batch):
        rows = torch.arange(start, min(start + micro_batch, n_rows))
        inputs, target, aux = build(rows)
        grad, logits = target_gradient(model, inputs, target)
        yield rows, grad, logits, aux


def loss_gradient(
    model: torch.nn.Module, x: torch.Tensor, per_row: Callable, micro_batch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the gradient w.r.t. x of `per_row(logits, rows)` (one value per row), its value
    and the logits, in micro-batches."""
    grads, values, logits = [], [], []
    for s in range(0, len(x), micro_batch):
        rows = slice(s, s + micro_batch)
        with torch.enable_grad():
            xb = x[rows].detach().requires_grad_(True)
            out = model(xb)
            value = per_row(out, rows)
            (g,) = torch.autograd.grad(value.sum(), xb)
        grads.append(g)
        values.append(value.detach())
        logits.append(out.detach())
    return torch.cat(grads), torch.cat(values), torch.cat(logits)


def cross_entropy(target: torch.Tensor):
    """Per-row cross-entropy of the target class, for `loss_gradient`."""
    return lambda logits, rows: F.cross_entropy(logits, target[rows], reduction="none")

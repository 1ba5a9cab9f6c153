"""Micro-batching: rows of model inputs (images x steps x samples x decoys) go through the model
in micro-batches sized to a memory budget, never one image at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

# On a 2-core CPU a small CNN's forward+backward throughput peaks at a few dozen rows and falls
# for larger batches (docs/benchmarks.md); on a GPU the budget decides.
CPU_MICRO_BATCH = 64
GPU_MEMORY_FRACTION = 0.5
GPU_MAX_MICRO_BATCH = 4096

# build(rows) -> (inputs, targets, aux): the rows' model inputs, target classes and anything the
# caller wants handed back with their gradients.
RowBuilder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, Any]]


def micro_batch_size(model: torch.nn.Module, device: torch.device | str) -> int:
    """Rows per micro-batch: fixed on a CPU; on a GPU, sized from a probe's peak memory so a
    forward+backward pass fits in a fraction of the free memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_MICRO_BATCH
    probe = 16
    shape = model.input_shape
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    x = torch.rand(probe, *shape, device=device, requires_grad=True)
    target = torch.zeros(probe, dtype=torch.long, device=device)
    target_gradient(model, x, target)
    per_row = max(1, (torch.cuda.max_memory_allocated(device) - before) // probe)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(probe, min(GPU_MAX_MICRO_BATCH, GPU_MEMORY_FRACTION * free // per_row)))


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

"""The optimisers every attack and search shares: batched Adam with per-row state, and projected
gradient steps in the L_inf and L2 geometries. Rows run along dim 0; a row that is not active
keeps its value and state."""

from __future__ import annotations

import torch

Tensor = torch.Tensor
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def per_row(v: Tensor, like: Tensor) -> Tensor:
    """A per-row vector (R,) shaped to broadcast over the rows of `like`."""
    return v.view(-1, *[1] * (like.ndim - 1))


def row_norm(v: Tensor) -> Tensor:
    """The L2 norm of each row (R,)."""
    return v.flatten(1).norm(dim=1)


def unit_l2(g: Tensor) -> Tensor:
    """Each row scaled to unit L2 norm (a zero row stays zero)."""
    return g / per_row(row_norm(g).clamp_min(1e-12), g)


def adam(
    value: Tensor,
    grad: Tensor,
    m1: Tensor,
    m2: Tensor,
    steps: Tensor,
    lr: float,
    active: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Adam step (Kingma & Ba; betas 0.9, 0.999, eps 1e-8) of every active row, each row
    with its own step count `steps` (R,) for the bias correction. Returns the new value, first
    and second moments and step counts; inactive rows keep theirs."""
    b1, b2 = ADAM_BETAS
    if active is None:
        active = torch.ones(len(value), dtype=torch.bool, device=value.device)
    steps = steps + active.long()
    t = per_row(steps.clamp_min(1).to(grad.dtype), value)
    on = per_row(active, value)
    m1 = torch.where(on, b1 * m1 + (1 - b1) * grad, m1)
    m2 = torch.where(on, b2 * m2 + (1 - b2) * grad * grad, m2)
    step = lr * (m1 / (1 - b1**t)) / ((m2 / (1 - b2**t)).sqrt() + ADAM_EPS)
    return torch.where(on, value - step, value), m1, m2, steps


def linf_step(current: Tensor, direction: Tensor, x: Tensor, eps, size, value_range) -> Tensor:
    """A signed step of `size` along `direction`, projected onto the L_inf ball of radius `eps`
    around x and into the pixel range (`eps` and `size` scalars or per-row broadcastable)."""
    moved = current + size * direction.sign()
    return (x + (moved - x).clamp(-eps, eps)).clamp(*value_range)


def project_l2(x: Tensor, candidate: Tensor, eps: Tensor, value_range) -> Tensor:
    """Onto the L2 ball of radius eps (per row) around x, then into the pixel range."""
    delta = candidate - x
    delta = delta * per_row((eps / row_norm(delta).clamp_min(1e-12)).clamp(max=1), delta)
    return (x + delta).clamp(*value_range)


def l2_step(
    current: Tensor, direction: Tensor, x: Tensor, eps: Tensor, size: Tensor, value_range
) -> Tensor:
    """A step of L2 length `size` (per row) along `direction`, projected onto the L2 ball of
    radius `eps` around x and into the pixel range."""
    return project_l2(x, current + per_row(size, current) * unit_l2(direction), eps, value_range)

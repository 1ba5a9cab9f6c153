"""ROAD (Remove And Debias; Rong, Leemann et al., ICML 2022), batched in torch.

The family `road` of the catalogue: per sample and percentage p of the pixels removed, whether
the model still predicts the target class once the p% most salient (MoRF, lower is better) or
least salient (LeRF, higher is better) pixels are removed and imputed. Pixels are ordered by
|E| summed over channels (a RelEx mask as it is), ties by pixel index; the noise of a sample's
imputations is keyed by the sample, not the method, so methods are compared on the same noise.
Agreement with Quantus's ROAD is tested in tests/test_road.py.

`noisy_linear_imputation` fills removed pixels with the solution of a sparse linear system
(each removed pixel is the weighted mean of its 8 neighbours, 1/6 for edge and 1/12 for
diagonal neighbours, neighbours outside the image dropped and the weights renormalised), plus
Gaussian noise. The system is solved for all images and channels at once by conjugate gradient
on the matrix-free operator. `road` runs the MoRF and LeRF curves of the metric on top of it.

The operator couples 8-neighbours, so every 8-connected component of removed pixels borders a
kept pixel unless the whole image is removed: that is the only singular case (handled apart).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.keys import keyed_normal
from .catalogue import Cell, Family, Variable, register
from .masks import pixel_order

DEFAULT_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ORDERS = ("morf", "lerf")


def _neighbour_sum(u: Tensor) -> Tensor:
    """Weighted sum of the 8 neighbours of every pixel of u (..., H, W), zero outside.

    The kernel [[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12 is the separable [1, 2, 1] x [1, 2, 1]
    minus 4 times the centre, so two shifted 3-tap passes do it for any dtype and device.
    """
    shape = u.shape
    v = F.pad(u.reshape(-1, 1, *shape[-2:]), (1, 1, 1, 1))[:, 0]
    t = (v[:, :-2] + v[:, 2:]).add_(v[:, 1:-1], alpha=2)
    s = (t[..., :-2] + t[..., 2:]).add_(t[..., 1:-1], alpha=2)
    return s.sub_(v[:, 1:-1, 1:-1], alpha=4).mul_(1 / 12).reshape(shape)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise inner product over the last two dims."""
    return (a * b).sum(dim=(-2, -1))


def _cg_step(state: dict[str, Tensor], diag: Tensor, active: Tensor) -> None:
    """One conjugate-gradient step, in place, on the active rows (the others stay frozen)."""
    u, r, p, rs = state["u"], state["r"], state["p"], state["rs"]
    ap = _neighbour_sum(p).neg_().addcmul_(diag, p).mul_(state["mask"])
    alpha = torch.where(active, rs / _dot(p, ap).clamp_min(1e-300), 0.0)[:, None, None]
    u.addcmul_(alpha, p)
    r.addcmul_(alpha, ap, value=-1)
    rs_new = _dot(r, r)
    beta = torch.where(active, rs_new / rs.clamp_min(1e-300), 0.0)[:, None, None]
    p.mul_(beta).add_(r)
    state["rs"] = torch.where(active, rs_new, rs)


def _cg(rhs: Tensor, mask: Tensor, diag: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int]:
    """Solve A u = rhs on the masked pixels of every row of rhs (N, H, W) by conjugate gradient.

    A u = mask * (diag * u - S(mask * u)), S the neighbour sum: symmetric, and positive definite
    on every row whose removed pixels touch at least one kept pixel. Starts from u = 0; a row
    stops (its iterate is frozen exactly) once ||r|| <= tol ||rhs||, so its result does not
    depend on the other rows of the batch. Finished rows are dropped from the working set once
    they are a quarter of it. Returns the solution and the iterations run.
    """
    out = torch.zeros_like(rhs)
    rs0 = _dot(rhs, rhs)
    state = {
        "u": torch.zeros_like(rhs),
        "r": rhs.clone(),
        "p": rhs.clone(),
        "mask": mask,
        "rs": rs0,
        "stop": tol**2 * rs0,
        "idx": torch.arange(len(rhs), device=rhs.device),
    }
    for it in range(max_iter + 1):
        active = state["rs"] > state["stop"]
        n_active = int(active.sum())
        if n_active <= 0.75 * len(active) or it == max_iter:
            out[state["idx"]] = state["u"]
            if n_active == 0 or it == max_iter:
                break
            state = {k: v[active] for k, v in state.items()}
            active = active[active]
        _cg_step(state, diag, active)
    if n_active:
        worst = float((state["rs"] / state["stop"].clamp_min(1e-300)).max().sqrt()) * tol
        warnings.warn(
            f"CG stopped after {max_iter} iterations (relative residual {worst:.1e})", stacklevel=3
        )
    return out, it


def noisy_linear_imputation(
    x: Tensor,
    removed: Tensor,
    noise: float,
    generator_keys: Sequence[str] | None = None,
    tol: float = 1e-8,
    *,
    max_iter: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Impute the `removed` pixels (B, H, W) of x (B, C, H, W) by noisy linear imputation.

    Each removed pixel (all channels) solves "value = weighted mean of its in-image neighbours",
    with kept neighbours as data; the system is solved per image and channel in `dtype` by CG to
    a relative residual `tol` (cap `max_iter`, default 20 (H + W) + 200). An image with every
    pixel removed has no data and gets its own mean colour. Then N(0, noise^2) noise is added to
    the removed pixels only; image i's noise is a full (C, H, W) float32 field from a CPU
    generator seeded by `generator_keys[i]` (`engine.keys`; default key: str(i)), so it
    depends neither on the batching nor on the device.
    Kept pixels are returned unchanged; the result has x's dtype and device.
    """
    b, c, h, w = x.shape
    removed = removed.bool()
    if removed.shape != (b, h, w):
        raise ValueError(f"removed has shape {tuple(removed.shape)}, expected {(b, h, w)}")
    m = removed.to(device=x.device, dtype=dtype)[:, None].expand(b, c, h, w).reshape(b * c, h, w)
    xd = x.to(dtype).reshape(b * c, h, w)
    diag = _neighbour_sum(torch.ones(h, w, dtype=dtype, device=x.device))
    rhs = m * _neighbour_sum((1 - m) * xd)
    cap = max_iter if max_iter is not None else 20 * (h + w) + 200
    filled = _cg(rhs, m, diag, tol, cap)[0].reshape(b, c, h, w)
    all_gone = removed.reshape(b, -1).all(dim=1).to(x.device)
    mean_colour = x.to(dtype).mean(dim=(-2, -1), keepdim=True).expand_as(filled)
    filled = torch.where(all_gone[:, None, None, None], mean_colour, filled)
    if noise:
        keys = generator_keys if generator_keys is not None else [str(i) for i in range(b)]
        if len(keys) != b:
            raise ValueError(f"{len(keys)} generator keys for {b} images")
        draws = keyed_normal(list(keys), (c, h, w), "cpu").to(x.device, dtype)
        filled = filled + noise * draws
    mask4 = removed.to(x.device)[:, None]
    return torch.where(mask4, filled.to(x.dtype), x)


def pixel_scores(e: Tensor) -> Tensor:
    """Per-pixel score (B, H, W) of a map e (B, C, H, W) or (B, 1, H, W): the signed channel sum."""
    if e.ndim != 4:
        raise ValueError(f"maps must be (B, C, H, W), got shape {tuple(e.shape)}")
    return e.sum(dim=1)


def removal_counts(hw: int, percentages: Sequence[float]) -> list[int]:
    """Pixels removed at each percentage: floor(hw * p / 100), as Quantus's int(hw * p / 100)."""
    return [int(hw * p / 100) for p in percentages]


def removal_ranks(scores: Tensor, keys: Sequence[str] | None = None) -> Tensor:
    """(B, 2, H*W) rank of every pixel in MoRF (descending) and LeRF (ascending) order.

    Ties in the sample's keyed random order (`masks.pixel_order`), never by pixel index.
    """
    flat = scores.reshape(scores.shape[0], -1)
    ar = torch.arange(flat.shape[1], device=flat.device).expand_as(flat)
    keys = None if keys is None else list(keys)
    ranks = []
    for descending in (True, False):
        order = pixel_order(flat, descending, keys)
        ranks.append(torch.empty_like(order).scatter_(1, order, ar))
    return torch.stack(ranks, dim=1)


def _row_index(rows: Tensor, b: int) -> tuple[Tensor, Tensor, Tensor]:
    """(percentage, order, sample) of each row; rows run percentage-major so that a chunk
    holds masks of similar size and similar CG iteration counts."""
    return rows // (2 * b), (rows // b) % 2, rows % b


def _row_keys(keys: Sequence[str], idx: tuple[Tensor, ...], percentages: Sequence[float]) -> list:
    """Noise key of each row: 'key/order/percentage'."""
    return [
        f"{keys[i]}/{ORDERS[o]}/{percentages[k]}"
        for k, o, i in zip(*(t.tolist() for t in idx), strict=True)
    ]


@torch.no_grad()
def road(
    model: nn.Module,
    x: Tensor,
    e: Tensor,
    target: Tensor,
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
    noise: float = 0.01,
    keys: Sequence[str] | None = None,
    micro_batch: int = 64,
    *,
    tol: float = 1e-8,
) -> dict[str, Tensor]:
    """ROAD MoRF and LeRF indicators: {"road_morf": (B, P), "road_lerf": (B, P)} of 0.0 / 1.0.

    For each percentage p the floor(p / 100 * H * W) pixels with the largest (MoRF) or smallest
    (LeRF) score (signed channel sum of e; ties in the keyed order of `removal_ranks`) are
    removed and imputed with `noisy_linear_imputation`; the indicator is argmax
    model(imputed) == target. The rows (image x order x percentage) are imputed and classified
    in chunks of `micro_batch`, without gradients; model must already be in the mode wanted
    (eval). Row noise keys are f"{keys[i]}/{order}/{p}" (keys default str(i)), so results do
    not depend on the batching.
    """
    b, _, h, w = x.shape
    counts = torch.tensor(removal_counts(h * w, percentages), device=x.device)
    keys = list(keys) if keys is not None else [str(i) for i in range(b)]
    ranks = removal_ranks(pixel_scores(e).to(x.device), keys)
    n_p = len(percentages)
    n_rows = b * 2 * n_p
    hits = torch.empty(n_rows, device=x.device)
    for start in range(0, n_rows, micro_batch):
        rows = torch.arange(start, min(start + micro_batch, n_rows), device=x.device)
        k, o, i = idx = _row_index(rows, b)
        removed = (ranks[i, o] < counts[k][:, None]).reshape(-1, h, w)
        row_keys = _row_keys(keys, idx, percentages)
        imputed = noisy_linear_imputation(x[i], removed, noise, row_keys, tol)
        hits[rows] = (model(imputed).argmax(dim=1) == target.to(x.device)[i]).to(hits.dtype)
    hits = hits.reshape(n_p, 2, b).permute(1, 2, 0)
    return {"road_morf": hits[0], "road_lerf": hits[1]}


def _road(cell: Cell) -> dict[str, Tensor]:
    score = cell.e.abs().sum(1, keepdim=True)
    return road(
        cell.model, cell.x, score, cell.target, cell.labels, keys=cell.keys,
        micro_batch=cell.micro_batch,
    )  # fmt: skip


register(
    Family(
        "road",
        (
            Variable(
                "road_morf",
                "ROAD MoRF: prediction kept with the most salient p% removed and imputed",
                False,
            ),
            Variable(
                "road_lerf",
                "ROAD LeRF: prediction kept with the least salient p% removed and imputed",
                True,
            ),
        ),
        _road,
        dim="percentage",
        labels=lambda model: list(DEFAULT_PERCENTAGES),
        kinds=("image",),  # imputes from the 8 spatial neighbours
    )
)

"""Input kinds, known by the rank of an input's shape: images (channel, y, x), tables (feature)
and token sequences (token, embedding).

Code that works on positions (decoy masks, kept features) sees every kind on one grid
(channel, row, position): an image is its own grid, a table is one channel and one row of F
positions, a text is D channels (its embedding) over one row of T positions (its tokens). A
position is what a mask swaps whole: a pixel with all its channels, a feature, a token's vector.
"""

from __future__ import annotations

import torch

from ..errors import SalauditError

DIMS = {"image": ("channel", "y", "x"), "table": ("feature",), "text": ("token", "embedding")}
BY_RANK = {3: "image", 1: "table", 2: "text"}
KINDS = tuple(DIMS)


def kind_of(shape: tuple[int, ...]) -> str:
    """The input kind of one sample's shape."""
    kind = BY_RANK.get(len(shape))
    if kind is None:
        raise SalauditError(
            f"inputs of shape {tuple(shape)} are none of salaudit's kinds: images (C, H, W), "
            "tables (F,) or token sequences (T, D)"
        )
    return kind


def dims_of(shape: tuple[int, ...]) -> tuple[str, ...]:
    """The store's dims of one sample of this shape (after `sample`)."""
    return DIMS[kind_of(shape)]


def describe(shape: tuple[int, ...]) -> str:
    """One sample's shape in words."""
    kind = kind_of(shape)
    if kind == "image":
        return f"images of shape {tuple(shape)}"
    if kind == "table":
        return f"tables of {shape[0]} features"
    return f"sequences of {shape[0]} tokens of {shape[1]}-d embeddings"


def grid_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, rows, positions) of one sample's grid."""
    kind = kind_of(shape)
    if kind == "image":
        return tuple(shape)
    if kind == "table":
        return 1, 1, shape[0]
    return shape[1], 1, shape[0]


def to_grid(x: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """(..., *shape) -> (..., C, H, W) on the grid (`shape`: one sample's, default x's
    after dim 0); images are their own grid."""
    shape = tuple(x.shape[1:]) if shape is None else tuple(shape)
    kind = kind_of(shape)
    if kind == "image":
        return x
    if kind == "table":
        return x[..., None, None, :]
    return x.transpose(-1, -2)[..., None, :]


def from_grid(g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of `to_grid` for samples of `shape` (leading dims kept)."""
    kind = kind_of(tuple(shape))
    if kind == "image":
        return g
    if kind == "table":
        return g[..., 0, 0, :]
    return g[..., 0, :].transpose(-1, -2)


def stat_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast shape of a model's input normalisation: per channel of an image, per
    feature of a table, per embedding dim of a text."""
    kind = kind_of(shape)
    if kind == "image":
        return 1, shape[0], 1, 1
    if kind == "table":
        return 1, shape[0]
    return 1, 1, shape[1]


def stat_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dims of a batch (B, *shape) that a normalisation statistic reduces over."""
    return {"image": (0, 2, 3), "table": (0,), "text": (0, 1)}[kind_of(shape)]


def check_kind(kind: str, takes: tuple[str, ...], what: str, options: list[str]) -> None:
    """Refuse `what` (a method, metric or attack) on inputs of a kind it does not take, naming
    the ones that do."""
    if kind not in takes:
        raise SalauditError(
            f"{what} does not apply to {kind} inputs (it takes {', '.join(takes)}); for {kind} "
            f"inputs use one of: {', '.join(options) or 'none'}"
        )

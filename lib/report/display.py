"""Pictures of maps: the post-processing of DANCE preprint 3.1, the tiles the report and
`salaudit show` draw (images, maps, boxes, marks for maps never computed) and class names."""

from __future__ import annotations

import math

import numpy as np
import torch

from .figures import DIFF_CMAP, MAP_CMAP

BOX_COLOUR = (0, 229, 255)  # cyan: apart from every colour of inferno, RdBu and grey
MIN_TILE, MAX_TILE = 160, 224  # pixels a map is shown at, at least and at most


def display_map(attribution: torch.Tensor | np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """(C, H, W) or (B, C, H, W) attribution -> (H, W) or (B, H, W) in [0, 1]: max |value|
    over channels, winsorised at the `percentile` of each map, rescaled to [0, 1]; a map with
    any non-finite value is NaN throughout (never computed, or not finite)."""
    a = torch.as_tensor(np.asarray(attribution), dtype=torch.float64)
    single = a.ndim == 3
    a = a[None] if single else a
    finite = torch.isfinite(a).flatten(1).all(1).view(-1, 1, 1)
    heat = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0).abs().amax(1)
    top = torch.quantile(heat.flatten(1), percentile / 100, dim=1).view(-1, 1, 1)
    out = torch.where(top > 0, heat.clamp(max=top) / top.clamp_min(1e-300), torch.zeros_like(heat))
    out = torch.where(finite, out, torch.nan).numpy()
    return out[0] if single else out


def map_state(attribution: np.ndarray) -> str:
    """ "" for a drawable map, else what is wrong with it: never computed, not finite, all zero."""
    a = np.asarray(attribution)
    if np.isnan(a).all():
        return "not computed"
    if not np.isfinite(a).all():
        return "not finite"
    return "all zero" if not a.any() else ""


def shown_width(width: int) -> int:
    """The CSS pixels a map of `width` pixels is shown at: its own width, within [160, 224]."""
    return max(MIN_TILE, min(width, MAX_TILE))


def image_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8; one channel is drawn grey."""
    a = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    a = np.repeat(a, 3, 0) if a.shape[0] == 1 else a[:3]
    return np.round(255 * a.transpose(1, 2, 0)).astype(np.uint8)


def map_rgb(heat: np.ndarray, diverging: bool = False) -> np.ndarray:
    """(H, W) in [0, 1] (or [-1, 1] when `diverging`) -> (H, W, 3) uint8 in the colour map;
    a NaN map is hatched grey (never computed or not finite)."""
    from matplotlib import colormaps

    heat = np.asarray(heat, dtype=np.float64)
    if np.isnan(heat).any():
        h, w = heat.shape
        stripes = ((np.arange(h)[:, None] + np.arange(w)[None]) // max(2, w // 16)) % 2
        return np.where(stripes[..., None] == 1, 200, 235).astype(np.uint8).repeat(3, 2)
    scaled = (heat + 1) / 2 if diverging else heat
    rgba = colormaps[DIFF_CMAP if diverging else MAP_CMAP](np.clip(scaled, 0, 1))
    return np.round(255 * rgba[..., :3]).astype(np.uint8)


def tile(rgb: np.ndarray, box: np.ndarray | None = None):
    """A PIL image of `rgb` (H, W, 3), enlarged by a whole factor (nearest) to at least 160
    pixels, the box (y0, x0, y1, x1; ends exclusive) outlined in cyan where there is one."""
    from PIL import Image, ImageDraw

    h, w, _ = rgb.shape
    k = max(1, math.ceil(MIN_TILE / w))
    img = Image.fromarray(rgb).resize((w * k, h * k), Image.NEAREST)
    if box is not None and box[2] > box[0] and box[3] > box[1]:
        y0, x0, y1, x1 = (int(v) for v in box)
        line = max(2, k)
        ImageDraw.Draw(img).rectangle(
            (x0 * k, y0 * k, x1 * k - 1, y1 * k - 1), outline=BOX_COLOUR, width=line
        )
    return img


def class_name(names: list[str] | None, index: int) -> str:
    """The name of class `index` where the names are known, else `class <index>`."""
    if names and 0 <= index < len(names):
        return str(names[index])
    return f"class {index}"


def show_sample(url: str, sample: int, out: str, storage_options: dict | None = None) -> list[str]:
    """Save the image of dataset index `sample` (its box drawn, label and prediction named)
    and each stored method's map side by side to the PNG `out`; returns the methods shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import xarray as xr

    from ..errors import SalauditError
    from ..inputs.uris import storage_options_for
    from ..store import schema
    from ..store.store import Store

    opts = storage_options_for(url, storage_options) or None
    inputs = xr.open_zarr(url, group=schema.INPUTS, chunks=None, storage_options=opts)
    if sample not in inputs["sample"].values:
        held = inputs["sample"].values
        raise SalauditError(
            f"sample {sample} is not in store {url}; it holds dataset indices "
            f"{held[:20].tolist()}{' ...' if len(held) > 20 else ''}"
        )
    attrs = Store(url, opts).attrs()
    maps = xr.open_zarr(url, group=schema.MAPS, chunks=None, storage_options=opts)
    names = list(maps.data_vars)
    at = inputs.sel(sample=sample)
    box = at["bbox"].values if "bbox" in inputs else None
    label, pred = int(at["label"]), int(at["prediction"])
    if "feature" in at["image"].dims:  # a table: its values and each map as bars
        from pathlib import Path

        from .figures import feature_bars

        panels = [("feature value", at["image"].values)]
        panels += [(n, maps[n].sel(sample=sample).values) for n in names]
        features = [str(f) for f in inputs["feature"].values]
        title = _image_title(sample, label, pred, attrs).replace("\n", ", ")
        feature_bars(features, panels, Path(out), title)
        return names
    if "token" in at["image"].dims:
        raise SalauditError(
            f"store {url} holds texts; salaudit report shades each sentence's words by "
            "saliency (salaudit report --store ...), a PNG of one sample is for images and tables"
        )
    tiles = [(tile(image_rgb(at["image"].values), box), _image_title(sample, label, pred, attrs))]
    for name in names:
        raw = maps[name].sel(sample=sample).values
        state = map_state(raw)
        title = name + (f"\n({state})" if state else "")
        tiles.append((tile(map_rgb(display_map(raw)), box), title))
    dpi = 100
    width = sum(t.width for t, _ in tiles) / dpi + 0.25 * len(tiles)
    fig, axes = plt.subplots(
        1, len(tiles), figsize=(width, tiles[0][0].height / dpi + 0.9), squeeze=False
    )
    for ax, (img, title) in zip(axes[0], tiles, strict=True):
        ax.imshow(np.asarray(img), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return names


def _image_title(sample: int, label: int, pred: int, attrs: dict) -> str:
    return (
        f"sample {sample}\nlabel: {class_name(attrs.get('label_names'), label)}\n"
        f"predicted: {class_name(attrs.get('prediction_names'), pred)}"
    )

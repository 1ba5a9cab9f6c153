"""Pictures of maps: the post-processing of DANCE preprint 3.1 and `salaudit show`."""

from __future__ import annotations

import numpy as np
import torch


def display_map(attribution: torch.Tensor | np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """(C, H, W) or (B, C, H, W) attribution -> (H, W) or (B, H, W) in [0, 1]: max |value|
    over channels, winsorised at the `percentile` of each map, rescaled to [0, 1]."""
    a = torch.as_tensor(np.asarray(attribution), dtype=torch.float64)
    single = a.ndim == 3
    a = a[None] if single else a
    heat = a.abs().amax(1)
    top = torch.quantile(heat.flatten(1), percentile / 100, dim=1).view(-1, 1, 1)
    out = torch.where(top > 0, heat.clamp(max=top) / top.clamp_min(1e-300), torch.zeros_like(heat))
    out = out.numpy()
    return out[0] if single else out


def show_sample(url: str, sample: int, out: str, storage_options: dict | None = None) -> list[str]:
    """Save the image of dataset index `sample` and each stored method's map side by side to
    the PNG `out`; returns the methods shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import xarray as xr

    from ..errors import SalauditError
    from ..inputs.uris import storage_options_for
    from ..store import schema

    opts = storage_options_for(url, storage_options) or None
    inputs = xr.open_zarr(url, group=schema.INPUTS, chunks=None, storage_options=opts)
    if sample not in inputs["sample"].values:
        held = inputs["sample"].values
        raise SalauditError(
            f"sample {sample} is not in store {url}; it holds dataset indices "
            f"{held[:20].tolist()}{' ...' if len(held) > 20 else ''}"
        )
    maps = xr.open_zarr(url, group=schema.MAPS, chunks=None, storage_options=opts)
    names = list(maps.data_vars)
    image = inputs["image"].sel(sample=sample).values.transpose(1, 2, 0)
    pred = int(inputs["prediction"].sel(sample=sample))
    fig, axes = plt.subplots(
        1, len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.6), squeeze=False
    )
    axes[0, 0].imshow(np.clip(image, 0, 1))
    axes[0, 0].set_title(f"sample {sample}\nclass {pred}", fontsize=9)
    for ax, name in zip(axes[0, 1:], names, strict=True):
        ax.imshow(display_map(maps[name].sel(sample=sample).values), cmap="inferno", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return names

"""The notebook face: maps of images in memory, and a store opened for reading, both in the
store's own layout and without Prefect, Dask or a store to write."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..engine.batching import micro_batch_size, predictions
from ..errors import SalauditError
from ..inputs.models import PixelModel, load_model
from ..inputs.uris import storage_options_for
from ..methods.context import Context
from ..methods.registry import check_inputs
from .explain import method_maps
from .run import REFERENCE_IMAGES
from .spec import parse_spec


def explain(
    model: PixelModel | nn.Module | str,
    images,
    methods: Sequence[str] | dict[str, dict],
    targets=None,
    *,
    decoys: dict[str, dict] | None = None,
    boundary: dict | None = None,
    samples: Sequence[int] | None = None,
    seed: int = 0,
    references=None,
    micro_batch: int | None = None,
):
    """Saliency maps of `images` (B, C, H, W) in pixel space for `targets` (default: the
    model's predictions), as an xarray Dataset laid out as a store's `maps` group: one
    variable per method, dims (sample, channel, y, x), the method's parameters as its
    attributes, and the targets as a coordinate. `methods` are names or {name: parameters};
    `decoys` and `boundary` the decoy and boundary settings of a spec. A sample's random draws
    are keyed by (seed, `samples[i]`, method) as in an audit, so the maps of a store's samples
    equal the store's. `model` is a PixelModel, a model spec or a module taking pixel-space
    images of `images`' shape."""
    import xarray as xr

    model = _model(model, images)
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    x = x.to(model.mean.device, torch.float32)
    mb = micro_batch or micro_batch_size(model, x.device)
    target = predictions(model, x, mb) if targets is None else torch.as_tensor(targets)
    target = target.to(x.device, torch.long)
    check_inputs(model, x, target)
    fields = {
        "methods": dict(methods) if isinstance(methods, dict) else list(methods),
        "decoys": decoys or {},
        "boundary": boundary or {},
        "seed": seed,
    }
    spec = parse_spec(fields, "salaudit.explain's methods and settings")
    resolved = [spec.method(name).resolved(model) for name in spec.methods]
    index = np.arange(len(x)) if samples is None else np.asarray(samples)
    if len(index) != len(x):
        raise SalauditError(f"{len(index)} sample indices for {len(x)} images; give one each")
    refs = _references(resolved, references, x)

    def context(name: str) -> Context:
        return Context([f"{seed}/{int(i)}/{name}" for i in index], mb, refs)

    maps = {m.name: e for m, e in method_maps(model, resolved, x, target, context)}
    coords = {"sample": index, "target": ("sample", target.cpu().numpy())}
    data = {
        m.name: (
            ("sample", "channel", "y", "x"),
            maps[m.name].detach().float().cpu().numpy(),
            m.store_params(),
        )
        for m in resolved
    }
    return xr.Dataset(data, coords=coords, attrs={"model": model.spec, "seed": seed})


def open(url: str, storage_options: dict | None = None):  # noqa: A001  (salaudit.open)
    """The store at `url` (a folder or s3:// URL) as an xarray DataTree of numpy arrays."""
    import xarray as xr

    opts = storage_options_for(url, storage_options) or None
    return xr.open_datatree(url, engine="zarr", chunks=None, storage_options=opts)


def _model(model, images) -> PixelModel:
    if isinstance(model, str):
        return load_model(model, progress=False)
    if isinstance(model, PixelModel):
        return model
    if isinstance(model, nn.Module):
        shape = tuple(np.shape(images)[1:])
        with torch.no_grad():
            classes = model.eval()(torch.zeros(1, *shape)).shape[-1]
        wrapped = PixelModel(model, input_shape=shape, num_classes=int(classes))
        return wrapped.eval().requires_grad_(False)
    raise SalauditError(f"model must be a PixelModel, a module or a model spec, not {model!r}")


def _references(methods, references, x: torch.Tensor):
    if not any(m.info.needs_references for m in methods):
        return None
    if references is None:
        raise SalauditError(
            f"a method needs reference images to draw baselines from: pass references= "
            f"(e.g. {REFERENCE_IMAGES} images of the training data)"
        )
    return torch.as_tensor(references).to(x)

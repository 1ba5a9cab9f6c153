"""Method names -> methods, so configs, the CLI and tasks name methods by string.

Base gradient methods (`grad`, `ig`, ...), their decoy-enhanced forms `dance-<base>` (optimised
decoys, range aggregation), `dance-mean-<base>`, `blur-<base>`, `constant-<base>`,
`noise-<base>`, and the robust methods `relex`, `bsm`, `big` (which use the boundary search)
and `agi`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from . import boundary, relex, saliency
from .boundary import BoundaryConfig, find_boundary
from .decoys import DecoyConfig, aggregate, decoy_saliency, make_decoys
from .errors import SalauditError
from .models import PixelModel
from .saliency import Context

BASE_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "grad": saliency.grad,
    "gradxinput": saliency.gradxinput,
    "ig": saliency.ig,
    "smoothgrad": saliency.smoothgrad,
    "vargrad": saliency.vargrad,
    "sgrange": saliency.sgrange,
    "expgrad": saliency.expgrad,
    "intuniform": saliency.intuniform,
    "gradcam": saliency.gradcam,
}
ROBUST_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "relex": relex.relex,
    "bsm": boundary.bsm,
    "big": boundary.big,
    "agi": boundary.agi,
}
BOUNDARY_METHODS = {"bsm", "big"}
# prefix -> (decoy generator, aggregation); longest prefix first
DECOY_PREFIXES = {
    "dance-mean": ("dance", "mean"),
    "dance": ("dance", "range"),
    "blur": ("blur", "range"),
    "constant": ("constant", "range"),
    "noise": ("noise", "range"),
}
HIDDEN_PARAMS = {"model", "x", "target", "ctx", "baseline", "boundary"}


@dataclass(frozen=True)
class Method:
    """A named saliency method: a base method with its parameters, optionally enhanced with
    decoys of one configuration and aggregated by range or mean, or fed by a boundary search."""

    name: str
    base: str
    fn: Callable[..., torch.Tensor] = field(repr=False)
    params: dict = field(default_factory=dict)
    decoys: DecoyConfig | None = None
    aggregation: str | None = None
    boundary: BoundaryConfig | None = None

    def resolved(self, model: PixelModel) -> Method:
        """Defaults that depend on the model (layers, mask packing) filled in and checked."""
        params = dict(self.params)
        if "layer" in params:
            params["layer"] = params["layer"] or model.default_layer("gradcam")
            model.layer(params["layer"])
        decoys = self.decoys.resolved(model) if self.decoys else None
        return replace(self, params=params, decoys=decoys)

    def store_params(self) -> dict:
        """What the store records with the map (JSON-serialisable)."""
        out = {"method": self.name, "base": self.base, **self.params}
        if self.decoys:
            out["aggregation"] = self.aggregation
            out["decoys"] = self.decoys.params()
        if self.boundary:
            out["boundary"] = self.boundary.params()
        return out

    def base_call(self, model: PixelModel, x, target, ctx: Context) -> torch.Tensor:
        if self.boundary is None:
            return self.fn(model, x, target, ctx, **self.params)
        found = ctx.extra.get("boundary") or find_boundary(model, x, target, self.boundary, ctx)
        return self.fn(model, x, target, ctx, boundary=found, **self.params)

    def __call__(self, model: PixelModel, x, target, ctx: Context | None = None) -> torch.Tensor:
        """The attribution of x for `target` (decoys generated or the boundary searched on the
        way where the method needs them)."""
        ctx = ctx or Context()
        check_inputs(model, x, target)
        if self.decoys is None:
            return self.base_call(model, x, target, ctx)
        decoys = make_decoys(model, x, self.decoys, ctx)
        return self.aggregate(self.decoy_maps(model, x, target, decoys, ctx))

    def decoy_maps(self, model, x, target, decoys, ctx: Context) -> torch.Tensor:
        """The base method's maps over the population, original first (B, K + 1, ...)."""
        return decoy_saliency(self.base_call, model, x, target, decoys, ctx)

    def aggregate(self, maps: torch.Tensor) -> torch.Tensor:
        return aggregate(maps, self.aggregation)


def method_names() -> list[str]:
    """Every valid method name."""
    decoyed = [f"{p}-{b}" for p in DECOY_PREFIXES for b in BASE_METHODS]
    return list(BASE_METHODS) + list(ROBUST_METHODS) + decoyed


def check_inputs(model: PixelModel, x: torch.Tensor, target: torch.Tensor) -> None:
    """Refuse images of the wrong shape and target classes the model does not have."""
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(model.input_shape):
        raise SalauditError(
            f"images of shape {tuple(x.shape)} do not fit model {model.spec}, which takes "
            f"(batch, {', '.join(map(str, model.input_shape))})"
        )
    bad = (target < 0) | (target >= model.num_classes)
    if bad.any():
        raise SalauditError(
            f"target class {int(target[bad][0])} is out of range for model {model.spec} with "
            f"{model.num_classes} classes (0 to {model.num_classes - 1})"
        )


def split_name(name: str) -> tuple[str, str | None, str | None]:
    """`dance-mean-ig` -> ("ig", "dance", "mean"); a base name -> (name, None, None)."""
    for prefix, (generator, how) in DECOY_PREFIXES.items():
        if name.startswith(prefix + "-") and name[len(prefix) + 1 :] in BASE_METHODS:
            return name[len(prefix) + 1 :], generator, how
    return name, None, None


def get_method(
    name: str,
    params: dict | None = None,
    decoys: dict | None = None,
    boundary: dict | None = None,
) -> Method:
    """The method called `name`, with its parameters `params`, decoy settings `decoys` (for
    decoy-enhanced names) and boundary-search settings `boundary` (for bsm and big); unknown
    names or parameters raise an error listing the valid ones."""
    base, generator, how = split_name(name)
    fn = BASE_METHODS.get(base) or ROBUST_METHODS.get(base)
    if fn is None:
        raise SalauditError(
            f"unknown method {name!r}; valid: {', '.join([*BASE_METHODS, *ROBUST_METHODS])}, "
            f"and decoy-enhanced <prefix>-<base> with prefix one of {', '.join(DECOY_PREFIXES)} "
            "and a gradient base (e.g. dance-ig)"
        )
    full = _with_defaults(fn, params or {}, name)
    config = None
    if generator:
        config = _settings(DecoyConfig, {"generator": generator, **(decoys or {})}, name)
    if decoys and not generator:
        raise SalauditError(f"{name} uses no decoys; decoy settings apply to dance-*, blur-*, ...")
    search = _settings(BoundaryConfig, boundary or {}, name) if base in BOUNDARY_METHODS else None
    if boundary and base not in BOUNDARY_METHODS:
        raise SalauditError(f"{name} uses no boundary search; its settings apply to bsm and big")
    return Method(name, base, fn, full, config, how, search)


def _settings(kind, values: dict, name: str):
    try:
        return kind(**values)
    except TypeError as e:
        raise SalauditError(f"bad settings for {name}: {e}") from None


def external_method(
    name: str,
    fn: Callable[..., torch.Tensor],
    decoys: DecoyConfig | None = None,
    aggregation: str = "range",
) -> Method:
    """A method from any callable `(model, x, target) -> attribution` (a Captum method, say),
    optionally decoy-enhanced."""
    return Method(
        name,
        name,
        lambda model, x, target, ctx: fn(model, x, target),
        decoys=decoys,
        aggregation=aggregation if decoys else None,
    )


def _with_defaults(fn: Callable, params: dict, name: str) -> dict:
    signature = inspect.signature(fn)
    allowed = {k: p.default for k, p in signature.parameters.items() if k not in HIDDEN_PARAMS}
    unknown = set(params) - set(allowed)
    if unknown:
        raise SalauditError(
            f"unknown parameter(s) {sorted(unknown)} for {name}; valid: {sorted(allowed) or 'none'}"
        )
    return {**allowed, **params}

"""The method registry: every method registers itself with its traits, and configs, the CLI,
stages and reports name methods by string and ask the registry what a method is.

Base gradient methods (`grad`, `ig`, ...) register in `gradients`, RelEx in `relex`, the
boundary methods in `boundary_maps`. Decoy-enhanced forms of every decoy-capable base are named
`<prefix>-<base>`: `dance-` (optimised decoys, range aggregation), `dance-mean-`, `blur-`,
`constant-` and `noise-`. Nothing outside this module keeps a list of method names.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from types import UnionType
from typing import Union

import torch

from ..errors import SalauditError
from ..inputs.kinds import KINDS, check_kind
from ..inputs.models import PixelModel
from ..plugins import Plugins
from .boundary_search import BoundaryConfig, find_boundary
from .context import Context
from .decoys import DecoyConfig, aggregate, decoy_saliency, make_decoys

# prefix -> (decoy generator, aggregation); longest prefix first
DECOY_PREFIXES = {
    "dance-mean": ("dance", "mean"),
    "dance": ("dance", "range"),
    "blur": ("blur", "range"),
    "constant": ("constant", "range"),
    "noise": ("noise", "range"),
}
HIDDEN_PARAMS = {"model", "x", "target", "ctx", "baseline", "boundary"}
# The default audit's methods and their parameters (the audit spec's default)
DEFAULT_METHODS = {
    "grad": {},
    "ig": {"n_steps": 16},
    "smoothgrad": {"n_samples": 10},
    "dance-grad": {},
    "relex": {},
}
# The tabular and text specs' bases, each with its decoy form and the papers' three controls
# (DANCE fig. 3B), and their parameters
PAPER_BASES = {"grad": {}, "ig": {"n_steps": 16}, "smoothgrad": {"n_samples": 10}}
FAMILIES = ("gradient", "relex", "boundary")


@dataclass(frozen=True)
class MethodInfo:
    """A registered base method and its traits.

    `family`: gradient, relex or boundary. `decoys`: it can be decoy-enhanced. `boundary`: it
    reads the boundary search. `resolve`: fills the parameters whose default depends on the
    model (`(params, model) -> params`, e.g. a budget for large inputs). `path`: its
    differentiable path (the map as a weighted sum of
    gradients, see `differentiable`), so it can be attacked; None if it has none. `references`:
    the methods its paired tests compare it with. `mask`: its map is a mask in [0, 1], used as
    it is where metrics need a mask. `needs_references`: it draws baselines from the data's
    reference images (expected gradients). `rows`: the gradient rows through the model per
    image, where its parameters fix them (`params -> rows`; `salaudit plan` prices such a
    method without running it); None where they depend on the model. `kinds`: the input kinds
    it applies to (`inputs.kinds`)."""

    name: str
    fn: Callable[..., torch.Tensor] = field(repr=False)
    family: str = "gradient"
    decoys: bool = False
    boundary: bool = False
    resolve: Callable[[dict, PixelModel], dict] | None = field(default=None, repr=False)
    path: Callable | None = field(default=None, repr=False)
    references: tuple[str, ...] = ()
    mask: bool = False
    needs_references: bool = False
    rows: Callable[[dict], int] | None = field(default=None, repr=False)
    kinds: tuple[str, ...] = KINDS

    @property
    def defaults(self) -> dict:
        """The method's parameters and their defaults (from its signature)."""
        return signature_defaults(self.fn, HIDDEN_PARAMS)


# The modules that register methods, in the order names are listed (within a module, the
# order they register in). A new method module is added here.
MODULES = ("gradients", "relex", "boundary_maps")
_METHODS: Plugins[MethodInfo] = Plugins(__package__, MODULES, lambda info: info.fn.__module__)


def register(name: str, **traits) -> Callable[[Callable], Callable]:
    """Register the decorated function as base method `name` with its traits (MethodInfo)."""

    def add(fn: Callable) -> Callable:
        if traits.get("family", "gradient") not in FAMILIES:
            raise ValueError(f"unknown method family {traits['family']!r}")
        _METHODS.add(name, MethodInfo(name, fn, **traits))
        return fn

    return add


def registry() -> dict[str, MethodInfo]:
    """Every registered base method, in `MODULES` order (their modules register on first
    use)."""
    return _METHODS.all()


def method_info(name: str) -> MethodInfo:
    """The traits of the base of method `name` (`dance-ig` -> ig's)."""
    base = split_name(name)[0]
    found = registry().get(base)
    if found is None:
        raise SalauditError(_unknown(name))
    return found


@dataclass(frozen=True)
class Method:
    """A named saliency method: a base method with its parameters, optionally enhanced with
    decoys of one configuration and aggregated by range or mean, or fed by a boundary search."""

    name: str
    info: MethodInfo
    params: dict = field(default_factory=dict)
    decoys: DecoyConfig | None = None
    aggregation: str | None = None
    boundary: BoundaryConfig | None = None

    @property
    def base(self) -> str:
        return self.info.name

    def resolved(self, model: PixelModel) -> Method:
        """Defaults that depend on the model (layers, mask packing) filled in and checked; a
        method for another kind of input than the model's is refused."""
        usable = [n for n, i in registry().items() if model.kind in i.kinds]
        check_kind(model.kind, self.info.kinds, f"method {self.name}", usable)
        params = dict(self.params)
        if self.info.resolve:
            params = self.info.resolve(params, model)
        if "layer" in params:
            params["layer"] = params["layer"] or model.default_layer("cam")
            model.layer(params["layer"])
        decoys = self.decoys.resolved(model) if self.decoys else None
        boundary = self.boundary.resolved(model) if self.boundary else None
        return replace(self, params=params, decoys=decoys, boundary=boundary)

    def store_params(self) -> dict:
        """What the store records with the map (JSON-serialisable)."""
        out = {"method": self.name, "base": self.base, **self.params}
        if self.decoys:
            out["aggregation"] = self.aggregation
            out["decoys"] = self.decoys.params()
        if self.boundary:
            out["boundary"] = self.boundary.params()
        return out

    @property
    def fixed_rows(self) -> int | None:
        """Gradient rows through the model per image where the parameters fix them (a base
        method with `rows`, neither decoys nor a boundary search), else None."""
        if self.info.rows is None or self.decoys is not None or self.boundary is not None:
            return None
        return self.info.rows({**self.info.defaults, **self.params})

    def base_call(self, model: PixelModel, x, target, ctx: Context) -> torch.Tensor:
        if self.boundary is None:
            return self.info.fn(model, x, target, ctx, **self.params)
        found = ctx.extra.get("boundary") or find_boundary(model, x, target, self.boundary, ctx)
        return self.info.fn(model, x, target, ctx, boundary=found, **self.params)

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
    bases = registry()
    decoyed = [f"{p}-{b}" for p in DECOY_PREFIXES for b, info in bases.items() if info.decoys]
    return list(bases) + decoyed


def check_inputs(model: PixelModel, x: torch.Tensor, target: torch.Tensor) -> None:
    """Refuse images of the wrong shape and target classes the model does not have."""
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise SalauditError(
            f"inputs of shape {tuple(x.shape)} do not fit model {model.spec}, which takes "
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
    bases = registry()
    for prefix, (generator, how) in DECOY_PREFIXES.items():
        base = name[len(prefix) + 1 :]
        if name.startswith(prefix + "-") and base in bases and bases[base].decoys:
            return base, generator, how
    return name, None, None


def decoy_generator(name: str) -> str | None:
    """The decoy generator method `name` uses (None for a method without decoys)."""
    return split_name(name)[1]


def references(name: str, available: list[str]) -> list[str]:
    """The methods `name` is compared with, among `available`: a decoy-enhanced
    `<gen>-<base>` with `<base>`; a robust method with its registered references."""
    base, generator, _ = split_name(name)
    refs = (base,) if generator is not None else method_info(name).references
    return [r for r in refs if r in available]


def method_pairs(available: list[str]) -> list[tuple[str, str]]:
    """Every (method, reference) pair among `available`, in the order of `available`."""
    return [(m, r) for m in available for r in references(m, available)]


def _unknown(name: str) -> str:
    bases = registry()
    decoyable = next(b for b, info in bases.items() if info.decoys)
    return (
        f"unknown method {name!r}; valid: {', '.join(bases)}, and decoy-enhanced "
        f"<prefix>-<base> with prefix one of {', '.join(DECOY_PREFIXES)} and a gradient base "
        f"(e.g. dance-{decoyable})"
    )


def get_method(
    name: str,
    params: dict | None = None,
    decoys: dict | None = None,
    boundary: dict | None = None,
) -> Method:
    """The method called `name`, with its parameters `params`, decoy settings `decoys` (for
    decoy-enhanced names) and boundary-search settings `boundary` (for methods that read the
    boundary search); unknown names or parameters raise an error listing the valid ones."""
    base, generator, how = split_name(name)
    info = registry().get(base)
    if info is None:
        raise SalauditError(_unknown(name))
    full = check_params(info.defaults, params or {}, name, _hints(info.fn))
    config = None
    if generator:
        config = settings(DecoyConfig, {"generator": generator, **(decoys or {})}, name)
    if decoys and not generator:
        raise SalauditError(f"{name} uses no decoys; decoy settings apply to dance-*, blur-*, ...")
    search = settings(BoundaryConfig, boundary or {}, name) if info.boundary else None
    if boundary and not info.boundary:
        users = ", ".join(b for b, i in registry().items() if i.boundary)
        raise SalauditError(f"{name} uses no boundary search; its settings apply to {users}")
    return Method(name, info, full, config, how, search)


def settings(kind, values: dict, name: str):
    """A settings dataclass from `values`; unknown keys name the valid ones, a value of the
    wrong type names the type."""
    names = [f.name for f in fields(kind)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SalauditError(
            f"bad settings for {name}: unknown key(s) {', '.join(unknown)}; valid: "
            + ", ".join(names)
        )
    hints = typing.get_type_hints(kind)
    for key, value in values.items():
        if not _fits(value, hints[key]):
            raise SalauditError(
                f"bad settings for {name}: {key}={value!r} is not {_type_name(hints[key])}"
            )
    return kind(**values)


def _fits(value, tp) -> bool:
    """Whether a config value has type `tp` (ints pass as floats, never bools as numbers; a
    comma-separated string passes as a tuple, as the command line writes one)."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (Union, UnionType) else (tp,)
    for option in options:
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return True
        if origin in (tuple, list) and isinstance(value, tuple | list | str):
            return True
        if isinstance(value, bool):
            if origin is bool:
                return True
            continue
        if origin is float and isinstance(value, int | float):
            return True
        if origin in (int, str) and isinstance(value, origin):
            return True
    return False


def _type_name(tp) -> str:
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
    options = typing.get_args(tp) if typing.get_origin(tp) in (Union, UnionType) else (tp,)
    words = ["none" if o is type(None) else names.get(o, "a list") for o in options]
    return " or ".join(words)


def _hints(fn: Callable) -> dict:
    """`fn`'s parameter annotations, resolved ({} where they cannot be)."""
    try:
        return typing.get_type_hints(fn)
    except (NameError, TypeError):
        return {}


def signature_defaults(fn: Callable, hidden: set[str]) -> dict:
    """The keyword parameters of `fn` but `hidden`, with their defaults."""
    parameters = inspect.signature(fn).parameters
    return {k: p.default for k, p in parameters.items() if k not in hidden}


def check_params(defaults: dict, params: dict, name: str, hints: dict | None = None) -> dict:
    """`params` over `defaults`; a key without a default is an error naming the valid ones, a
    value of another type than its default's (or its annotation in `hints`, where the default
    is None) an error naming the type."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise SalauditError(
            f"unknown parameter(s) {sorted(unknown)} for {name}; "
            f"valid: {sorted(defaults) or 'none'}"
        )
    for key, value in params.items():
        like = defaults[key]
        tp = type(like) if like is not None else (hints or {}).get(key)
        if tp is not None and not _fits(value, tp):
            raise SalauditError(
                f"parameter {key}={value!r} of {name} is not {_type_name(tp)} (default {like!r})"
            )
    return {**defaults, **params}


def external_method(
    name: str,
    fn: Callable[..., torch.Tensor],
    decoys: DecoyConfig | None = None,
    aggregation: str = "range",
) -> Method:
    """A method from any callable `(model, x, target) -> attribution` (a Captum method, say),
    optionally decoy-enhanced."""
    info = MethodInfo(name, lambda model, x, target, ctx: fn(model, x, target))
    return Method(name, info, decoys=decoys, aggregation=aggregation if decoys else None)

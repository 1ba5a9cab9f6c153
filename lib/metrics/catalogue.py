"""The metric catalogue: one record per metric family (its variables with their direction and
title, its own dimension, what it needs, where the report shows it, and its compute function),
which the evaluate stage, the statistics, the report and `compare` all read. A metric
registers itself in its own module (`register(Family(...))`); nothing outside the catalogue
keeps a list of metric names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import SalauditError
from ..inputs.kinds import KINDS
from ..plugins import Plugins

if TYPE_CHECKING:
    from ..inputs.models import PixelModel
    from ..methods.context import Context
    from ..methods.registry import Method

Tensor = torch.Tensor
NEEDS = ("maps", "attacks", "prediction", "boxes", "decoys")


class Section(StrEnum):
    """Where the report shows a family."""

    FAITHFULNESS = "faithfulness"
    ROBUSTNESS = "robustness"
    LOCALISATION = "localisation"
    SANITY = "sanity"
    DECOYS = "decoys"


@dataclass(frozen=True)
class Variable:
    """One stored metric: `higher_is_better` gives the direction of its paired tests;
    `headline`: a column of the report's headline; `caption`: shown under each map, as
    `short` (its symbol)."""

    name: str
    title: str
    higher_is_better: bool
    headline: bool = False
    caption: bool = False
    short: str = ""


class Source(Protocol):
    """Where a family reads what it needs beyond the clean images and maps (the evaluate stage
    implements it on the store)."""

    def attacked(self, attack: str, method: str) -> tuple[Tensor, Tensor]:
        """The attacked images and `method`'s maps on them."""

    def boxes(self) -> Tensor:
        """The samples' boxes (B, 4), y0 x0 y1 x1."""

    def population(self, generator: str) -> tuple[Tensor, str]:
        """A kept decoy population (B, K, C, H, W) and its layer."""


@dataclass
class Cell:
    """What a family computes one region of one method (and attack) from. `labels` are the
    labels of the family's own dimension; `context` has the method's random keys, the
    micro-batch and the reference images (for metrics that recompute maps)."""

    model: PixelModel
    x: Tensor
    target: Tensor
    baseline: Tensor | str  # what replaces removed pixels (`masks.metric_baseline`)
    micro_batch: int
    source: Source
    keys: list[str] = field(default_factory=list)  # per sample, this family's random keys
    method: Method | None = None
    e: Tensor | None = None
    context: Context | None = None
    seed: int = 0
    labels: list = field(default_factory=list)
    attack: str | None = None
    generator: str | None = None

    @property
    def is_mask(self) -> bool:
        """Whether the map is a mask in [0, 1] already (RelEx's)."""
        return bool(self.method and self.method.info.mask)


@dataclass(frozen=True)
class Family:
    """Metrics computed together.

    `needs`: maps; attacks (explanation attacks: one cell per attack, dim `attack`); prediction
    (the prediction attack, whose extra dimension, e.g. radius, becomes `dim`); boxes; decoys
    (one variable `<family>_<generator>` per kept population, no method). `dim`: the family's
    own dimension; `labels(model)` its labels where the family owns them (thresholds, layers,
    percentages). `default`: computed when no metric is asked for by name (False for the
    expensive ones). `section`: where the report shows it. `kinds`: the input kinds it
    applies to; it computes on the grid of positions (`inputs.kinds`), which an image is.
    `compute(cell)` returns each variable's values (B,) or (B, len(labels))."""

    name: str
    variables: tuple[Variable, ...]
    compute: Callable[[Cell], dict[str, Tensor]] = field(repr=False)
    needs: str = "maps"
    dim: str | None = None
    labels: Callable[[PixelModel], list] | None = field(default=None, repr=False)
    section: Section = Section.FAITHFULNESS
    default: bool = True
    units: str = ""
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self):
        if self.needs not in NEEDS:
            raise ValueError(f"family {self.name}: needs one of {NEEDS}, not {self.needs!r}")
        Section(self.section)

    @property
    def per_method(self) -> bool:
        return self.needs != "decoys"

    def variable_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)


# The metric modules, in the order the report and the statistics list their families (within
# a module, the order they register in). A new metric module is added here.
MODULES = ("faithfulness", "robustness", "localisation", "sanity", "decoys", "road")
_FAMILIES: Plugins[Family] = Plugins(__package__, MODULES, lambda f: f.compute.__module__)


def register(family: Family) -> Family:
    """Add a family to the catalogue (its module calls this at import)."""
    return _FAMILIES.add(family.name, family)


def families() -> dict[str, Family]:
    """Every family, in catalogue order (`MODULES`)."""
    return _FAMILIES.all()


def variables() -> dict[str, Variable]:
    """Every stored metric variable (per-generator ones under their family's name)."""
    out = {}
    for f in families().values():
        out |= {v.name: v for v in f.variables}
    return out


def variable_names() -> list[str]:
    return list(variables())


def family_of(variable: str) -> Family:
    """The family a stored variable belongs to (`decoy_validity_dance` -> decoy_validity)."""
    for f in families().values():
        if variable in f.variable_names() or (
            not f.per_method and variable.startswith(f.name + "_")
        ):
            return f
    raise KeyError(variable)


def higher_is_better(variable: str) -> bool:
    return variables()[variable].higher_is_better


def per_generator(family: Family, generator: str) -> str:
    """The variable of a per-population family for one decoy generator."""
    return f"{family.name}_{generator}"


def generator_of(variable: str) -> str | None:
    """The decoy generator of a per-population variable (None for any other)."""
    for f in families().values():
        if not f.per_method and variable.startswith(f.name + "_"):
            return variable.removeprefix(f.name + "_")
    return None


def in_section(section: Section) -> list[Variable]:
    """The variables the report shows in `section`, in catalogue order."""
    return [v for f in families().values() if f.section == section for v in f.variables]


def check_thresholds(thresholds: dict[str, float]) -> dict[str, float]:
    """Thresholds name known metrics and are not negative."""
    unknown = sorted(set(thresholds) - set(variable_names()))
    if unknown:
        raise SalauditError(
            f"threshold for unknown metric(s) {', '.join(unknown)}; valid: "
            + ", ".join(variable_names())
        )
    negative = sorted(m for m, t in thresholds.items() if not t >= 0)
    if negative:
        raise SalauditError(
            f"threshold(s) of {', '.join(negative)} must be >= 0: the largest tolerated "
            "worsening of a method's mean, in the metric's units"
        )
    return thresholds

"""The attack catalogue: every attack registers itself with its traits, and the stages name
attacks by string (`topk@grad`, `pgd`) and ask the catalogue what an attack is.

Explanation attacks (`topk`, `target`, `mass-center`, `manipulate`) attack one method's maps
and are written `attack@method`; prediction attacks (`pgd`) attack the prediction and take no
method. Radii and steps are in units of 1/255 of the pixel range (METHODS.md's scaling rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import SalauditError
from ..inputs.kinds import KINDS
from ..inputs.models import PixelModel
from ..methods.differentiable import differentiable_methods
from ..methods.registry import check_params, signature_defaults
from ..plugins import Plugins

Tensor = torch.Tensor
HIDDEN = {"model", "x", "target", "method", "ctx", "method_params", "x_target"}


@dataclass
class AttackResult:
    """Per sample (and radius for pgd): the attacked image, success, the perturbation's L_inf
    and L2 norms, and the attack's objective before and after."""

    image: Tensor
    success: Tensor
    linf: Tensor
    l2: Tensor
    objective_before: Tensor
    objective_after: Tensor


RESULT_FIELDS = ("success", "linf", "l2", "objective_before", "objective_after")


@dataclass(frozen=True)
class AttackInfo:
    """A registered attack. `method`: it attacks one method's maps (else the prediction).
    `dim`: the extra per-sample dimension of its results and the parameter holding its labels
    (pgd: radius, from `radii`). `target_image`: it aims at another image's map. `params`:
    its parameters and their defaults, where its signature does not state them. `kinds`: the
    input kinds it applies to (it runs on the grid of positions, `inputs.kinds`)."""

    name: str
    fn: Callable[..., AttackResult] = field(repr=False)
    method: bool = True
    dim: str | None = None
    labels: str | None = None
    target_image: bool = False
    params: dict | None = None
    kinds: tuple[str, ...] = KINDS

    @property
    def defaults(self) -> dict:
        return dict(self.params) if self.params else signature_defaults(self.fn, HIDDEN)


_ATTACKS: Plugins[AttackInfo] = Plugins(
    __package__, ("explanation", "prediction"), lambda info: info.fn.__module__
)


def register_attack(name: str, **traits) -> Callable[[Callable], Callable]:
    """Register the decorated function as attack `name` with its traits (AttackInfo)."""

    def add(fn: Callable) -> Callable:
        _ATTACKS.add(name, AttackInfo(name, fn, **traits))
        return fn

    return add


def attacks() -> dict[str, AttackInfo]:
    """Every registered attack (their modules register on first use)."""
    return _ATTACKS.all()


def attack_info(name: str) -> AttackInfo:
    """The attack of `topk@grad` (or `pgd`)."""
    return attacks()[parse_attack(name)[0]]


def parse_attack(name: str) -> tuple[str, str | None]:
    """`topk@grad` -> ("topk", "grad"); `pgd` -> ("pgd", None). Errors name what is valid."""
    attack, _, method = name.partition("@")
    known = attacks()
    if attack not in known:
        raise SalauditError(
            f"unknown attack {attack!r} in {name!r}; valid: {', '.join(known)} "
            "(written attack@method, e.g. topk@grad; pgd takes no method)"
        )
    if not known[attack].method:
        if method:
            raise SalauditError(
                f"{attack} attacks the prediction and takes no method; write {attack}, not {name}"
            )
        return attack, None
    if not method:
        raise SalauditError(
            f"{attack} attacks one method's maps; write {attack}@METHOD, e.g. {attack}@grad"
        )
    if method not in differentiable_methods():
        raise SalauditError(
            f"{name}: {method} has no differentiable path, so it cannot be attacked; attacks run "
            f"against one of: {', '.join(differentiable_methods())}"
        )
    return attack, method


def attack_params(name: str, params: dict | None = None) -> dict:
    """The attack's parameters with defaults filled in; unknown ones raise an error."""
    return check_params(attack_info(name).defaults, params or {}, name)


def pixel_unit(model: PixelModel) -> float:
    """1/255 of the pixel range: the unit of attack radii and steps."""
    lo, hi = model.value_range
    return (hi - lo) / 255


def result(x: Tensor, adv: Tensor, success: Tensor, before: Tensor, after: Tensor) -> AttackResult:
    """The result of attacked images `adv` of x, with the perturbation's norms."""
    delta = (adv - x).flatten(1)
    return AttackResult(adv, success, delta.abs().amax(1), delta.norm(dim=1), before, after)

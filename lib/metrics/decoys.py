"""Decoy validity (DANCE preprint fig. 5): how far each kept decoy's representation at the
decoy layer is from the original's."""

from __future__ import annotations

from torch import Tensor

from ..errors import SalauditError
from ..inputs.models import PixelModel
from ..methods.decoys import representation_difference
from .catalogue import Cell, Family, Section, register


def decoy_validity(
    model: PixelModel, layer: str, x: Tensor, population: Tensor, micro_batch: int = 64
) -> Tensor:
    """Relative L_inf difference of F_l between x and each decoy (B, K) (DANCE fig. 5):
    max |F_l(x~) - F_l(x)| / max |F_l(x)|, population (B, K, C, H, W)."""
    if (
        population.ndim != 5
        or population.shape[0] != x.shape[0]
        or population.shape[2:] != x.shape[1:]
    ):
        raise SalauditError(
            f"decoys of shape {tuple(population.shape)} do not fit images {tuple(x.shape)}; "
            "expected (B, K, C, H, W)"
        )
    return representation_difference(model, layer, x, population, micro_batch)


def _validity(cell: Cell) -> dict[str, Tensor]:
    population, layer = cell.source.population(cell.generator)
    return {
        "decoy_validity": decoy_validity(cell.model, layer, cell.x, population, cell.micro_batch)
    }


register(
    Family(
        "decoy_validity",
        (),
        _validity,
        needs="decoys",
        section=Section.DECOYS,
        units="max |F_l(decoy) - F_l(x)| / max |F_l(x)|",
    )
)

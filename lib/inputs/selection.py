"""Sample selection: which dataset indices a run audits (part of the run's identity)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import SalauditError
from .data import Dataset

MODES = ("first", "random", "stratified")


@dataclass(frozen=True)
class Selection:
    """`n` samples (all if None) taken first, at random or stratified by class, all with
    `seed`; with `correct_only`, only samples the model classifies correctly."""

    mode: str = "random"
    n: int | None = None
    seed: int = 0
    correct_only: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise SalauditError(f"unknown selection {self.mode!r}; valid: {', '.join(MODES)}")
        if self.n is not None and self.n < 1:
            raise SalauditError(f"the number of samples must be at least 1, not {self.n}")

    @classmethod
    def parse(cls, text: str, n: int | None, seed: int = 0) -> Selection:
        """`first`, `random`, `stratified`, `correct` (random among the correctly classified)
        or a mode joined with `+correct`, e.g. `stratified+correct`."""
        parts = text.split("+")
        correct = "correct" in parts
        modes = [p for p in parts if p != "correct"] or ["random"]
        if len(modes) != 1:
            raise SalauditError(f"bad selection {text!r}; e.g. random, stratified+correct")
        return cls(modes[0], n, seed, correct)

    def to_dict(self) -> dict:
        return asdict(self)


def candidate_order(labels: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """All indices in the order samples are taken."""
    rng = np.random.default_rng([seed, 11])
    if mode == "first":
        return np.arange(len(labels))
    if mode == "random":
        return rng.permutation(len(labels))
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rounds = max(len(p) for p in per_class)
    interleaved = [p[r] for r in range(rounds) for p in per_class if r < len(p)]
    return np.asarray(interleaved, dtype=np.int64)


def select_samples(
    dataset: Dataset,
    selection: Selection,
    model: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> np.ndarray:
    """The selected dataset indices, sorted ascending."""
    order = candidate_order(dataset.labels(), selection.mode, selection.seed)
    n = len(order) if selection.n is None else selection.n
    if not selection.correct_only:
        if n > len(order):
            raise SalauditError(f"asked for {n} samples, {dataset.spec} has {len(order)}")
        return np.sort(order[:n])
    if model is None:
        raise SalauditError("selecting correctly classified samples needs a model")
    chosen: list[np.ndarray] = []
    found = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = dataset.load(idx)
        with torch.no_grad():
            pred = model(b.image.to(device)).argmax(1).cpu()
        good = idx[(pred == b.label).numpy()]
        chosen.append(good[: n - found])
        found += len(chosen[-1])
        if found == n:
            return np.sort(np.concatenate(chosen))
    raise SalauditError(f"only {found} of {dataset.spec} are classified correctly; asked for {n}")

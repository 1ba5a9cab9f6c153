"""The per-call settings every method, attack and metric shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.batching import CPU_MICRO_BATCH


@dataclass
class Context:
    """Per-call settings shared by all methods: one random key per image row of x, the
    micro-batch size, and reference images (the baselines of expected gradients)."""

    keys: list[str] | None = None
    micro_batch: int = CPU_MICRO_BATCH
    references: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def keys_for(self, n: int) -> list[str]:
        return self.keys if self.keys is not None else [str(i) for i in range(n)]

    def with_keys(self, keys: list[str]) -> Context:
        return Context(keys, self.micro_batch, self.references, self.extra)

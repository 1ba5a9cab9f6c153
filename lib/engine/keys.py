"""Keyed randomness: every random draw of a sample comes from a generator seeded by a key such
as `run seed/sample index/method/draw`, so results do not depend on how samples are batched."""

from __future__ import annotations

import hashlib

import torch


def seed_of(key: str) -> int:
    """A 63-bit seed from a key such as `run seed/sample index/method/draw`."""
    return int(hashlib.blake2b(key.encode(), digest_size=8).hexdigest(), 16) >> 1


def generator(key: str, device: torch.device | str) -> torch.Generator:
    """A random generator on `device` seeded by `key`, independent of batching."""
    return torch.Generator(device=device).manual_seed(seed_of(key))


def keyed_normal(keys: list[str], shape: tuple[int, ...], device) -> torch.Tensor:
    """One standard-normal draw of `shape` per key, stacked: (len(keys), *shape)."""
    return torch.stack(
        [torch.randn(shape, generator=generator(k, device), device=device) for k in keys]
    )


def keyed_uniform(keys: list[str], shape: tuple[int, ...], device) -> torch.Tensor:
    """One uniform [0, 1) draw of `shape` per key, stacked: (len(keys), *shape)."""
    return torch.stack(
        [torch.rand(shape, generator=generator(k, device), device=device) for k in keys]
    )

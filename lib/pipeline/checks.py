"""Checks for degenerate models and maps, recorded per sample in the store's `checks` group
with the region that was checked, and the warnings they add up to.

Per sample: a digest of the clean logits and their range over classes (written with the
inputs), and for each method the state of its map (0 fine, 1 all zero, 2 not finite, -1 not
checked) and its digest, `checks/map_<method>` (sample, 2) (written with the method's maps).
Digests are 63 bits of BLAKE2b of the float32 bytes: equal digests mean bitwise equal values.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..store import schema
from ..store.store import Store

FINE, ZERO, NONFINITE, UNCHECKED = 0, 1, 2, -1
EXAMPLES = 5


def digests(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, ...) -> (B,) int64: a digest of each row's float32 bytes."""
    rows = np.ascontiguousarray(np.asarray(values, dtype=np.float32)).reshape(len(values), -1)
    hashed = [hashlib.blake2b(r.tobytes(), digest_size=8).digest() for r in rows]
    return (np.frombuffer(b"".join(hashed), dtype=">u8") >> 1).astype(np.int64)


def write_logit_checks(store: Store, start: int, logits: torch.Tensor) -> None:
    """The clean logits' digest and range over classes of samples from `start` on."""
    values = logits.detach().float().cpu()
    store.write(schema.check("logit_digest"), start, digests(values))
    spread = (values.amax(1) - values.amin(1)).numpy()
    store.write(schema.check("logit_range"), start, spread.astype(np.float32))


def write_map_checks(store: Store, method: str, start: int, maps: np.ndarray) -> None:
    """Each map's digest and state (fine, all zero, not finite) of samples from `start` on."""
    flat = maps.reshape(len(maps), -1)
    state = np.where(~np.isfinite(flat).all(1), NONFINITE, np.where((flat == 0).all(1), ZERO, FINE))
    store.write(schema.check(f"map_{method}"), start, np.stack([state, digests(maps)], 1))


def warnings(store: Store) -> list[str]:
    """One line per degenerate finding over the checked samples: constant or flat logits,
    all-zero or non-finite maps per method, and methods whose maps equal another's."""
    if not store.has(schema.CHECKS):
        return []
    names = set(store.arrays(schema.CHECKS))
    index = store.read(schema.inputs("sample"))
    lines = []
    if {"logit_digest", "logit_range"} <= names:
        lines += _logit_warnings(store, index)
    methods = sorted(n.removeprefix("map_") for n in names if n.startswith("map_"))
    checked = {m: store.read(schema.check(f"map_{m}")) for m in methods}
    for m in methods:
        lines += _map_warnings(m, checked[m][:, 0], index)
    lines += _identical(methods, checked)
    return lines


def _examples(index: np.ndarray, where: np.ndarray) -> str:
    chosen = index[where][:EXAMPLES].tolist()
    more = " ..." if where.sum() > EXAMPLES else ""
    return f"dataset indices {', '.join(map(str, chosen))}{more}"


def _logit_warnings(store: Store, index: np.ndarray) -> list[str]:
    spread = store.read(schema.check("logit_range"))
    checked = np.isfinite(spread)
    n = int(checked.sum())
    digest = store.read(schema.check("logit_digest"))[checked]
    if n >= 2 and (digest == digest[0]).all():
        return [
            f"model: constant logits: all {n} checked samples get the same logits (the model "
            "ignores its input, e.g. a zero-initialised classifier head), so every gradient "
            "map is zero; load trained weights"
        ]
    flat = checked & (spread == 0)
    if flat.any():
        return [
            f"model: flat logits on {int(flat.sum())} of {n} samples (every class the same "
            f"logit, so there is no prediction to explain): {_examples(index, flat)}"
        ]
    return []


def _map_warnings(method: str, state: np.ndarray, index: np.ndarray) -> list[str]:
    n = int((state != UNCHECKED).sum())
    lines = []
    for code, what in ((ZERO, "all-zero"), (NONFINITE, "non-finite (NaN or infinite)")):
        hit = state == code
        if hit.any():
            lines.append(
                f"{method}: {what} maps on {int(hit.sum())} of {n} samples: {_examples(index, hit)}"
            )
    return lines


def _identical(methods: list[str], checked: dict[str, np.ndarray]) -> list[str]:
    """Pairs of methods whose maps are bitwise equal on every sample both checked (at least
    one of them not all zero)."""
    lines = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            (sa, da), (sb, db) = checked[a].T, checked[b].T
            seen = (sa != UNCHECKED) & (sb != UNCHECKED)
            both = seen & (sa == FINE)
            same = (sa[seen] == sb[seen]).all() and (da[both] == db[both]).all()
            if both.any() and same:
                lines.append(
                    f"{b}: maps identical to {a}'s on all {int(seen.sum())} samples both have "
                    "(one method under two names, or a setting that changes nothing)"
                )
    return lines

"""Parsing of `kind:name?key=value&...` specs used for models and data sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from ..errors import SalauditError


@dataclass(frozen=True)
class SpecString:
    """A parsed spec: `kind:target?key=value&key=value`."""

    kind: str
    target: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, kinds: tuple[str, ...], what: str) -> SpecString:
        head, _, query = text.partition("?")
        kind, sep, target = head.partition(":")
        if not sep or kind not in kinds:
            valid = ", ".join(f"{k}:..." for k in kinds)
            raise SalauditError(f"unknown {what} spec {text!r}; valid forms: {valid}")
        return cls(kind, target, dict(parse_qsl(query, keep_blank_values=True)))

    def take(self, key: str, default: str | None = None) -> str | None:
        return self.params.get(key, default)

    def check_params(self, allowed: set[str], what: str) -> None:
        unknown = set(self.params) - allowed
        if unknown:
            raise SalauditError(
                f"unknown parameter(s) {sorted(unknown)} in {what} spec; "
                f"allowed: {sorted(allowed) or 'none'}"
            )


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse `3x32x32` (channels, height, width), `30` (features) or `50x100` (tokens,
    embedding)."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise SalauditError(
            f"bad shape {text!r}; write CxHxW for images (3x32x32), F for tables (30) or TxD "
            "for tokens by embedding (50x100)"
        )
    return shape

"""New checkpoints under a watched prefix (a folder or s3:// prefix), for audits that run when
a checkpoint lands.

The watcher's state is a watermark: the newest modification time seen and the files seen at
exactly that time, so it stays small however many checkpoints the prefix holds. A file is new
when it is newer than the watermark, or as new and not yet seen.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import SalauditError
from ..inputs.uris import filesystem, is_remote


@dataclass
class Watermark:
    time: float = float("-inf")
    names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time if self.time > float("-inf") else None, "names": self.names}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Watermark:
        if not data or data.get("time") is None:
            return cls()
        return cls(float(data["time"]), list(data.get("names", [])))


def list_checkpoints(
    prefix: str, pattern: str = "*.pt", storage_options: dict | None = None
) -> dict[str, float]:
    """Every file under `prefix` whose name matches `pattern`: URL -> modification time (s)."""
    fs, path = filesystem(prefix, storage_options)
    if not fs.exists(path):
        raise SalauditError(f"watched prefix {prefix} does not exist; create it or fix the URL")
    fs.invalidate_cache(path)
    scheme = prefix.split("://", 1)[0] + "://" if is_remote(prefix) else ""
    out = {}
    for name, info in fs.find(path, detail=True).items():
        if fnmatch.fnmatch(name.rsplit("/", 1)[-1], pattern):
            out[scheme + name] = _mtime(info)
    return out


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if isinstance(value, datetime):
        return value.timestamp()
    if value is None:
        raise SalauditError(f"{info.get('name')}: the file system gives no modification time")
    return float(value)


def new_checkpoints(listing: dict[str, float], seen: Watermark) -> tuple[list[str], Watermark]:
    """The files of `listing` that `seen` has not seen (oldest first), and the new watermark."""
    new = sorted(
        (t, url)
        for url, t in listing.items()
        if t > seen.time or (t == seen.time and url not in seen.names)
    )
    if not listing:
        return [], seen
    newest = max(seen.time, *listing.values())
    names = sorted(u for u, t in listing.items() if t == newest)
    if newest == seen.time:
        names = sorted(set(names) | set(seen.names))
    return [url for _, url in new], Watermark(newest, names)

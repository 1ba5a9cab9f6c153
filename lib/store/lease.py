"""A lease on a store, so two audits never write one store at once.

The lease is a small JSON object at `<store>/_salaudit/lease.json`, created exclusively (an
`O_EXCL` open on a local disk, a conditional `If-None-Match: *` put on S3), renewed by a
background thread while its holder works, and removed when it is done. A lease whose holder
stopped renewing it (a crashed audit) expires after `ttl` seconds and may be taken over (two
audits taking over one expired lease at the same instant could both succeed: a narrow race,
not closed here).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from ..errors import SalauditError
from ..inputs.uris import filesystem, is_remote
from .schema import LEASE

TTL = 60.0
POLL = 1.0


class StoreBusy(SalauditError):
    """Another audit holds the store's lease."""


class Lease:
    """The lease on the store at `url`, held with `with Lease(url, ...):` or acquire/release."""

    def __init__(self, url: str, storage_options: dict | None = None, ttl: float = TTL):
        self.url = url.rstrip("/")
        self.fs, root = filesystem(self.url, storage_options)
        self.path = f"{root}/{LEASE}"
        self.ttl = ttl
        self.owner = {
            "id": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: float = 0.0, holder: str = "") -> Lease:
        """Take the lease, waiting up to `wait` seconds for another holder to finish; raise
        StoreBusy naming that holder if it does not."""
        deadline = time.monotonic() + wait
        self.owner["holder"] = holder
        while not self._try_create():
            current = self.read()
            if current and current.get("expires", 0) < time.time():
                self._remove()  # the holder stopped renewing: it crashed
                continue
            if time.monotonic() >= deadline:
                raise StoreBusy(self._busy(current or {}))
            time.sleep(POLL)
        self._thread = threading.Thread(target=self._renew, daemon=True, name="salaudit-lease")
        self._thread.start()
        return self

    def holder(self) -> str | None:
        """Why the store is busy, if a live lease is held on it now (None if it is free)."""
        current = self.read()
        if current and current.get("expires", 0) >= time.time():
            return self._busy(current)
        return None

    def _busy(self, who: dict) -> str:
        return (
            f"store {self.url} is in use by another audit ({who.get('holder') or 'run'} "
            f"on {who.get('host')}, pid {who.get('pid')}, lease until "
            f"{time.strftime('%H:%M:%S', time.localtime(who.get('expires', 0)))}); "
            "wait for it to finish, raise lease_wait to queue behind it, or use another "
            "store"
        )

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        current = self.read()
        if current and current.get("id") == self.owner["id"]:
            self._remove()

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "expires": time.time() + self.ttl}).encode()

    def _try_create(self) -> bool:
        """Create the lease object unless one exists (atomically)."""
        if is_remote(self.url):
            try:
                self.fs.pipe_file(self.path, self._body(), mode="create")
            except (FileExistsError, OSError) as e:
                if isinstance(e, FileExistsError) or "PreconditionFailed" in repr(e):
                    return False
                raise
            return True
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._body())
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.fs.pipe_file(self.path, self._body())

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)

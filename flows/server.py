"""The Prefect API an audit reports to: the configured one, or a temporary local server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API the flow and its Dask workers report to: the configured one, else a
    temporary local server whose URL the workers inherit (never one server per worker)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the run's last logs, before their server goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()

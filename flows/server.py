"""The Prefect API an audit reports to: the configured one, or a temporary local server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from salaudit.errors import SalauditError

TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
TEMPORARY = "SALAUDIT_TEMPORARY_PREFECT_API"  # set while the API is a server gone after the run
START_TIMEOUT = 120  # seconds; Prefect's 20 were missed on a loaded 2-core machine


def start_timeout() -> float:
    """How long a temporary server may take to start: the setting where the user gave it."""
    given = os.environ.get(TIMEOUT_SETTING)
    try:
        return float(given) if given else START_TIMEOUT
    except ValueError:
        raise SalauditError(f"{TIMEOUT_SETTING}={given!r} is not a number of seconds") from None


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
    timeout = start_timeout()
    try:
        server.start(timeout=timeout)
    except RuntimeError as error:
        server.stop()
        if "Timed out" not in str(error):
            raise
        raise SalauditError(
            f"the temporary Prefect server did not answer within {timeout:g} s (a loaded "
            "machine?); start one (prefect server start) and set PREFECT_API_URL to it, or "
            f"raise {TIMEOUT_SETTING}"
        ) from None
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    os.environ[TEMPORARY] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the run's last logs, before their server goes
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.pop(TEMPORARY, None)
        server.stop()

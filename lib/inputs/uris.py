"""File systems for local paths and object storage URLs (s3:// through s3fs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec


def storage_options_for(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Storage options for `url`; an s3 endpoint defaults to `AWS_ENDPOINT_URL`."""
    opts = dict(options or {})
    if url.startswith("s3://") and "endpoint_url" not in opts:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            opts["endpoint_url"] = endpoint
    return opts


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system and the path inside it for a local path or URL."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options_for(url, options))
    return fs, path


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def cache_dir() -> Path:
    """Where salaudit caches trained models and generated data: `$SALAUDIT_CACHE` or
    ~/.cache/salaudit."""
    return Path(os.environ.get("SALAUDIT_CACHE") or Path.home() / ".cache" / "salaudit")

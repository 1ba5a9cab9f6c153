"""The salaudit version, recorded in every store, and the versions of what it runs on."""

from __future__ import annotations

import platform
from importlib import metadata

__version__ = "0.1.0"

PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "zarr",
    "xarray",
    "s3fs",
    "captum",
    "prefect",
    "dask",
    "distributed",
    "dask-cuda",
)


def environment() -> dict[str, str]:
    """Python, salaudit and the installed versions of the packages an audit runs on (read
    from package metadata: nothing is imported)."""
    out = {"python": platform.python_version(), "salaudit": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out

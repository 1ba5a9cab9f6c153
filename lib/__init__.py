"""salaudit: audits of how robust an image classifier's saliency maps are.

The core library: models, data, saliency methods, decoys and the Zarr store. It imports
neither Prefect nor Dask, so it works in a notebook as it is.
"""

from .data import load_dataset
from .models import load_model
from .registry import get_method, method_names
from .version import __version__

__all__ = ["__version__", "get_method", "load_dataset", "load_model", "method_names"]

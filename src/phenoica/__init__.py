"""phenoica: batch-robust cell-microscopy embeddings (MAE -> whitening + ICA -> scores)."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("phenoica")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

"""phenoica: batch-robust cell-microscopy embeddings (MAE -> whitening + ICA -> scores).

``phenoica.tl`` (loaded on first use, so ``import phenoica`` stays light) is the scanpy-style
API for notebooks: ``phenoica.tl.postprocess``, ``phenoica.tl.apply``, ``phenoica.tl.score``.
"""

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("phenoica")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "tl"]


def __getattr__(name: str):
    if name == "tl":
        return importlib.import_module(".tl", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

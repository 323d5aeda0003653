"""Reading and writing: atomic outputs, AnnData conventions, tables, images, layouts.

The names below are loaded from their submodules on first use, so that importing a light
submodule (``phenoica.io.layouts``, which the Snakefile needs to read the plate sheet) does not
import anndata.
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "read_h5ad": "anndata",
    "sanitize_key": "anndata",
    "sanitize_uns": "anndata",
    "standardize_obs": "anndata",
    "write_h5ad": "anndata",
    "atomic_path": "atomic",
    "atomic_write_text": "atomic",
    "read_table": "tables",
    "write_tsv": "tables",
}

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "read_h5ad",
    "read_table",
    "sanitize_key",
    "sanitize_uns",
    "standardize_obs",
    "write_h5ad",
    "write_tsv",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))

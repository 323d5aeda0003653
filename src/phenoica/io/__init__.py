"""Reading and writing: atomic outputs, AnnData conventions, tables, images, layouts.

The names below are loaded from their submodules on first use, so that importing a light
submodule (``phenoica.io.layouts``, which the Snakefile needs to read the plate sheet) does not
import anndata.
"""

from __future__ import annotations

from ..lazy import lazy_getattr

_SOURCES = {
    "read_h5ad": "anndata",
    "read_uns_entry": "anndata",
    "sanitize_key": "anndata",
    "sanitize_uns": "anndata",
    "standardize_obs": "anndata",
    "write_h5ad": "anndata",
    "atomic_path": "atomic",
    "atomic_write_text": "atomic",
    "read_table": "tables",
    "write_tsv": "tables",
}

__all__ = sorted(_SOURCES)

__getattr__ = lazy_getattr(__name__, _SOURCES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))

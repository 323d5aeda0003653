"""Reading and writing: atomic outputs, AnnData conventions, tables, images, layouts."""

from .anndata import read_h5ad, sanitize_key, sanitize_uns, standardize_obs, write_h5ad
from .atomic import atomic_path, atomic_write_text
from .tables import read_table, write_tsv

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

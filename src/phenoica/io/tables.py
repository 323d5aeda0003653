"""Tables on disk: TSV (what users and other tools read) and Parquet (manifests)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .atomic import atomic_path


def write_tsv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as a tab-separated file without the index, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return Path(path)


def read_table(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """Read CSV, TSV (optionally .gz) or Parquet by extension."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".parquet":
        return pd.read_parquet(p, **kwargs)
    compressed = len(suffixes) > 1 and suffixes[-1] in {".gz", ".bz2", ".xz", ".zst"}
    core = suffixes[-2] if compressed else (suffixes[-1] if suffixes else "")
    sep = "\t" if core in {".tsv", ".tab", ".txt"} else ","
    return pd.read_csv(p, sep=sep, **kwargs)

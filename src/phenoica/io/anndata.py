"""AnnData conventions of the data contract (docs/design.md) and atomic .h5ad writing."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import InputError
from .atomic import atomic_path

CATEGORICAL_OBS = ("plate", "well", "batch", "perturbation")


def standardize_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """Apply the obs contract: categoricals for plate/well/batch/perturbation (and other
    string columns), ``site`` int, ``is_control`` bool, string index."""
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    if "site" in obs:
        obs["site"] = obs["site"].astype(np.int64)
    if "is_control" in obs:
        obs["is_control"] = obs["is_control"].astype(bool)
    for col in obs.columns:
        if col in CATEGORICAL_OBS or obs[col].dtype == object or pd.api.types.is_string_dtype(obs[col]):
            if not isinstance(obs[col].dtype, pd.CategoricalDtype):
                obs[col] = obs[col].astype(str).astype("category")
    return obs


def sanitize_key(key: str) -> str:
    """AnnData (h5py) keys may not contain '/'."""
    return str(key).replace("/", "_")


def sanitize_uns(value):
    """Make a nested structure storable in ``uns``: keys without '/', None -> '' and
    tuples -> lists, DataFrames kept (anndata stores them)."""
    if isinstance(value, dict):
        return {sanitize_key(k): sanitize_uns(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [sanitize_uns(v) for v in value]
        if all(isinstance(v, (int, float, bool, np.number, str)) for v in items) and items:
            if all(isinstance(v, str) for v in items):
                return np.array(items, dtype=object)
            if all(isinstance(v, (int, float, bool, np.number)) for v in items):
                return np.asarray(items)
        return {str(i): v for i, v in enumerate(items)}
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    return value


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike) -> Path:
    """Write ``adata`` to ``path`` atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def read_h5ad(path: str | os.PathLike) -> ad.AnnData:
    """Read an .h5ad file; one that cannot be read is an InputError naming it."""
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError) as exc:
        raise InputError(path, f"cannot read as AnnData: {exc}") from exc


def read_uns_entry(path: str | os.PathLike, key: str):
    """``uns[key]`` of an .h5ad file, read alone (not its X, obs or var, as :func:`read_h5ad`
    would); None when the file has no such entry. An unreadable file is an InputError."""
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as handle:
            node = handle.get(f"uns/{key}")
            return None if node is None else read_elem(node)
    except (OSError, KeyError) as exc:
        raise InputError(path, f"cannot read as AnnData: {exc}") from exc

"""Precomputed per-well profiles (CellProfiler features, published embeddings) as a wells AnnData.

A CSV/TSV (optionally compressed) or Parquet table with ``Metadata_*`` columns enters the workflow
at the collect stage, in the wells contract of docs/architecture.md, so post-processing, scoring
and benchmarks run on it unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .config import section_values
from .errors import InputError
from .identifiers import check_identifier, normalize_well
from .io.anndata import sanitize_key, standardize_obs, write_h5ad
from .io.tables import read_table
from .logs import get_logger
from .provenance import add_record
from .sheet import normalize_column_name, parse_bool

log = get_logger(__name__)

METADATA_PREFIX = "Metadata_"
CONTRACT_COLUMNS = ("plate", "well", "batch", "perturbation", "is_control")


def load_profiles(path: str | os.PathLike, *, batch_col: str, perturbation_col: str, control_value: str | None,
                  control_col: str | None, label_cols: Sequence[str],
                  plate_col: str | Sequence[str] | None, well_col: str | None,
                  feature_cols: str | Sequence[str] | None) -> ad.AnnData:
    """Load a per-well profiles table into the wells contract.

    The keyword-only arguments are the ``profiles`` config section (config/README.md; outside
    the workflow pass ``**{**phenoica.config.schema_defaults("profiles"), **overrides}``).

    Parameters
    ----------
    path
        CSV/TSV (``.gz`` etc. allowed) or Parquet, one row per well.
    batch_col, perturbation_col
        Columns giving ``batch`` and ``perturbation``.
    control_value, control_col
        Negative controls: rows where ``control_col`` equals ``control_value``; with only
        ``control_value``, rows whose perturbation equals it; with only ``control_col``, that
        column read as a boolean.
    label_cols
        Biology label columns (e.g. ``Metadata_MOA``) that must be present; carried like every
        other metadata column and listed in ``uns["profiles"]["label_cols"]``.
    plate_col, well_col
        Plate and well columns; ``None`` when the table has none (plate then equals batch, well
        is ``w<row number>``). ``plate_col`` may list several columns whose values are joined
        with ``_`` (RxRx3-core numbers plates within each experiment: ``[experiment_name,
        plate]`` gives ``gene-001_1``).
    feature_cols
        Feature columns: a list, or one glob pattern (``feature_*``: the published RxRx3-core
        OpenPhenom embeddings); by default every numeric column not named ``Metadata_*`` and not
        used as metadata above.

    Returns
    -------
    anndata.AnnData
        obs index ``plate:well`` (made unique with ``:1``, ``:2``... if needed); categoricals
        ``plate, well, batch, perturbation``; ``is_control`` bool; the other metadata columns
        with the ``Metadata_`` prefix dropped and lower-cased; ``X`` float32 features.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(src, "profiles table not found")
    try:
        table = read_table(src)
    except Exception as exc:  # malformed table
        raise InputError(src, f"cannot read profiles table ({type(exc).__name__}: {exc})") from exc
    if table.empty:
        raise InputError(src, "profiles table has no rows")
    table.columns = [str(c) for c in table.columns]

    plate_cols = [plate_col] if isinstance(plate_col, str) else list(plate_col or [])
    named = {"batch_col": batch_col, "perturbation_col": perturbation_col,
             "control_col": control_col, "well_col": well_col}
    wanted = [c for c in named.values() if c] + plate_cols + list(label_cols or [])
    missing = [c for c in dict.fromkeys(wanted) if c not in table.columns]
    if missing:
        meta = [c for c in table.columns if c.startswith(METADATA_PREFIX)]
        raise InputError(src, f"missing column(s) {missing}; metadata columns present: {meta}")
    if control_value is None and control_col is None:
        raise InputError(src, "no control definition: pass control_value (e.g. 'DMSO') and/or "
                              "control_col")

    used_meta = {c for c in wanted}
    features = _feature_columns(table, src, used_meta, feature_cols)
    meta_cols = [c for c in table.columns if c not in features]

    obs = pd.DataFrame(index=table.index)
    obs["batch"] = _identifiers(table[batch_col], "batch", src, batch_col)
    if plate_cols:
        plates = table[plate_cols[0]].astype(str)
        for col in plate_cols[1:]:
            plates = plates + "_" + table[col].astype(str)
        obs["plate"] = _identifiers(plates, "plate", src, "+".join(plate_cols))
    else:
        obs["plate"] = obs["batch"]
    if well_col:
        obs["well"] = [normalize_well(w, source=f"{src}, row {i + 1}, column {well_col!r}")
                       for i, w in enumerate(table[well_col])]
    else:
        obs["well"] = [f"w{i + 1}" for i in range(len(table))]
    obs["perturbation"] = _non_empty(table[perturbation_col], src, perturbation_col)
    obs["is_control"] = _control_mask(table, src, perturbation_col, control_value, control_col)
    if not obs["is_control"].any():
        rule = (f"{control_col!r} == {control_value!r}" if control_col and control_value is not None
                else f"{control_col!r} true" if control_col
                else f"{perturbation_col!r} == {control_value!r}")
        raise InputError(src, f"no control rows ({rule} matches none of {len(table)} rows)")

    # obs name of every source column: contract columns by role, the rest without the prefix
    obs_name = {c: role for c, role in ((batch_col, "batch"), (perturbation_col, "perturbation"),
                                        (well_col, "well")) if c}
    if len(plate_cols) == 1:
        obs_name[plate_cols[0]] = "plate"
    for col in meta_cols:
        if col in obs_name:
            continue
        name = normalize_column_name(col)
        while name in CONTRACT_COLUMNS or name in obs_name.values():
            name = f"{name}_orig"
        obs_name[col] = name
        obs[name] = table[col].to_numpy()

    index = pd.Index([f"{p}:{w}" for p, w in zip(obs["plate"], obs["well"])])
    if index.has_duplicates:
        n_dupes = int(index.duplicated().sum())
        log.warning("%s: %d duplicate plate:well pairs; suffixing the index to make it unique",
                    src, n_dupes)
        index = ad.utils.make_index_unique(index, join=":")
    obs.index = index

    X = table[features].to_numpy(dtype=np.float32)
    leading = ["plate", "well", "batch", "perturbation", "is_control"]
    obs = standardize_obs(obs[leading + [c for c in obs.columns if c not in leading]])
    var = pd.DataFrame(index=pd.Index([sanitize_key(c) for c in features]))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["profiles"] = {
        "source": str(src),
        "label_cols": [obs_name[c] for c in (label_cols or [])],
        "n_features": len(features),
    }
    log.info("%s: %d wells x %d features, %d batches, %d perturbations, %d control wells",
             src, adata.n_obs, adata.n_vars, obs["batch"].nunique(),
             obs["perturbation"].nunique(), int(obs["is_control"].sum()))
    return adata


def _feature_columns(table: pd.DataFrame, src: Path, used_meta: set[str],
                     feature_cols: str | Sequence[str] | None) -> list[str]:
    if isinstance(feature_cols, str):
        import fnmatch

        matched = [c for c in table.columns if fnmatch.fnmatchcase(c, feature_cols)]
        if not matched:
            raise InputError(src, f"no column matches feature_cols pattern {feature_cols!r} "
                                  f"(columns: {list(table.columns)[:12]}...)")
        feature_cols = matched
    if feature_cols is not None:
        features = list(feature_cols)
        missing = [c for c in features if c not in table.columns]
        if missing:
            raise InputError(src, f"feature column(s) {missing[:20]} not in the table")
        clash = [c for c in features if c in used_meta]
        if clash:
            raise InputError(src, f"column(s) {clash} are used as metadata and cannot be features")
        not_numeric = [c for c in features if not _is_numeric(table[c])]
        if not_numeric:
            raise InputError(src, f"feature column(s) {not_numeric[:20]} are not numeric")
    else:
        features = [c for c in table.columns
                    if not c.startswith(METADATA_PREFIX) and c not in used_meta
                    and _is_numeric(table[c])]
        skipped = [c for c in table.columns if not c.startswith(METADATA_PREFIX)
                   and c not in used_meta and c not in features]
        if skipped:
            log.info("%s: non-numeric column(s) %s carried as metadata", src, skipped[:10])
    if not features:
        raise InputError(src, "no numeric feature columns (features are the columns not named "
                              "Metadata_*; or pass feature_cols)")
    values = table[features].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        cols = [features[j] for j in np.flatnonzero(bad.any(axis=0))]
        raise InputError(src, f"{int(bad.sum())} NaN/inf value(s) in {len(cols)} feature "
                              f"column(s) {cols[:10]} on {int(bad.any(axis=1).sum())} row(s); "
                              "impute or drop them first")
    return features


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _identifiers(values: pd.Series, what: str, src: Path, col: str) -> list[str]:
    out = _non_empty(values, src, col)
    for text in dict.fromkeys(out):
        check_identifier(text, what, source=f"{src}, column {col!r}")
    return out


def _non_empty(values: pd.Series, src: Path, col: str) -> list[str]:
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 1).tolist()
        raise InputError(src, f"column {col!r} is empty on row(s) {rows[:20]}")
    return values.astype(str).str.strip().tolist()


def _control_mask(table: pd.DataFrame, src: Path, perturbation_col: str,
                  control_value: str | None, control_col: str | None) -> np.ndarray:
    if control_col is not None and control_value is not None:
        return (table[control_col].astype(str).str.strip() == str(control_value)).to_numpy()
    if control_col is not None:
        return np.array([parse_bool(v, f"{src}, row {i + 1}", control_col)
                         for i, v in enumerate(table[control_col])], dtype=bool)
    return (table[perturbation_col].astype(str).str.strip() == str(control_value)).to_numpy()


def collect_profiles(path: str | os.PathLike, out_h5ad: str | os.PathLike, *, batch_col: str,
                     perturbation_col: str, control_value: str | None, control_col: str | None,
                     label_cols: Sequence[str], plate_col: str | Sequence[str] | None,
                     well_col: str | None, feature_cols: str | Sequence[str] | None) -> None:
    """Load a profiles table (:func:`load_profiles`, same keyword arguments), record provenance,
    write ``out_h5ad`` atomically. This is the rule function of the profiles entry point."""
    options = section_values(collect_profiles, locals())
    adata = load_profiles(path, **options)
    add_record(adata.uns, "collect_profiles", params={"path": str(path), **options}, inputs=[path])
    write_h5ad(adata, out_h5ad)

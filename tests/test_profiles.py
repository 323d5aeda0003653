"""Precomputed profiles entry point: the real BBBC021 table and small generated tables."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers_data import BBBC021, REPO

from phenoica.config import schema_defaults
from phenoica.errors import InputError
from phenoica.profiles import collect_profiles, load_profiles

PROFILES = schema_defaults("profiles")
BBBC021_KW = {**PROFILES, "batch_col": "Metadata_Batch", "perturbation_col": "Metadata_Compound",
              "control_value": "DMSO", "label_cols": ["Metadata_MOA"]}


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def bbbc021() -> tuple[ad.AnnData, pd.DataFrame]:
    return (load_profiles(REPO / BBBC021, **BBBC021_KW), pd.read_csv(REPO / BBBC021))


def test_bbbc021_wells_contract(bbbc021):
    adata, table = bbbc021
    features = [c for c in table.columns if not c.startswith("Metadata_")]
    assert adata.shape == (len(table), len(features)) == (423, 516)
    assert adata.X.dtype == np.float32
    np.testing.assert_allclose(adata.X, table[features].to_numpy(np.float32))
    assert list(adata.var_names) == features
    obs = adata.obs
    assert obs.columns.tolist()[:5] == ["plate", "well", "batch", "perturbation", "is_control"]
    assert {"moa", "replicate", "concentration"} <= set(obs.columns)
    for col in ("plate", "well", "batch", "perturbation", "moa"):
        assert isinstance(obs[col].dtype, pd.CategoricalDtype), col
    assert obs["is_control"].dtype == bool
    assert obs["is_control"].sum() == (table["Metadata_Compound"] == "DMSO").sum() > 0
    assert obs["batch"].nunique() == 10 and obs["plate"].nunique() == 37
    assert obs_names_unique(adata) and adata.obs_names[0] == "Week10_40111:B02"
    assert (obs["moa"].astype(str).to_numpy() == table["Metadata_MOA"].to_numpy()).all()
    assert list(adata.uns["profiles"]["label_cols"]) == ["moa"]


def obs_names_unique(adata: ad.AnnData) -> bool:
    return adata.obs_names.is_unique


def test_collect_profiles_writes_h5ad_with_provenance(tmp_path):
    out = tmp_path / "wells.h5ad"
    collect_profiles(BBBC021, out_h5ad=str(out), **BBBC021_KW)
    back = ad.read_h5ad(out)
    assert back.shape == (423, 516) and back.X.dtype == np.float32
    stage = back.uns["phenoica"]["stages"]["collect_profiles"]
    assert '"perturbation_col": "Metadata_Compound"' in stage["params_json"]
    assert list(stage["inputs"]) == [BBBC021]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wells.h5ad"]  # no partial files


def small_table(n_per_batch: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for b in ("b1", "b2"):
        for i in range(n_per_batch):
            rows.append({"Metadata_Plate": f"{b}_p1", "Metadata_Well": f"A{i + 1}",
                         "Metadata_Batch": b, "Metadata_Pert": "ctrl" if i == 0 else f"g{i}",
                         "Metadata_Gene": f"G{i}", "f1": rng.normal(), "f2": rng.normal(),
                         "Metadata_Flag": i == 0})
    return pd.DataFrame(rows)


def write(table: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


KW = {**PROFILES, "batch_col": "Metadata_Batch", "perturbation_col": "Metadata_Pert", "control_value": "ctrl"}


def test_parquet_tsv_and_explicit_features(tmp_path):
    table = small_table()
    a = load_profiles(write(table, tmp_path / "t.parquet"), **KW)
    b = load_profiles(write(table, tmp_path / "t.tsv"), **KW)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.obs_names.tolist()[:2] == ["b1_p1:A01", "b1_p1:A02"]
    assert list(a.var_names) == ["f1", "f2"]
    only = load_profiles(tmp_path / "t.parquet", **{**KW, "feature_cols": ["f2"]})
    assert list(only.var_names) == ["f2"]
    assert {"gene", "flag"} <= set(a.obs.columns)


def test_control_col_variants(tmp_path):
    path = write(small_table(), tmp_path / "t.csv")
    flagged = load_profiles(path, **{**KW, "control_col": "Metadata_Flag", "control_value": None})
    assert flagged.obs["is_control"].sum() == 2
    by_gene = load_profiles(path, **{**KW, "control_col": "Metadata_Gene", "control_value": "G1"})
    assert by_gene.obs["is_control"].sum() == 2
    assert by_gene.obs.loc["b1_p1:A02", "is_control"]


def test_no_plate_no_well_and_duplicate_index(tmp_path):
    table = small_table()
    table.loc[1, "Metadata_Well"] = "A1"  # now A01 twice on plate b1_p1
    adata = load_profiles(write(table, tmp_path / "t.csv"), **KW)
    assert adata.obs_names.is_unique and adata.obs_names[1].startswith("b1_p1:A01:")
    bare = load_profiles(tmp_path / "t.csv", **{**KW, "plate_col": None, "well_col": None})
    assert (bare.obs["plate"].astype(str) == bare.obs["batch"].astype(str)).all()
    assert bare.obs_names[0] == "b1:w1"


@pytest.mark.parametrize("edit, kwargs, message", [
    (lambda t: t.drop(columns="Metadata_Batch"), {}, r"missing column\(s\) \['Metadata_Batch'\]; "
                                                     r"metadata columns present"),
    (lambda t: t.assign(f1=t["f1"].where(t.index != 2)), {},
     r"1 NaN/inf value\(s\) in 1 feature column\(s\) \['f1'\] on 1 row"),
    (lambda t: t.assign(f2=t["f2"].where(t.index != 0, np.inf)), {}, r"NaN/inf value.*\['f2'\]"),
    (lambda t: t, {"control_value": "DMSO"}, r"no control rows \('Metadata_Pert' == 'DMSO'"),
    (lambda t: t, {"control_value": None}, r"no control definition"),
    (lambda t: t.assign(Metadata_Batch="week/1"), {}, r"batch 'week/1' is not a valid identifier"),
    (lambda t: t.assign(Metadata_Well="well9"), {}, r"row 1, column 'Metadata_Well': well 'well9'"),
    (lambda t: t.assign(Metadata_Pert=t["Metadata_Pert"].where(t.index != 3)), {},
     r"column 'Metadata_Pert' is empty on row\(s\) \[4\]"),
    (lambda t: t[[c for c in t.columns if c.startswith("Metadata_")]], {},
     r"no numeric feature columns"),
    (lambda t: t, {"feature_cols": ["f1", "Metadata_Gene"]}, r"\['Metadata_Gene'\] are not numeric"),
    (lambda t: t, {"label_cols": ["Metadata_MOA"]}, r"missing column\(s\) \['Metadata_MOA'\]"),
    (lambda t: t.iloc[:0], {}, r"no rows"),
])
def test_profile_errors_name_the_file(tmp_path, edit, kwargs, message):
    path = write(edit(small_table()), tmp_path / "t.csv")
    with pytest.raises(InputError, match=message) as info:
        load_profiles(path, **{**KW, **kwargs})
    assert str(info.value).startswith(str(path))


def test_missing_file():
    with pytest.raises(InputError, match="profiles table not found"):
        load_profiles("absent.csv", **KW)


RXRX3_CORE_KW = {**PROFILES, "batch_col": "experiment_name", "perturbation_col": "treatment",
                 "control_value": "EMPTY_control", "plate_col": ["experiment_name", "plate"],
                 "well_col": "address", "feature_cols": "feature_*"}


def test_rxrx3_core_layout(tmp_path):
    """The published RxRx3-core OpenPhenom layout: well_id, experiment_name, plate numbered
    within the experiment, address on a 1536-well plate, treatment, feature_0.. feature_383 (and
    numeric metadata that must not become a feature)."""
    from phenoica.benchmarks.screen import rxrx3_core_table, synthetic_screen

    X, obs, _ = synthetic_screen(n_batches=2, plates_per_batch=2, wells_per_plate=60,
                                 n_perturbations=12, n_features=384, seed=3)
    table = rxrx3_core_table(X, obs)
    table["concentration"] = 0.1  # numeric metadata, as in the published table
    table.to_parquet(tmp_path / "rxrx3_core.parquet")
    adata = load_profiles(tmp_path / "rxrx3_core.parquet", **RXRX3_CORE_KW)
    assert adata.shape == (240, 384) and list(adata.var_names[:2]) == ["feature_0", "feature_1"]
    np.testing.assert_array_equal(adata.X, X)
    assert sorted(adata.obs["plate"].unique()) == ["exp-001_1", "exp-001_2", "exp-002_1", "exp-002_2"]
    assert not adata.obs_names.has_duplicates
    assert adata.obs["is_control"].sum() == obs["is_control"].sum()
    assert (adata.obs["well"].astype(str) == obs["well"].astype(str).to_numpy()).all()
    with pytest.raises(InputError, match="feature_cols pattern 'emb_\\*'"):
        load_profiles(tmp_path / "rxrx3_core.parquet", **{**RXRX3_CORE_KW, "feature_cols": "emb_*"})

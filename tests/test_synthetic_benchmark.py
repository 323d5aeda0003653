"""Synthetic disentanglement benchmark: parameters, rule functions end to end on a tiny grid,
and the scoring wiring on codes with known answers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from phenoica.benchmarks.synthetic import (
    DATASET_KEYS,
    PAPER_INFOMEC,
    SCORE_KEYS,
    TABLE_COLUMNS,
    TRAIN_KEYS,
    base_model,
    collect_synthetic,
    make_synthetic_dataset,
    score_latents,
    score_synthetic,
    summarize_synthetic,
    train_synthetic,
)
from phenoica.config import schema_defaults
from phenoica.errors import ConfigError, InputError
from phenoica.simulate.factors import make_factor_dataset

# the schema's defaults (the one place they live) with a tiny grid on top
TINY = {**schema_defaults("synthetic"), "datasets": ["shapes"], "seeds": [0], "n_train": 160, "n_eval": 100,
        "image_size": 16, "steps": 15, "batch_size": 32, "width": 8, "hidden": 32, "latent_dim": 6,
        "dci_estimator": "lasso"}
DATA = {key: TINY[key] for key in DATASET_KEYS}
TRAIN = {key: TINY[key] for key in TRAIN_KEYS}
SCORE = {key: TINY[key] for key in SCORE_KEYS}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_base_model_and_missing_beta(tmp_path):
    assert base_model("ae_ica") == "ae" and base_model("beta_vae") == "beta_vae"
    with pytest.raises(ConfigError):
        base_model("pca")
    with pytest.raises(ConfigError, match="synthetic.beta: no value for 'beta_tcvae'"):
        train_synthetic(tmp_path / "none.npz", "beta_tcvae", 0, tmp_path / "z.h5ad",
                        **{**TRAIN, "beta": {"beta_vae": 2}})


def test_rule_functions_end_to_end(tmp_path):
    data = tmp_path / "data" / "shapes.npz"
    make_synthetic_dataset("shapes", data, **DATA)
    latents = tmp_path / "shapes" / "ae" / "seed0.h5ad"
    weights = tmp_path / "shapes" / "ae" / "seed0.safetensors"
    train_synthetic(data, "ae", 0, latents, weights, **TRAIN)
    adata = ad.read_h5ad(latents)
    assert adata.shape == (100, 6) and adata.obsm["X_ica"].shape == (100, 6)
    assert list(adata.obs.columns) == ["shape", "scale", "rotation", "pos_x", "pos_y", "object_hue", "background_hue"]
    assert adata.uns["synthetic"]["model"] == "ae" and "train_synthetic" in adata.uns["phenoica"]["stages"]
    assert weights.exists()
    # the ICA codes are white on the training codes, so close to decorrelated on held-out ones
    corr = np.corrcoef(adata.obsm["X_ica"].T)
    assert np.abs(corr[~np.eye(6, dtype=bool)]).max() < 0.5

    tables = []
    for model in ("ae", "ae_ica"):
        out = tmp_path / "shapes" / model / "seed0.tsv"
        score_synthetic(latents, model, out, **SCORE)
        tables.append(out)
    with pytest.raises(InputError, match="needs 'beta_vae'"):
        score_synthetic(latents, "beta_vae", tmp_path / "x.tsv", **SCORE)

    out_tsv, summary, png = tmp_path / "disentanglement.tsv", tmp_path / "summary.tsv", tmp_path / "fig.png"
    collect_synthetic(tables=tables, out_tsv=out_tsv, out_summary=summary, out_png=png)
    table = pd.read_csv(out_tsv, sep="\t")
    assert tuple(table.columns) == TABLE_COLUMNS
    assert set(table["model"]) == {"ae", "ae_ica"} and set(table["dataset"]) == {"shapes"}
    assert {"InfoM", "InfoE", "InfoC", "MCC", "DCI_D", "DCI_C", "DCI_I", "recon_bce"} <= set(table["metric"])
    assert table["value"].notna().all()
    assert png.stat().st_size > 1000
    s = pd.read_csv(summary, sep="\t")
    row = s[(s["dataset"] == "mean") & (s["model"] == "ae_ica") & (s["metric"] == "InfoM")]
    assert float(row["paper"].iloc[0]) == PAPER_INFOMEC["ae_ica"]["InfoM"]


def test_dataset_size_mismatch_is_an_input_error(tmp_path):
    data = tmp_path / "shapes.npz"
    make_synthetic_dataset("shapes", data, **DATA)
    with pytest.raises(InputError, match="expected n_train"):
        train_synthetic(data, "ae", 0, tmp_path / "z.h5ad", **{**TRAIN, "n_eval": 60})


def _codes_file(codes: np.ndarray, ds, model: str = "ae", ica: np.ndarray | None = None) -> ad.AnnData:
    adata = ad.AnnData(X=codes.astype(np.float32), obs=ds.factor_frame().set_axis([str(i) for i in range(len(ds))]))
    adata.obsm["factor_codes"] = ds.codes
    if ica is not None:
        adata.obsm["X_ica"] = ica
    adata.uns["synthetic"] = {"dataset": ds.name, "model": model, "seed": 0, "recon_bce": 1.0,
                              "factor_names": list(ds.factor_names), "factor_kinds": list(ds.factor_kinds)}
    return adata


def test_scoring_wiring_on_known_codes():
    ds = make_factor_dataset("cells", 400, size=8, seed=2)
    perfect = (ds.factors - ds.factors.mean(0)) / ds.factors.std(0)
    rotated = perfect @ np.linalg.qr(np.random.default_rng(0).normal(size=(7, 7)))[0]
    fast = {"dci_estimator": "lasso", "n_neighbors": 10}
    table = score_latents(_codes_file(rotated, ds, ica=perfect), "ae_ica", **fast)
    scores = table.set_index("metric")["value"]
    assert scores["MCC"] == pytest.approx(1.0) and scores["InfoM"] > 0.95 and scores["DCI_D"] > 0.9
    raw = score_latents(_codes_file(rotated, ds, ica=perfect), "ae", **fast).set_index("metric")["value"]
    assert raw["MCC"] < 0.9 and raw["InfoM"] < scores["InfoM"] - 0.2
    assert set(table["model"]) == {"ae_ica"} and set(table["dataset"]) == {"cells"}


def test_summary_means_over_datasets():
    rows = [("a", "ae", 0, "InfoM", 0.2), ("b", "ae", 0, "InfoM", 0.4), ("a", "ae", 1, "InfoM", 0.4),
            ("b", "ae", 1, "InfoM", 0.6)]
    summary = summarize_synthetic(pd.DataFrame(rows, columns=list(TABLE_COLUMNS)))
    mean = summary[summary["dataset"] == "mean"].iloc[0]
    assert mean["mean"] == pytest.approx(0.4) and mean["n_seeds"] == 2
    assert mean["sd"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert mean["paper"] == PAPER_INFOMEC["ae"]["InfoM"]

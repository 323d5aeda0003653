"""The scanpy-style API phenoica.tl and the scanpy-facing obsm keys."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

SCANPY_RESERVED = ("X_pca", "X_umap", "X_tsne", "X_diffmap", "X_draw_graph_fr", "X_pca_harmony")


def _wells(n: int = 40, d: int = 6, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({"batch": pd.Categorical(np.repeat(["B0", "B1"], n // 2)),
                        "perturbation": pd.Categorical(np.tile(["DMSO", "a", "b", "c"], n // 4)),
                        "is_control": np.tile([True, False, False, False], n // 4)},
                       index=[f"w{i}" for i in range(n)])
    return ad.AnnData(X=rng.laplace(size=(n, d)).astype(np.float32) @ rng.normal(size=(d, d)).astype(np.float32),
                      obs=obs)


def test_collected_obsm_keys_never_collide_with_scanpy():
    """A post-processing output named like a scanpy embedding (pca, umap, pca_harmony) is stored
    under X_phenoica_<name>; sc.pp.pca / sc.tl.umap cannot overwrite it."""
    from phenoica.collect import assemble

    wells = _wells()
    post = ad.AnnData(X=np.ones((wells.n_obs, 2), dtype=np.float32), obs=wells.obs.copy())
    out = assemble(wells, {"pca": post, "umap": post, "pca_harmony": post})
    assert sorted(out.obsm) == ["X_phenoica_pca", "X_phenoica_pca_harmony", "X_phenoica_umap"]
    assert not set(out.obsm) & set(SCANPY_RESERVED)


FAST_ICA = {"n_restarts": 1, "max_iter": 300}


@pytest.fixture(scope="module")
def wells():
    from test_postprocess import make_wells

    return make_wells(n_batches=2, n_ctrl=8)


def test_method_named_pca_never_writes_scanpys_keys(wells):
    import phenoica
    from phenoica.errors import ConfigError

    out = phenoica.tl.postprocess(wells, "pca", n_components=4, copy=True)
    assert "X_phenoica_pca" in out.obsm and "X_pca" not in out.obsm
    assert "PCs" not in out.varm and "pca" not in out.uns
    with pytest.raises(ConfigError, match="scanpy"):
        phenoica.tl.postprocess(wells, "pca", key_added="X_pca", copy=True)


def test_postprocess_equals_the_workflow_rule(wells, tmp_path):
    """Notebook and workflow share one code path: the rule's output is tl.postprocess's."""
    from phenoica import tl
    from phenoica.postprocess import run_postprocess

    src = tmp_path / "wells.h5ad"
    wells.write_h5ad(src)
    out = tmp_path / "pca_ica.h5ad"
    params = {"n_components": 5, **FAST_ICA}
    run_postprocess(str(src), out_path=str(out), method="pca_ica", params=params, fit_on="controls",
                    layer=None, train_batches=None)
    rule = ad.read_h5ad(out)
    mine = tl.postprocess(wells, "pca_ica", fit_mask="is_control", copy=True, **params)
    np.testing.assert_array_equal(mine.obsm["X_phenoica_pca_ica"], rule.X)
    entry = mine.uns["phenoica_pca_ica"]
    assert list(entry["component_names"]) == list(rule.var_names)
    assert entry["params_json"] == rule.uns["method"]["params_json"]
    assert int(entry["n_fit"]) == int(rule.uns["method"]["n_fit"]) == int(wells.obs["is_control"].sum())
    np.testing.assert_array_equal(entry["state"]["ica"]["unmixing"], rule.uns["method"]["state"]["ica"]["unmixing"])
    assert entry["provenance"]["stage"] == "tl.postprocess"


@pytest.mark.parametrize("method", ["pca", "pca_rand", "pca_ica", "ica_clean", "tvn"])
def test_loadings_reproduce_the_coordinates_of_linear_methods(wells, method):
    from phenoica import tl

    params = {"n_components": 5, **({} if method in ("pca", "pca_rand", "tvn") else FAST_ICA)}
    if method == "ica_clean":
        params["drop"] = "batch_share"
    out = tl.postprocess(wells, method, copy=True, **params)
    key = f"phenoica_{method}"
    Z = out.obsm[f"X_{key}"]
    if method == "tvn":  # per-batch corrections: no single linear map
        assert key not in out.varm and "loadings" not in out.uns[key]
        return
    entry = out.uns[key]
    loadings = out.varm[key]
    assert loadings.shape == (wells.n_vars, Z.shape[1])
    recon = (np.asarray(wells.X, dtype=np.float64) - entry["center"]) @ loadings + entry["intercept"]
    np.testing.assert_allclose(recon, Z, rtol=1e-4, atol=1e-4)
    # an obsm input has no varm rows of its own: the loadings go to uns
    lay = tl.postprocess(wells, method, use_rep="X_layer3", copy=True, **params)
    assert key not in lay.varm and lay.uns[key]["loadings"].shape[0] == wells.obsm["X_layer3"].shape[1]


def test_copy_leaves_the_input_untouched_and_inplace_writes(wells):
    from phenoica import tl

    before = wells.copy()
    out = tl.postprocess(wells, "pca", n_components=3, copy=True)
    assert out is not wells and "X_phenoica_pca" in out.obsm
    assert sorted(wells.obsm) == sorted(before.obsm) and sorted(wells.uns) == sorted(before.uns)
    assert sorted(wells.varm) == sorted(before.varm)
    np.testing.assert_array_equal(wells.X, before.X)
    inplace = wells.copy()
    assert tl.postprocess(inplace, "pca", n_components=3) is None
    np.testing.assert_array_equal(inplace.obsm["X_phenoica_pca"], out.obsm["X_phenoica_pca"])


def test_apply_reapplies_a_stored_fit_without_refitting(wells, tmp_path):
    """apply() with the uns entry, the state dict or a workflow output file gives the fitted
    coordinates; on other wells it uses the old fit (a refit would differ)."""
    from phenoica import tl
    from phenoica.postprocess import run_postprocess

    params = {"n_components": 4, **FAST_ICA}
    fitted = tl.postprocess(wells, "pca_ica", fit_mask="is_control", copy=True, **params)
    entry = fitted.uns["phenoica_pca_ica"]
    Z = fitted.obsm["X_phenoica_pca_ica"]
    for source in (entry, dict(entry["state"])):
        again = tl.apply(wells, source, copy=True)
        np.testing.assert_array_equal(again.obsm["X_phenoica_pca_ica"], Z)
        assert bool(again.uns["phenoica_pca_ica"]["frozen"])
    half = wells[wells.obs["batch"] == "B1"].copy()
    tl.apply(half, entry, key_added="frozen")
    np.testing.assert_array_equal(half.obsm["frozen"], Z[(wells.obs["batch"] == "B1").to_numpy()])
    src, out = tmp_path / "wells.h5ad", tmp_path / "pp.h5ad"
    wells.write_h5ad(src)
    run_postprocess(str(src), out_path=str(out), method="pca_ica", params=params, fit_on="all",
                    layer=None, train_batches=None)
    from_file = tl.apply(half, str(out), copy=True)
    rec = from_file.uns["phenoica_pca_ica"]
    assert rec["frozen_from"] == str(out) and len(rec["frozen_sha256"]) == 64
    np.testing.assert_array_equal(from_file.obsm["X_phenoica_pca_ica"],
                                  ad.read_h5ad(out).X[(wells.obs["batch"] == "B1").to_numpy()])


def test_score_stores_the_separation_table(wells):
    from phenoica import tl
    from phenoica.config import schema_defaults
    from phenoica.metrics.separation import compute_scores

    data = tl.postprocess(wells, "pca_ica", n_components=4, copy=True, **FAST_ICA)
    table = tl.score(data, use_rep="X_phenoica_pca_ica", mixing=False)
    assert table is data.uns["phenoica_scores"]
    assert list(table.columns) == ["method", "component", "metric", "value"]
    assert set(table["method"]) == {"pca_ica"}
    assert {"batch_share", "stability", "hoyer"} <= set(table["metric"])
    fitted = tl.load_fitted(data.uns["phenoica_pca_ica"])[0]
    expected, _ = compute_scores(data.obsm["X_phenoica_pca_ica"], data.obs, method="pca_ica",
                                 names=[f"IC{i}" for i in range(1, 5)],
                                 truth={k: data.obsm[k] for k in ("truth_biology", "truth_batch")},
                                 stability=fitted.component_stability(),
                                 stability_threshold=float(fitted.params["stability_threshold"]),
                                 **{**schema_defaults("scores"), "mixing": False})
    pd.testing.assert_frame_equal(table, expected)

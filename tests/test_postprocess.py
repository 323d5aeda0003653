"""phenoica.postprocess: methods, stored state, fitting sets and the postprocess rule."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers_data import BBBC021, REPO

from phenoica.errors import ConfigError, InputError
from phenoica.metrics.separation import group_share
from phenoica.postprocess import (
    METHOD_NAMES,
    fitting_mask,
    load_method,
    make_method,
    method_from_state,
    run_postprocess,
)

FAST_ICA = {"n_restarts": 1, "max_iter": 300}


def make_wells(n_batches: int = 4, n_perts: int = 6, n_ctrl: int = 16, n_rep: int = 4,
               d: int = 16, seed: int = 0) -> ad.AnnData:
    """Synthetic wells: sparse Laplace biology shifted per perturbation, per-batch offsets on
    three batch factors, a little noise, mixed linearly into ``d`` features."""
    rng = np.random.default_rng(seed)
    records = []
    for b in range(n_batches):
        records += [(f"B{b}", "DMSO", True)] * n_ctrl
        for p in range(n_perts):
            records += [(f"B{b}", f"cpd{p}", False)] * n_rep
    obs = pd.DataFrame(records, columns=["batch", "perturbation", "is_control"])
    n = len(obs)
    obs.index = [f"P{b}:W{i:04d}" for i, b in enumerate(obs["batch"])]
    obs["plate"] = obs["batch"].str.replace("B", "P")
    obs["well"] = [f"W{i:04d}" for i in range(n)]
    k_bio, k_batch = 4, 3
    pert_idx = obs["perturbation"].str.removeprefix("cpd").replace("DMSO", "-1").astype(int).to_numpy()
    bio = rng.laplace(size=(n, k_bio)) * 0.5
    for p in range(n_perts):
        bio[pert_idx == p, p % k_bio] += 3.0
    batch_codes = obs["batch"].str.removeprefix("B").astype(int).to_numpy()
    offsets = rng.normal(scale=2.5, size=(n_batches, k_batch))
    tech = offsets[batch_codes] + rng.normal(scale=0.3, size=(n, k_batch))
    noise = rng.normal(scale=0.3, size=(n, d - k_bio - k_batch))
    latent = np.hstack([bio, tech, noise])
    X = (latent @ rng.normal(size=(d, d))).astype(np.float32) + 5.0
    for col in ("batch", "perturbation", "plate", "well"):
        obs[col] = obs[col].astype("category")
    adata = ad.AnnData(X=X, obs=obs)
    adata.obsm["truth_biology"] = pd.DataFrame(bio, index=obs.index,
                                               columns=[f"f{i}" for i in range(k_bio)])
    adata.obsm["truth_batch"] = pd.DataFrame(tech, index=obs.index,
                                             columns=[f"t{i}" for i in range(k_batch)])
    adata.obsm["X_layer3"] = (X[:, :10] * 2).astype(np.float32)
    return adata


@pytest.fixture(scope="module")
def wells() -> ad.AnnData:
    return make_wells()


def _params(name: str) -> dict:
    params = {}
    if name in ("pca_ica", "tvn_ica", "ica_clean"):
        params.update(FAST_ICA)
    if name == "harmony":
        params["n_components"] = 10
    return params


def test_method_names_and_errors():
    assert METHOD_NAMES == ("base", "pca", "pca_ica", "pca_rand", "centerscale", "tvn", "combat",
                            "harmony", "tvn_ica", "ica_clean")
    with pytest.raises(ConfigError, match="unknown post-processing method"):
        make_method("umap")
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_method("pca", n_comps=3)
    assert make_method("combat").transductive and make_method("harmony").transductive
    assert not any(make_method(n).transductive for n in METHOD_NAMES if n not in ("combat", "harmony"))


def _storable(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and "/" not in k and _storable(v) for k, v in value.items())
    return isinstance(value, (np.ndarray, str, bool, int, float, np.number))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_fit_transform_state_roundtrip(wells, name):
    X, obs = wells.X, wells.obs
    method = make_method(name, **_params(name))
    Z = method.fit(X, obs).transform(X, obs)
    assert Z.dtype == np.float32 and Z.shape[0] == wells.n_obs and Z.shape[1] >= 1
    assert np.isfinite(Z).all()
    state = method.to_state()
    assert state["name"] == name and _storable(state)
    again = method_from_state(state).transform(X, obs)
    np.testing.assert_allclose(again, Z, atol=1e-5)


def test_unfitted_method_refuses():
    with pytest.raises(RuntimeError, match="fitted"):
        make_method("pca").transform(np.zeros((3, 2), np.float32), pd.DataFrame(index=range(3)))


def test_pca_is_white_and_ica_rand_are_rotations_of_it(wells):
    X, obs = wells.X, wells.obs
    Zp = make_method("pca").fit_transform(X, obs).astype(np.float64)
    np.testing.assert_allclose(np.cov(Zp, rowvar=False), np.eye(Zp.shape[1]), atol=1e-4)
    for name in ("pca_ica", "pca_rand"):
        Zr = make_method(name, seed=3, **_params(name)).fit_transform(X, obs).astype(np.float64)
        Q, *_ = np.linalg.lstsq(Zp, Zr, rcond=None)
        np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-4)
        np.testing.assert_allclose(Zp @ Q, Zr, atol=1e-3)


def test_pca_rand_seeds_differ_and_repeat(wells):
    X, obs = wells.X, wells.obs
    a = make_method("pca_rand", seed=1).fit_transform(X, obs)
    b = make_method("pca_rand", seed=1).fit_transform(X, obs)
    c = make_method("pca_rand", seed=2).fit_transform(X, obs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_n_components_and_standardize(wells):
    X, obs = wells.X, wells.obs
    assert make_method("pca", n_components=5).fit_transform(X, obs).shape[1] == 5
    # a request above the rank of the fitting set is lowered to it
    Xlow = X[:, :3] @ np.ones((3, 8), np.float32) + np.arange(8, dtype=np.float32)
    Xlow[:, :3] = X[:, :3]
    assert make_method("pca", n_components=8).fit_transform(Xlow, obs).shape[1] == 3
    scaled = X * np.logspace(0, 4, X.shape[1]).astype(np.float32)
    z1 = make_method("pca", standardize=True).fit_transform(X, obs)
    z2 = make_method("pca", standardize=True).fit_transform(scaled, obs)
    np.testing.assert_allclose(np.abs(z1), np.abs(z2), atol=2e-3)


def test_fitting_mask(wells):
    obs = wells.obs
    assert fitting_mask(obs, "all").all()
    np.testing.assert_array_equal(fitting_mask(obs, "controls"), obs["is_control"].to_numpy())
    mask = fitting_mask(obs, "train_batches", ["B0", "B2"])
    assert set(obs["batch"][mask]) == {"B0", "B2"}
    with pytest.raises(InputError, match="B9"):
        fitting_mask(obs, "train_batches", ["B0", "B9"])
    with pytest.raises(ConfigError):
        fitting_mask(obs, "train_batches")
    with pytest.raises(ConfigError, match="fit_on"):
        fitting_mask(obs, "some")


def test_fit_uses_only_the_fitting_set(wells):
    X, obs = wells.X.copy(), wells.obs
    train = fitting_mask(obs, "train_batches", ["B0", "B1", "B2"])
    tr = np.flatnonzero(train)
    m1 = make_method("pca").fit(X[train], obs.iloc[tr])
    X2 = X.copy()
    X2[~train] += 100.0  # held-out wells change: the fitted transform must not
    m2 = make_method("pca").fit(X2[train], obs.iloc[tr])
    np.testing.assert_allclose(m1.transform(X, obs), m2.transform(X, obs), atol=1e-6)
    Zt = m1.transform(X[train], obs.iloc[tr]).astype(np.float64)
    np.testing.assert_allclose(np.cov(Zt, rowvar=False), np.eye(Zt.shape[1]), atol=1e-4)


def test_centerscale_standardises_each_batch_on_its_controls(wells):
    X, obs = wells.X, wells.obs
    Z = make_method("centerscale").fit_transform(X, obs)
    for batch in obs["batch"].cat.categories:
        ctrl = ((obs["batch"] == batch) & obs["is_control"]).to_numpy()
        np.testing.assert_allclose(Z[ctrl].mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(Z[ctrl].std(axis=0), 1.0, atol=1e-3)
    bad = obs.copy()
    bad.loc[bad["batch"] == "B1", "is_control"] = False
    method = make_method("centerscale").fit(X, obs)
    with pytest.raises(InputError, match="B1"):
        method.transform(X, bad)


def _control_batch_share(Z, obs) -> float:
    """Share of the control wells' total variance explained by batch."""
    ctrl = obs["is_control"].to_numpy()
    Zc = Z[ctrl].astype(np.float64)
    share = np.nan_to_num(group_share(Zc, obs["batch"].to_numpy()[ctrl], adjusted=False))
    var = Zc.var(axis=0)
    return float((share * var).sum() / var.sum())


def test_batch_correction_methods_reduce_batch_variance_of_controls(wells):
    X, obs = wells.X, wells.obs
    before = _control_batch_share(make_method("pca").fit_transform(X, obs), obs)
    assert before > 0.15  # 3 batch factors among ~13 unit-variance components
    # ica_clean: the removal itself, from the best of 5 restarts with the stability rule off (at
    # 10 wells per component the restarts split the 3-d batch subspace differently, so the rule
    # keeps some of its components: test_ica_clean_drops_only_stable_components)
    clean = {"n_restarts": 5, "stability_threshold": 0.0}
    for name in ("centerscale", "tvn", "combat", "tvn_ica", "ica_clean"):
        Z = make_method(name, **(clean if name == "ica_clean" else _params(name))).fit_transform(X, obs)
        assert _control_batch_share(Z, obs) < 0.5 * before, name
    # Harmony works on unwhitened PCA scores, where batch dominates; it must reduce that share
    harmony = make_method("harmony", n_components=10).fit(X, obs)
    scores = harmony.whitening.transform(X, whiten=False)
    assert _control_batch_share(harmony.transform(X, obs), obs) < _control_batch_share(scores, obs) - 0.05


def test_tvn_centres_controls_per_batch(wells):
    X, obs = wells.X, wells.obs
    Z = make_method("tvn").fit_transform(X, obs)
    for batch in obs["batch"].cat.categories:
        ctrl = ((obs["batch"] == batch) & obs["is_control"]).to_numpy()
        np.testing.assert_allclose(Z[ctrl].mean(axis=0), 0.0, atol=1e-4)


def test_ica_clean_drops_batch_components(wells):
    X, obs = wells.X, wells.obs
    full = make_method("pca_ica", **FAST_ICA).fit(X, obs)
    clean = make_method("ica_clean", **FAST_ICA).fit(X, obs)
    Zc = clean.transform(X, obs)
    assert 1 <= Zc.shape[1] < full.transform(X, obs).shape[1]
    # the kept columns are exactly those components of PCA+ICA
    np.testing.assert_allclose(Zc, full.transform(X, obs)[:, clean.keep], atol=1e-5)
    assert clean.component_names() == [f"IC{i + 1}" for i in clean.keep]
    only_batch = make_method("ica_clean", drop="batch_share", max_batch_share=0.5, **FAST_ICA)
    assert only_batch.fit_transform(X, obs).shape[1] < full.transform(X, obs).shape[1]
    with pytest.raises(ConfigError, match="drop"):
        make_method("ica_clean", drop="everything").fit(X, obs)


def test_ica_clean_drops_only_stable_components(wells, monkeypatch):
    """A batch component that is unstable across restarts is kept (labelled unstable, not
    judged); the same component, stable, is dropped."""
    import phenoica.postprocess.methods as methods_mod

    X, obs = wells.X, wells.obs
    real = methods_mod.fit_ica
    target = {}

    def with_stability(*args, **kwargs):
        fitted = real(*args, **kwargs)
        fitted.stability = np.ones(fitted.n_components)
        if "component" in target:
            fitted.stability[target["component"]] = 0.5
        return fitted

    monkeypatch.setattr(methods_mod, "fit_ica", with_stability)
    stable = make_method("ica_clean", **FAST_ICA).fit(X, obs)
    dropped = sorted(set(range(len(stable.batch_share))) - set(stable.keep))
    assert dropped
    target["component"] = dropped[0]
    unstable = make_method("ica_clean", **FAST_ICA).fit(X, obs)
    assert dropped[0] in unstable.keep
    assert sorted(set(stable.keep) | {dropped[0]}) == list(unstable.keep)
    np.testing.assert_array_equal(unstable.component_stability(), np.where(unstable.keep == dropped[0], 0.5, 1.0))
    by_share = make_method("ica_clean", drop="batch_share", max_batch_share=0.5, **FAST_ICA).fit(X, obs)
    if dropped[0] in np.flatnonzero(by_share.batch_share > 0.5):
        assert dropped[0] in by_share.keep


def test_ica_parameters(wells):
    X, obs = wells.X, wells.obs
    fitted = make_method("pca_ica", n_components=6).fit(X, obs)
    assert fitted.params["n_restarts"] == "auto" and fitted.ica.n_restarts >= 5
    state = fitted.to_state()["ica"]
    for key in ("stability", "n_restarts", "restart_rows", "restart_objective", "restart_converged",
                "restart_n_iter", "winner", "refine_n_iter", "stage_rows", "stage_n_iter"):
        assert key in state, key
    assert state["stability"].shape == (6,) and np.isfinite(state["stability"]).all()
    np.testing.assert_array_equal(method_from_state(fitted.to_state()).component_stability(),
                                  state["stability"])
    assert make_method("pca").fit(X, obs).component_stability() is None
    for bad in ({"n_restarts": 0}, {"n_restarts": "many"}, {"stability_threshold": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_method("pca_ica", **bad).fit(X, obs)


def test_methods_report_missing_obs_columns(wells):
    obs = wells.obs.drop(columns=["is_control"])
    with pytest.raises(InputError, match="is_control"):
        make_method("tvn").fit(wells.X, obs)
    with pytest.raises(InputError, match="NaN"):
        X = wells.X.copy()
        X[0, 0] = np.nan
        make_method("pca").fit(X, wells.obs)


# --- the rule function -----------------------------------------------------------------------


def test_run_postprocess_writes_reapplicable_anndata(wells, tmp_path):
    src = tmp_path / "wells.h5ad"
    wells.write_h5ad(src)
    out = tmp_path / "pp" / "pca_ica.h5ad"
    run_postprocess(str(src), out_path=str(out), method="pca_ica",
                    params={"n_components": 8, **FAST_ICA}, fit_on="controls")
    res = ad.read_h5ad(out)
    assert res.X.dtype == np.float32 and res.X.shape == (wells.n_obs, 8)
    assert list(res.var_names) == [f"IC{i}" for i in range(1, 9)]
    pd.testing.assert_frame_equal(res.obs, wells.obs)
    assert set(res.obsm) == {"truth_biology", "truth_batch"}
    meth = res.uns["method"]
    assert meth["name"] == "pca_ica" and meth["fit_on"] == "controls"
    assert int(meth["n_fit"]) == int(wells.obs["is_control"].sum())
    assert "postprocess" in res.uns["phenoica"]["stages"]
    np.testing.assert_allclose(load_method(res).transform(wells.X, wells.obs), res.X, atol=1e-5)
    assert not list(out.parent.glob("*.partial"))


def test_run_postprocess_layer_and_base_names(wells, tmp_path):
    src = tmp_path / "wells.h5ad"
    wells.write_h5ad(src)
    out = tmp_path / "base.h5ad"
    run_postprocess(str(src), out_path=str(out), method="base", params={}, layer="3")
    res = ad.read_h5ad(out)
    np.testing.assert_array_equal(res.X, wells.obsm["X_layer3"])
    run_postprocess(str(src), out_path=str(out), method="base", params={})
    assert list(ad.read_h5ad(out).var_names) == list(wells.var_names)
    with pytest.raises(InputError, match=r"wells\.h5ad.*X_layer7"):
        run_postprocess(str(src), out_path=str(out), method="pca", params={}, layer="7")


def test_run_postprocess_input_errors_name_the_file(wells, tmp_path):
    bad = wells.copy()
    bad.obs = bad.obs.drop(columns=["is_control"])
    src = tmp_path / "bad_wells.h5ad"
    bad.write_h5ad(src)
    out = tmp_path / "tvn.h5ad"
    out.write_text("old output")
    with pytest.raises(InputError, match=r"bad_wells\.h5ad.*is_control"):
        run_postprocess(str(src), out_path=str(out), method="tvn", params={})
    assert out.read_text() == "old output"
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(InputError, match="missing.h5ad"):
        run_postprocess(str(tmp_path / "missing.h5ad"), out_path=str(out), method="pca", params={})


def test_bbbc021_profiles_integration():
    """Real CellProfiler profiles (423 wells x 515 features, 10 weeks): control-based methods
    remove most of the week effect on DMSO wells that standardised PCA keeps."""
    table = pd.read_csv(REPO / BBBC021)
    feats = [c for c in table.columns if not c.startswith("Metadata_")]
    obs = pd.DataFrame({
        "batch": table["Metadata_Batch"].astype(str),
        "perturbation": table["Metadata_Compound"].astype(str),
        "moa": table["Metadata_MOA"].astype(str),
        "is_control": table["Metadata_Compound"].eq("DMSO"),
    }).astype({"batch": "category", "perturbation": "category", "moa": "category"})
    X = table[feats].to_numpy(np.float32)
    shares = {}
    for name in ("pca", "centerscale", "tvn", "pca_ica"):
        Z = make_method(name, n_components=30, standardize=True,
                        **(FAST_ICA if name == "pca_ica" else {})).fit_transform(X, obs)
        assert Z.shape == (len(obs), 30) and np.isfinite(Z).all()
        shares[name] = _control_batch_share(Z, obs)
    assert shares["pca"] > 0.3
    assert shares["centerscale"] < 0.5 * shares["pca"]
    assert shares["tvn"] < 0.5 * shares["pca"]
    assert shares["pca_ica"] == pytest.approx(shares["pca"], abs=0.2)

"""phenoica.metrics.separation: attribution, sparsity, concentration, MCC, mixing, run_scores."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_postprocess import FAST_ICA, make_wells  # noqa: E402 (tests/ is on sys.path)

from phenoica.config import schema_defaults
from phenoica.errors import InputError
from phenoica.metrics.separation import (
    LABEL_CODES,
    SCORE_COLUMNS,
    UNSTABLE,
    attribution_labels,
    component_attribution,
    compute_scores,
    group_share,
    hoyer,
    mean_hoyer,
    mixing_scores,
    nested_share,
    run_scores,
    top_share,
    truth_mcc,
)
from phenoica.postprocess import make_method, run_postprocess

SCORES = schema_defaults("scores")
NO_MIXING = {**SCORES, "mixing": False}
MIXING = {key: SCORES[key] for key in ("max_wells", "n_neighbors", "max_labels", "perplexity", "seed")}
ROTATION_INVARIANT = ("batch_silhouette", "batch_silhouette_raw", "ilisi", "graph_connectivity",
                      "perturbation_silhouette", "label_silhouette")


@pytest.fixture(scope="module")
def wells() -> ad.AnnData:
    return make_wells(n_ctrl=20, n_rep=6, seed=3)


def _design(seed: int = 0):
    """Column 0: batch offset only; column 1: perturbation effect only; column 2: noise."""
    rng = np.random.default_rng(seed)
    n_b, n_per = 5, 40
    batch = np.repeat([f"b{i}" for i in range(n_b)], n_per)
    pert = np.tile(np.array(["DMSO"] * 10 + [f"p{i}" for i in range(6) for _ in range(5)]), n_b)
    ctrl = pert == "DMSO"
    z = rng.normal(size=(len(batch), 3))
    z[:, 0] += np.repeat(rng.normal(scale=4, size=n_b), n_per)
    codes = pd.factorize(pert, sort=True)[0]
    z[:, 1] += np.where(ctrl, 0.0, rng.normal(scale=4, size=codes.max() + 1)[codes])
    obs = pd.DataFrame({"batch": batch, "perturbation": pert, "is_control": ctrl})
    return z, obs


def test_group_and_nested_shares():
    z, obs = _design()
    ctrl = obs["is_control"].to_numpy()
    b = group_share(z[ctrl], obs["batch"][ctrl])
    p = nested_share(z, obs["perturbation"], obs["batch"])
    assert b[0] > 0.8 and b[1] < 0.1 and b[2] < 0.1
    assert p[1] > 0.8 and p[0] < 0.1 and p[2] < 0.1
    # chance-corrected: pure noise with many groups stays near 0, the raw share does not
    noise = np.random.default_rng(1).normal(size=(200, 1))
    groups = np.repeat(np.arange(50), 4)
    assert group_share(noise, groups)[0] < 0.1 < group_share(noise, groups, adjusted=False)[0]


def test_attribution_labels_and_table():
    assert list(attribution_labels(np.array([0.6, 0.01, 0.3, 0.01]), np.array([0.1, 0.5, 0.25, 0.02]),
                                   margin=2.0, min_share=0.05)) == ["technical", "biological", "mixed", "mixed"]
    z, obs = _design()
    table = component_attribution(z, obs, names=["a", "b", "c"], margin=2.0, min_share=0.05)
    assert list(table.index) == ["a", "b", "c"]
    assert list(table["label"].astype(str)) == ["technical", "biological", "mixed"]


def test_hoyer_and_top_share():
    assert hoyer(np.array([[0.0, 0.0, 5.0, 0.0]]))[0] == pytest.approx(1.0)
    assert hoyer(np.array([[1.0, -1.0, 1.0, 1.0]]))[0] == pytest.approx(0.0)
    assert top_share(np.ones(8), 0.25) == pytest.approx(0.25)
    assert top_share(np.array([1.0, 0, 0, 0, 0, 0, 0, 0]), 0.25) == pytest.approx(1.0)
    assert np.isnan(top_share(np.zeros(4), 0.25))
    rng = np.random.default_rng(0)
    sparse = rng.laplace(size=(500, 10)) * (rng.random((500, 10)) < 0.2)
    dense = rng.normal(size=(500, 10))
    assert mean_hoyer(sparse) > mean_hoyer(dense)
    # per-component standardisation: units do not matter
    scaled = dense * np.logspace(0, 3, 10)
    assert mean_hoyer(scaled) == pytest.approx(mean_hoyer(dense), abs=1e-9)


def test_truth_mcc():
    rng = np.random.default_rng(0)
    truth = pd.DataFrame(rng.laplace(size=(400, 3)), columns=list("abc"))
    truth["const"] = 1.0
    Z = -truth[["c", "a", "b"]].to_numpy() + 0.05 * rng.normal(size=(400, 3))
    in_sample, held = truth_mcc(Z, truth, seed=0)
    assert in_sample > 0.99 and held > 0.99
    assert truth_mcc(rng.normal(size=(400, 3)), truth, seed=0)[0] < 0.2


def test_rotation_invariant_scores_tie_and_per_component_scores_do_not(wells):
    X, obs = wells.X, wells.obs
    tables = {}
    for name in ("pca", "pca_ica", "pca_rand"):
        Z = make_method(name, **(FAST_ICA if name == "pca_ica" else {})).fit_transform(X, obs)
        tables[name] = compute_scores(Z, obs, method=name, **{**SCORES, "max_wells": 500})[0]
    overall = {k: t[t.component == "all"].set_index("metric")["value"] for k, t in tables.items()}
    for metric in ROTATION_INVARIANT:
        assert np.isfinite(overall["pca"][metric]), metric
        for name in ("pca_ica", "pca_rand"):
            assert overall[name][metric] == pytest.approx(overall["pca"][metric], abs=2e-4), (name, metric)


def _sparse_wells(seed: int = 0):
    """8 Laplace factors mixed into 8 features; the perturbations shift only factors 0 and 1."""
    rng = np.random.default_rng(seed)
    n = 1200
    codes = np.arange(n) % 7
    obs = pd.DataFrame({"batch": rng.integers(0, 4, n).astype(str),
                        "perturbation": np.where(codes == 0, "DMSO", [f"c{c}" for c in codes])})
    obs["is_control"] = codes == 0
    latent = rng.laplace(size=(n, 8))
    treated = codes > 0
    latent[treated, 0] += np.where(codes[treated] % 2 == 0, 4.0, -4.0)
    latent[treated, 1] += np.where(codes[treated] > 3, 4.0, 0.0)
    return (latent @ rng.normal(size=(8, 8))).astype(np.float32), obs


@pytest.mark.parametrize("seed", [0, 3])
def test_ica_concentrates_sparse_signal_where_a_random_rotation_spreads_it(seed):
    """Per-coordinate scores are where ICA differs: with non-Gaussian factors, PCA+ICA puts the
    biology into few, sparse coordinates; a random rotation of the same space spreads it."""
    X, obs = _sparse_wells(seed)
    overall = {}
    for name in ("pca_ica", "pca_rand"):
        Z = make_method(name, seed=seed, **(FAST_ICA if name == "pca_ica" else {})).fit_transform(X, obs)
        table = compute_scores(Z, obs, method=name, **NO_MIXING)[0]
        overall[name] = table[table.component == "all"].set_index("metric")["value"]
    assert overall["pca_ica"]["bio_top25_share"] > 0.9  # 2 of 8 coordinates hold the biology
    assert overall["pca_ica"]["bio_top25_share"] > overall["pca_rand"]["bio_top25_share"] + 0.15
    assert overall["pca_ica"]["hoyer"] > overall["pca_rand"]["hoyer"] + 0.02


def test_compute_scores_table(wells):
    Z = make_method("pca_ica", **FAST_ICA).fit_transform(wells.X, wells.obs)
    truth = {"truth_biology": wells.obsm["truth_biology"], "truth_batch": wells.obsm["truth_batch"]}
    long, attribution = compute_scores(Z, wells.obs, method="pca_ica", truth=truth,
                                       names=[f"IC{i + 1}" for i in range(Z.shape[1])], **NO_MIXING)
    assert list(long.columns) == SCORE_COLUMNS and (long["method"] == "pca_ica").all()
    per = long[long.component != "all"]
    assert set(per.metric) == {"batch_share", "perturbation_share", "attribution"}
    assert set(per.component) == {f"IC{i + 1}" for i in range(Z.shape[1])}
    assert set(per[per.metric == "attribution"].value) <= set(LABEL_CODES.values())
    overall = long[long.component == "all"].set_index("metric")["value"]
    assert overall["n_technical"] >= 3  # three batch factors in the simulation
    assert overall["n_technical"] + overall["n_mixed"] + overall["n_biological"] == Z.shape[1]
    # ICA recovers the independent factors better than a random rotation of the same space
    Zr = make_method("pca_rand", seed=1).fit_transform(wells.X, wells.obs)
    rand = compute_scores(Zr, wells.obs, method="pca_rand", truth=truth, **NO_MIXING)[0]
    rand = rand[rand.component == "all"].set_index("metric")["value"]
    assert overall["mcc_biology"] > 0.7 and overall["mcc_batch"] > 0.6
    assert overall["mcc_biology"] > rand["mcc_biology"] + 0.1
    assert overall["mcc_biology_split"] > rand["mcc_biology_split"]
    assert 0.25 <= overall["bio_top25_share"] <= 1.0
    assert attribution["label"].astype(str).isin(["technical", "mixed", "biological"]).all()


def test_unstable_components_are_not_attributed(wells):
    """Components below the stability threshold get the label unstable (code NaN), are counted in
    n_unstable, and their stability is a per-component metric; NaN stability is not unstable."""
    Z = make_method("pca_ica", **FAST_ICA).fit_transform(wells.X, wells.obs)
    k = Z.shape[1]
    names = [f"IC{i + 1}" for i in range(k)]
    base, base_attr = compute_scores(Z, wells.obs, method="m", names=names, **NO_MIXING)
    stability = np.linspace(0.5, 1.0, k)
    stability[-1] = np.nan
    long, attribution = compute_scores(Z, wells.obs, method="m", names=names, stability=stability,
                                       stability_threshold=0.8, **NO_MIXING)
    unstable = np.nan_to_num(stability, nan=1.0) < 0.8
    assert (attribution["label"].astype(str).to_numpy()[unstable] == UNSTABLE).all()
    # stable components keep the label they had without a stability index
    np.testing.assert_array_equal(attribution["label"].astype(str).to_numpy()[~unstable],
                                  base_attr["label"].astype(str).to_numpy()[~unstable])
    per = long[long.component != "all"].pivot_table(index="component", columns="metric",
                                                    values="value", dropna=False).loc[names]
    assert per["attribution"].isna().to_numpy().tolist() == unstable.tolist()
    np.testing.assert_allclose(per["stability"].to_numpy(), stability)
    overall = long[long.component == "all"].set_index("metric")["value"]
    assert overall["n_unstable"] == unstable.sum()
    assert sum(overall[f"n_{label}"] for label in ("technical", "mixed", "biological", "unstable")) == k
    assert base[base.component == "all"].set_index("metric")["value"]["n_unstable"] == 0
    assert "stability" not in set(base.metric)
    with pytest.raises(InputError, match="stability"):
        compute_scores(Z, wells.obs, method="m", stability=stability[:-1], **NO_MIXING)


def test_mixing_scores_see_batch_effects():
    rng = np.random.default_rng(0)
    n = 300
    obs = pd.DataFrame({"batch": np.repeat(["a", "b", "c"], 100),
                        "perturbation": np.tile(["DMSO"] * 40 + ["x"] * 30 + ["y"] * 30, 3),
                        "moa": np.tile(["none"] * 40 + ["m"] * 60, 3)})
    obs["is_control"] = obs["perturbation"] == "DMSO"
    mixed = rng.normal(size=(n, 5))
    mixed[obs["perturbation"] == "x", 0] += 5
    split = mixed.copy()
    split[:, 1] += np.repeat([0.0, 6.0, 12.0], 100)
    good = mixing_scores(mixed, obs, bio_key="moa", **MIXING)
    bad = mixing_scores(split, obs, bio_key="moa", **MIXING)
    assert good["batch_silhouette"] > bad["batch_silhouette"]
    assert good["ilisi"] > 0.7 > 0.2 > bad["ilisi"]
    assert good["batch_silhouette_raw"] < bad["batch_silhouette_raw"]
    assert good["perturbation_silhouette"] > 0.55
    assert np.isnan(good["nmi"])  # one treated MOA label only: clustering against it is undefined
    good2 = mixing_scores(mixed, obs, **MIXING)
    assert good2["nmi"] > 0.5 and good2["ari"] > 0.5


def test_run_scores_writes_the_long_tsv(wells, tmp_path):
    src = tmp_path / "wells.h5ad"
    wells.write_h5ad(src)
    post = tmp_path / "pca_ica.h5ad"
    run_postprocess(str(src), out_path=str(post), method="pca_ica", params=FAST_ICA)
    out = tmp_path / "scores" / "pca_ica.tsv"
    run_scores(str(post), out_tsv=str(out), method="pca_ica", bio_key=None, **{**SCORES, "max_wells": 300})
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == SCORE_COLUMNS
    overall = table[table.component == "all"].set_index("metric")["value"]
    for metric in ("hoyer", "bio_top25_share", "mcc_biology", "mcc_batch", "ilisi", "nmi"):
        assert np.isfinite(overall[metric]), metric
    assert set(table.component) - {"all"} == set(ad.read_h5ad(post).var_names)
    # no stability index with a single restart: the metric is there, NaN, and nothing is unstable
    assert table[table.metric == "stability"]["value"].isna().all()
    assert overall["n_unstable"] == 0
    # with the default restarts the index comes from the fitted method in uns
    run_postprocess(str(src), out_path=str(post), method="pca_ica",
                    params={"stability_threshold": 0.999})
    run_scores(str(post), out_tsv=str(out), method="pca_ica", bio_key=None, **NO_MIXING)
    table = pd.read_csv(out, sep="\t")
    stored = ad.read_h5ad(post).uns["method"]["state"]["ica"]["stability"]
    per = table[table.metric == "stability"].set_index("component")["value"]
    np.testing.assert_allclose(per[list(ad.read_h5ad(post).var_names)].to_numpy(), stored)
    overall = table[table.component == "all"].set_index("metric")["value"]
    assert overall["n_unstable"] == (stored < 0.999).sum()
    with pytest.raises(InputError, match=r"pca_ica\.h5ad.*mechanism"):
        run_scores(str(post), out_tsv=str(out), method="pca_ica", bio_key="mechanism", **NO_MIXING)


def test_lisi_matches_harmonypy():
    from harmonypy import compute_lisi

    from phenoica.metrics.separation import ilisi, lisi

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(300, 6))
    batches = rng.integers(0, 3, 300).astype(str)
    Z[batches == "1", 0] += 2.0
    ours = lisi(Z, batches, perplexity=20)
    ref = compute_lisi(Z, pd.DataFrame({"b": batches}), ["b"], perplexity=20)[:, 0]
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    assert ilisi(Z, batches, perplexity=20) == pytest.approx((np.median(ref) - 1) / 2, abs=1e-3)

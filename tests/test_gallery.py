"""Component galleries (phenoica.gallery): the sites at a component's extremes, read through the
plate manifests, and the loadings of profile inputs."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from phenoica.config import schema_defaults
from phenoica.errors import InputError
from phenoica.gallery import (
    LOADING_COLUMNS,
    SITE_COLUMNS,
    choose_components,
    component_table,
    method_loadings,
    run_component_gallery,
    top_loadings,
)
from phenoica.ingest import ingest_plate
from phenoica.io.images import read_image
from phenoica.simulate import CHANNEL_NAMES, simulate_plate

# 3 plates in 3 batches, 12 wells of one 48-px site each: seconds to render and ingest
SIM = {"image_size": 48, "n_sites": 1, "n_rows": 2, "n_cols": 6, "n_control_wells": 3,
       "mechanism_sizes": [2, 2], "n_null": 1, "cells_per_site": 6.0, "nucleus_radius": 3.5,
       "cell_radius": 7.5, "puncta_per_cell": 8.0}
PLATES = {"P1": "B1", "P2": "B2", "P3": "B3"}
CHANNELS = [{"name": name, "token": str(i + 1)} for i, name in enumerate(CHANNEL_NAMES)]
GALLERY = {**schema_defaults("gallery"), "top_n": 2, "per_side": 3, "tail": 1}


def _site_features(manifest: pd.DataFrame) -> np.ndarray:
    """Per site and channel: mean and 90th percentile of log intensity (a tiny profile)."""
    rows = []
    for site in manifest.to_dict("records"):
        feats = []
        for name in CHANNEL_NAMES:
            pixels = np.log1p(read_image(site[f"path_{name}"]).astype(np.float64))
            feats += [pixels.mean(), np.percentile(pixels, 90)]
        rows.append(feats)
    return np.asarray(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """A simulated screen ingested, profiled, post-processed (PCA+ICA) and scored by the rule
    functions: the files a component_gallery job reads, plus the ground truth per well."""
    from phenoica.metrics.separation import run_scores
    from phenoica.postprocess.run import run_postprocess

    root = tmp_path_factory.mktemp("gallery_screen")
    manifests, truths = [], []
    for plate, batch in PLATES.items():
        platemap = root / "platemaps" / f"{plate}.csv"
        truth = root / "truth" / f"{plate}.tsv"
        simulate_plate(plate, batch, images_root=root / "images", platemap_path=platemap,
                       truth_path=truth, params=SIM, seed=3)
        manifest = root / "plates" / plate / "manifest.parquet"
        row = {"plate": plate, "batch": batch, "layout": "rxrx", "path": str(root / "images"),
               "platemap": str(platemap), "pattern": ""}
        ingest_plate(row, CHANNELS, str(manifest), str(root / "plates" / plate / "qc.parquet"),
                     **{**schema_defaults("ingest"), **schema_defaults("qc")})
        manifests.append(str(manifest))
        truths.append(pd.read_csv(truth, sep="\t"))
    sites = pd.concat([pd.read_parquet(p) for p in manifests], ignore_index=True)
    obs = sites[["plate", "batch", "well", "perturbation", "is_control", "mechanism"]].astype(
        {"plate": "category", "batch": "category", "perturbation": "category", "mechanism": "category"})
    obs.index = (sites["plate"] + ":" + sites["well"]).to_numpy()
    wells = root / "wells.h5ad"
    ad.AnnData(X=_site_features(sites), obs=obs).write_h5ad(wells)
    post, scores = root / "pca_ica.h5ad", root / "pca_ica.tsv"
    run_postprocess(str(wells), out_path=str(post), method="pca_ica",
                    params={"n_components": 4, "standardize": True, "seed": 0})
    run_scores(str(post), str(scores), "pca_ica", "mechanism",
               **{**schema_defaults("scores"), "mixing": False, "seed": 0})
    truth = pd.concat(truths, ignore_index=True)
    truth.index = (truth["plate"] + ":" + truth["well"]).to_numpy()
    return {"root": root, "manifests": manifests, "post": str(post), "scores": str(scores),
            "wells": str(wells), "truth": truth}


def test_a_batch_component_shows_one_batch_at_one_extreme(screen, tmp_path):
    out = tmp_path / "gallery"
    run_component_gallery(screen["post"], screen["scores"], str(out), "pca_ica", CHANNEL_NAMES, 0,
                          screen["manifests"], **GALLERY)
    shown = pd.read_csv(out / "sites.tsv", sep="\t", dtype={"batch": str})
    assert list(shown.columns) == SITE_COLUMNS
    chosen = pd.read_csv(out / "components.tsv", sep="\t")
    assert {f"{c}.png" for c in chosen["component"]} | {"index.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "params.json").read_text())["seed"] == 0

    # the ground truth's batch factor that differs most between the batches (a channel's gain),
    # and the component that follows it most closely across wells
    post = ad.read_h5ad(screen["post"])
    truth = screen["truth"].loc[post.obs_names]
    gains = truth.filter(like="batch_gain_")
    factor = gains.groupby(post.obs["batch"].astype(str).to_numpy()).mean().std().idxmax()
    corr = [abs(np.corrcoef(post.X[:, j], truth[factor])[0, 1]) for j in range(post.n_vars)]
    component = str(post.var_names[int(np.argmax(corr))])
    assert max(corr) > 0.8, f"no component follows {factor}: {corr}"
    assert component in set(chosen["component"]), "the batch component was not shown"

    sides = shown[shown["component"] == component].groupby("side")["batch"].agg(set)
    assert len(sides) == 2 and sides.map(len).min() == 1, f"{component} ({factor}): {sides.to_dict()}"
    # that batch is the one whose factor is the most extreme
    per_batch = truth.groupby(post.obs["batch"].astype(str).to_numpy())[factor].mean()
    (batch,) = sides[sides.map(len) == 1].iloc[0]
    assert batch in {per_batch.idxmax(), per_batch.idxmin()}


def test_the_draws_are_seeded_and_recorded(screen, tmp_path):
    tables = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_component_gallery(screen["post"], screen["scores"], str(tmp_path / name), "pca_ica",
                              CHANNEL_NAMES, seed, screen["manifests"], **{**GALLERY, "top_n": 1, "tail": 3})
        tables.append(pd.read_csv(tmp_path / name / "sites.tsv", sep="\t"))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert not tables[0].equals(tables[2])


def test_a_missing_image_is_an_error_naming_it(screen, tmp_path):
    broken = []
    for path in screen["manifests"]:
        manifest = pd.read_parquet(path)
        manifest["path_ER"] = [str(tmp_path / "gone" / f"{s.replace(':', '_')}_w2.tif")
                               for s in manifest["site_id"]]
        target = tmp_path / Path(path).parent.name / "manifest.parquet"
        target.parent.mkdir()
        manifest.to_parquet(target)
        broken.append(str(target))
    with pytest.raises(InputError, match="image file not found") as err:
        run_component_gallery(screen["post"], screen["scores"], str(tmp_path / "out"), "pca_ica",
                              CHANNEL_NAMES, 0, broken, **GALLERY)
    assert str(tmp_path / "gone") in str(err.value) and "manifest.parquet" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_choose_components_takes_the_top_biology_and_batch_shares():
    table = pd.DataFrame({"batch_share": [0.9, 0.0, 0.5, 0.1], "perturbation_share": [0.0, 0.8, 0.6, 0.1],
                          "stability": np.nan, "label": ["technical", "biological", "mixed", "mixed"]},
                         index=pd.Index(["C1", "C2", "C3", "C4"], name="component"))
    chosen = choose_components(table, 2)
    assert list(chosen["component"]) == ["C2", "C3", "C1"]
    assert list(chosen["chosen_for"]) == ["biology", "biology+batch", "batch"]


def test_component_table_reads_labels_and_stability(screen):
    table = component_table(screen["scores"], "pca_ica")
    assert list(table.index) == [str(v) for v in ad.read_h5ad(screen["post"]).var_names]
    assert set(table["label"]) <= {"technical", "mixed", "biological", "unstable"}
    assert table["stability"].between(0, 1).all()


# --- profile loadings ---------------------------------------------------------------------------

def _toy_profiles(n=600, seed=0):
    """Standardisable features mixed linearly from 3 independent (Laplace) sources, plus noise."""
    rng = np.random.default_rng(seed)
    sources = rng.laplace(size=(n, 3))
    mixing = np.array([[2.0, 0.0, 0.0, 1.0, -1.5, 0.2],
                       [0.0, -3.0, 0.5, 0.0, 0.0, 1.0],
                       [0.1, 0.0, 2.0, -2.0, 0.0, 0.0]])
    X = sources @ mixing + 0.3 * rng.normal(size=(n, 6)) + [5, -2, 0, 100, 3, 1]
    X[:, 3] *= 50  # units differ: standardisation must not matter for correlations
    return X, pd.DataFrame({"batch": ["B1"] * n}, index=[str(i) for i in range(n)])


@pytest.mark.parametrize("method,params", [("pca", {}), ("pca_ica", {"seed": 0}),
                                           ("pca_rand", {"seed": 1})])
def test_loadings_are_the_feature_component_correlations(method, params):
    from phenoica.postprocess.methods import make_method

    X, obs = _toy_profiles()
    fitted = make_method(method, n_components=3, standardize=True, **params).fit(X, obs)
    Z = fitted.transform(X, obs).astype(np.float64)
    loadings = method_loadings(fitted.to_state())
    expected = np.corrcoef(X.T, Z.T)[:6, 6:]
    np.testing.assert_allclose(loadings, expected, atol=2e-4)


@pytest.mark.parametrize("method,params", [("ica_clean", {"seed": 0, "drop": "batch_share"}),
                                           ("centerscale", {})])
def test_loadings_of_ica_clean_and_centerscale_are_the_correlations(method, params):
    """ica_clean keeps a subset of the ICA components; centerscale fits its PCA on the controls
    and shifts and scales the scores per batch (one batch here: an affine map of the scores, so
    on the fitting set, the controls, the correlations are the loadings)."""
    from phenoica.postprocess.methods import make_method

    X, obs = _toy_profiles()
    obs["is_control"] = np.arange(len(obs)) % 3 == 0
    fitted = make_method(method, n_components=3, standardize=True, **params).fit(X, obs)
    Z = fitted.transform(X, obs).astype(np.float64)
    loadings = method_loadings(fitted.to_state())
    rows = obs["is_control"].to_numpy() if method == "centerscale" else slice(None)
    assert loadings.shape == (6, Z.shape[1])
    np.testing.assert_allclose(loadings, np.corrcoef(X[rows].T, Z[rows].T)[:6, 6:], atol=2e-4)


def test_top_loadings_lists_the_largest_features_with_signs():
    loadings = np.array([[0.1, 0.9], [-0.8, 0.0], [0.3, -0.95]])
    table = top_loadings(loadings, ["f_a", "f_b", "f_c"], ["C1", "C2"], ["C1", "C2"], method="m",
                         top_features=2)
    assert list(table.columns) == LOADING_COLUMNS
    assert list(table["feature"]) == ["f_b", "f_c", "f_c", "f_a"]
    assert list(table["loading"]) == [-0.8, 0.3, -0.95, 0.9]


def test_methods_without_a_fixed_linear_map_have_no_loadings():
    from phenoica.postprocess.methods import make_method

    X, obs = _toy_profiles(200)
    obs["is_control"] = np.arange(len(obs)) % 4 == 0
    tvn = make_method("tvn", n_components=3, standardize=True).fit(X, obs)
    assert method_loadings(tvn.to_state()) is None


@pytest.mark.parametrize("method,kind", [("pca", "loading"), ("tvn", "correlation")])
def test_profile_gallery_writes_loadings(tmp_path, method, kind):
    from phenoica.metrics.separation import run_scores
    from phenoica.postprocess.run import run_postprocess

    X, _ = _toy_profiles(240)
    obs = pd.DataFrame({"plate": "P1", "well": [f"W{i}" for i in range(240)],
                        "batch": np.repeat(["B1", "B2"], 120), "perturbation": np.tile(["DMSO", "a", "b"], 80)},
                       index=[f"w{i}" for i in range(240)]).astype("category")
    obs["is_control"] = (obs["perturbation"] == "DMSO").to_numpy()
    wells = ad.AnnData(X=X.astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=[f"Cells_F{i}" for i in range(6)]))
    wells.write_h5ad(tmp_path / "wells.h5ad")
    post_path, scores = str(tmp_path / f"{method}.h5ad"), str(tmp_path / f"{method}.tsv")
    run_postprocess(str(tmp_path / "wells.h5ad"), out_path=post_path, method=method,
                    params={"n_components": 3, "standardize": True})
    run_scores(post_path, scores, method, None, **{**schema_defaults("scores"), "mixing": False, "seed": 0})
    run_component_gallery(post_path, scores, str(tmp_path / "g"), method, [], 0, [],
                          str(tmp_path / "wells.h5ad"), **{**GALLERY, "top_n": 3, "top_features": 4})
    table = pd.read_csv(tmp_path / "g" / "loadings.tsv", sep="\t")
    assert list(table.columns) == LOADING_COLUMNS and set(table["kind"]) == {kind}
    post = ad.read_h5ad(post_path)
    assert set(table["component"]) == set(post.var_names)
    for comp, part in table.groupby("component"):
        j = list(post.var_names).index(comp)
        corr = np.corrcoef(X.T, post.X[:, j].astype(np.float64))[:6, 6]
        best = np.argsort(-np.abs(corr))[:4]
        assert list(part["feature"]) == [f"Cells_F{i}" for i in best]
        np.testing.assert_allclose(part["loading"], corr[best], atol=2e-4)


def test_the_gallery_command_draws_one_component_from_the_results_files(screen, tmp_path):
    import shutil

    import yaml

    from phenoica.cli import main

    results = tmp_path / "res"
    for src, dest in ((screen["post"], "postprocess/m1/pca_ica.h5ad"),
                      (screen["scores"], "scores/m1/pca_ica.tsv"),
                      *((p, f"plates/{Path(p).parent.name}/manifest.parquet") for p in screen["manifests"])):
        (results / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, results / dest)
    config = {"results": str(results), "model": {"id": "m1"}, "channels": CHANNELS,
              "gallery": {"channel_colors": {"DNA": "cyan", "Mito": None}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "one" / "IC2.png"
    out.parent.mkdir()
    assert main(["gallery", "pca_ica", "IC2", "--configfile", str(tmp_path / "run.yaml"),
                 "--out", str(out), "--per-side", "2"]) == 0
    shown = pd.read_csv(out.with_suffix(".tsv"), sep="\t")
    assert out.stat().st_size > 0 and list(shown.columns) == SITE_COLUMNS
    assert set(shown["component"]) == {"IC2"} and shown.groupby("side").size().to_dict() == {"high": 2, "low": 2}
    assert main(["gallery", "pca_ica", "IC99", "--configfile", str(tmp_path / "run.yaml")]) == 2


def test_a_plain_run_plans_the_galleries_of_the_configured_methods(tmp_path):
    import re

    from helpers_workflow import REPO, TINY_PLATES, make_project

    methods = {"base": {}, "pca_ica": {"n_components": 4}, "pca": {"n_components": 4}}
    project = make_project(tmp_path / "project", overrides={"postprocess": {"methods": methods}})
    jobs = project.dry_run()
    galleries = {j.wildcards["method"]: j for j in jobs if j.rule == "component_gallery"}
    assert sorted(galleries) == ["pca", "pca_ica"]  # base is no gallery method
    for method, job in galleries.items():
        assert job.output == [f"results/report/demo_mae/gallery/{method}"]
        assert sorted(job.input) == sorted([f"results/postprocess/demo_mae/{method}.h5ad",
                                            f"results/scores/demo_mae/{method}.tsv",
                                            *(f"results/plates/{p}/manifest.parquet" for p in TINY_PLATES)])
    (final,) = [j for j in jobs if j.rule == "all"]
    assert {o for j in galleries.values() for o in j.output} <= set(final.input)
    (caption,) = re.findall(r'caption="\.\./report/([\w.]+)"',
                            (REPO / "workflow" / "rules" / "gallery.smk").read_text())
    assert (REPO / "workflow" / "report" / caption).is_file()


def test_an_unknown_channel_colour_fails_the_dry_run(tmp_path):
    from helpers_workflow import make_project

    project = make_project(tmp_path / "project", overrides={"gallery": {"channel_colors": {"Hoechst": "blue"}}})
    run = project.snakemake("-n", check=False)
    assert run.returncode != 0
    assert "gallery.channel_colors" in run.stdout + run.stderr and "Hoechst" in run.stdout + run.stderr

"""Positive and negative controls of the measurements (phenoica.validation, `snakemake validation`).

Fast tests use small controls (32 features) and assert the effects that are robust at that
size; the slow test runs the workflow target at the configured sizes and requires every check.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_workflow import make_project
from scipy.stats import kurtosis

from phenoica import validation as val
from phenoica.config import schema_defaults
from phenoica.metrics.separation import ALL, compute_scores
from phenoica.nulls import percentile_in_null, rotation_null_scores
from phenoica.postprocess import make_method

SMALL = {**{k: v for k, v in schema_defaults("validation").items()
            if k not in ("strict", "n_rotations", "top_k")},
         "n_features": 32, "controls_per_batch": 8}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def controls():
    return {kind: val.simulate_control(kind, **SMALL) for kind in val.CONTROLS}


def _scores(data, method):
    Z = make_method(method, n_components=data.n_sources).fit_transform(data.X, data.obs)
    long, attribution = compute_scores(Z, data.obs, method=method, truth=data.truth,
                                       bio_key="mechanism", **{**schema_defaults("scores"), "mixing": False})
    return Z, long[long["component"] == ALL].set_index("metric")["value"], attribution


def test_simulated_controls(controls):
    pos, neg = controls["positive"], controls["negative"]
    n_batches = 2 ** SMALL["n_batch_sources"]
    assert pos.X.shape == (n_batches * (SMALL["n_perturbations"] + SMALL["controls_per_batch"]),
                           SMALL["n_features"])
    assert pos.X2.shape == pos.X.shape and pos.n_sources == 7
    assert {"batch", "perturbation", "is_control", "mechanism"} <= set(pos.obs.columns)
    assert pos.obs["batch"].nunique() == n_batches
    assert set(pos.obs.loc[pos.obs["is_control"], "mechanism"]) == {"none"}
    # positive sources are non-Gaussian (sparse biology: super-Gaussian; factorial batch:
    # sub-Gaussian), negative ones close to Gaussian
    assert kurtosis(pos.truth["truth_biology"], axis=0).min() > 1.0
    assert kurtosis(pos.truth["truth_batch"], axis=0).max() < -0.5
    for table in neg.truth.values():
        assert np.abs(kurtosis(table, axis=0)).mean() < 0.5
    again = val.simulate_control("positive", **SMALL)
    np.testing.assert_array_equal(again.X, pos.X)  # seeded
    # the second run is a rotation of the first plus a little noise: distances are kept
    d1 = np.linalg.norm(pos.X[:50, None] - pos.X[None, :50], axis=-1)
    d2 = np.linalg.norm(pos.X2[:50, None] - pos.X2[None, :50], axis=-1)
    assert np.abs(d1 - d2).max() < 0.05 * d1.max()


def test_positive_control_shows_every_effect(controls):
    data = controls["positive"]
    Z, whole, attribution = _scores(data, "pca_ica")
    assert whole["mcc_biology"] >= val.MIN_MCC and whole["mcc_batch"] >= val.MIN_MCC
    assert whole["n_technical"] == SMALL["n_batch_sources"]
    assert val.technical_batch_mcc(Z, attribution["label"], data.truth["truth_batch"].to_numpy()) >= val.MIN_MCC
    _, clean, _ = _scores(data, "ica_clean")
    assert whole["batch_variance_share"] > 0.15 and clean["batch_variance_share"] <= val.MAX_BATCH_LEFT
    assert clean["r2_biology"] > 0.9  # the biology stays
    white = make_method("pca", n_components=data.n_sources).fit_transform(data.X, data.obs)
    null = rotation_null_scores(white, data.obs, seeds=range(10), truth=data.truth,
                                score_params=schema_defaults("scores"), bio_key="mechanism")
    for metric in ("hoyer", "bio_top25_share", "bio_variance_captured", "mcc_biology"):
        assert percentile_in_null(whole[metric], null[null["metric"] == metric]["value"]) == 100.0, metric


def test_negative_control_recovers_no_source(controls):
    data = controls["negative"]
    Z, whole, attribution = _scores(data, "pca_ica")
    assert whole["mcc_biology"] < val.MIN_MCC and whole["mcc_batch"] < val.MIN_MCC
    assert val.technical_batch_mcc(Z, attribution["label"], data.truth["truth_batch"].to_numpy()) < val.MIN_MCC


def test_ica_efficiency_needs_non_gaussian_sources(controls):
    eff = {}
    for kind, data in controls.items():
        split = np.random.default_rng(0).random(len(data.X)) < 0.5
        table = val._alignment(data.X[split], data.X2[split], data.X[~split], data.X2[~split],
                               data.n_sources, 0)
        err = table[table["metric"] == "mean_error"].set_index("map")["value"]
        eff[kind] = (err["permutation"] - err["ica"]) / (err["permutation"] - err["rigid"])
    assert eff["positive"] >= val.MIN_EFFICIENCY
    assert eff["negative"] < val.MIN_EFFICIENCY


def test_control_checks_flag_a_control_that_does_not_show_its_effect():
    rows = []
    for control in val.CONTROLS:
        good = control == "positive"
        rows += [(control, "pca_ica", "mcc_biology", 0.99 if good else 0.6),
                 (control, "pca_ica", "mcc_batch", 0.99 if good else 0.6),
                 (control, "pca_ica", "technical_batch_mcc", 0.99 if good else 0.5),
                 (control, "pca_ica", "n_technical", 3.0),
                 (control, "ica_clean", "batch_variance_share", 0.0),
                 (control, val.ALIGNMENT, "efficiency", 0.99)]
        rows += [(control, val.NULL_PERCENTILE, m, 100.0 if good else 50.0) for m in val.NULL_SCORES]
        rows += [(control, m, "ilisi", 0.5) for m in ("pca", "pca_ica", "pca_rand")]
    table = pd.DataFrame(rows, columns=["control", "method", "metric", "value"])
    checks = val.control_checks(table, n_batch_sources=3)
    assert list(checks.columns) == val.CHECK_COLUMNS
    assert checks["passed"].all()
    table.loc[(table["control"] == "negative") & (table["metric"] == "mcc_biology"), "value"] = 0.95
    table.loc[(table["control"] == "positive") & (table["method"] == "pca_rand"), "value"] = 0.6
    failed = val.control_checks(table, n_batch_sources=3).query("not passed")
    assert set(zip(failed["control"], failed["metric"])) == {("negative", "mcc_biology"),
                                                             ("positive", "ilisi")}


@pytest.mark.slow
def test_snakemake_validation_passes_on_the_configured_controls(tmp_path):
    project = make_project(tmp_path / "project")
    project.run("validation")
    controls = pd.read_csv(project.results() / "validation" / "controls.tsv", sep="\t")
    assert list(controls.columns) == ["control", "method", "metric", "value"]
    assert set(controls["control"]) == {"positive", "negative"}
    settings = controls[controls["method"] == val.SETTINGS].set_index(["control", "metric"])["value"]
    assert settings[("positive", "seed")] == schema_defaults("validation")["seed"]
    checks = pd.read_csv(project.results() / "validation" / "checks.tsv", sep="\t")
    assert checks["passed"].all(), checks[~checks["passed"]]
    assert {"ICA recovers the sources", "ica_clean removes batch", "ICA efficiency near 1",
            "PCA+ICA beats the rotation null", "ICA recovers no Gaussian source"} <= set(checks["check"])

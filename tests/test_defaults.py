"""Defaults that do not overfit: the capped n_components default, and ica_clean refusing a
fitting set without treated wells (phenoica.postprocess.methods)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from helpers_workflow import make_project
from test_postprocess import FAST_ICA, make_wells

from phenoica.errors import ConfigError, InputError
from phenoica.io import write_h5ad
from phenoica.postprocess import make_method, run_postprocess
from phenoica.postprocess.methods import check_fit_on, component_cap


def _noise_wells(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * np.linspace(3.0, 0.5, d)).astype(np.float32)
    obs = pd.DataFrame({"batch": "b", "perturbation": "p", "is_control": False},
                       index=[f"w{i}" for i in range(n)])
    return X, obs


def test_null_n_components_keeps_one_component_per_five_wells_not_the_rank():
    """n_components null used to keep the numerical rank: 299 components of 300 wells, whose
    trailing directions are sampling noise scaled to unit variance (held-out variance far
    above 1)."""
    X, obs = _noise_wells(300, 400)
    held, held_obs = _noise_wells(300, 400, seed=1)
    default = make_method("pca").fit(X, obs)
    assert default.transform(X, obs).shape[1] == component_cap(300) == 60
    rank = make_method("pca", n_components=299).fit(X, obs)
    var_default = default.transform(held, held_obs).var(axis=0).mean()
    var_rank = rank.transform(held, held_obs).var(axis=0).mean()
    assert var_default < 1.5 and var_rank > 2 * var_default


def test_more_components_than_n_fit_over_five_warn(caplog):
    X, obs = _noise_wells(100, 40)
    with caplog.at_level(logging.WARNING, logger="phenoica"):
        Z = make_method("pca", n_components=30).fit_transform(X, obs)
    assert Z.shape[1] == 30  # the user's choice is kept, with a warning
    assert any("n_components=30 is more than n_fit / 5 = 20" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="phenoica"):
        make_method("pca", n_components=20).fit(X, obs)
    assert not caplog.records


def test_ica_clean_without_treated_wells_is_a_clear_error(tmp_path):
    """With fit_on: controls, ica_clean (drop: technical) used to drop every component with a
    batch share >= 0.05: among control wells no perturbation variance exists."""
    wells = make_wells(seed=1)
    controls = wells.obs["is_control"].to_numpy(bool)
    model = make_method("ica_clean", n_components=6, **FAST_ICA)
    with pytest.raises(InputError, match="postprocess.fit_on") as err:
        model.fit(wells.X[controls], wells.obs[controls])
    assert "'ica_clean'" in str(err.value) and "treated wells" in str(err.value)
    # drop: batch_share needs no treated wells
    make_method("ica_clean", n_components=6, drop="batch_share", **FAST_ICA).fit(
        wells.X[controls], wells.obs[controls])
    src = tmp_path / "wells.h5ad"
    write_h5ad(wells, src)
    with pytest.raises(InputError, match=r"wells\.h5ad.*postprocess\.fit_on"):
        run_postprocess(str(src), out_path=str(tmp_path / "out.h5ad"), method="ica_clean",
                        params={"n_components": 6, **FAST_ICA}, fit_on="controls")


def test_check_fit_on_names_the_key_and_the_output():
    check_fit_on({"clean": {"method": "ica_clean"}}, "all")
    check_fit_on({"clean": {"method": "ica_clean", "drop": "batch_share"}}, "controls")
    with pytest.raises(ConfigError, match=r"postprocess\.fit_on.*'clean'"):
        check_fit_on({"pca": {}, "clean": {"method": "ica_clean"}}, "controls")


def test_dry_run_refuses_ica_clean_fitted_on_controls(tmp_path):
    project = make_project(tmp_path / "project")
    project.update_config({"postprocess": {"fit_on": "controls",
                                           "methods": {"base": {}, "ica_clean": {"n_components": 4}}}})
    run = project.snakemake("-n", check=False)
    assert run.returncode != 0
    assert "postprocess.fit_on" in run.stderr + run.stdout
    assert "ica_clean" in run.stderr + run.stdout

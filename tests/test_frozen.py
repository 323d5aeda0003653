"""Frozen transforms (postprocess.fitted): a stored fit applied to the wells of a later run."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from test_postprocess import FAST_ICA, make_wells

from phenoica.errors import ConfigError, InputError
from phenoica.postprocess import run_postprocess
from phenoica.postprocess.frozen import check_fitted, fitted_files


@pytest.fixture(scope="module")
def data_update():
    """Wells of batches B0-B2 (the first run) and the same wells plus a new plate of batch B3."""
    wells = make_wells(n_batches=4, n_ctrl=8)
    first = wells[wells.obs["batch"] != "B3"].copy()
    return first, wells


@pytest.mark.parametrize(("method", "params", "fit_on"), [
    ("pca_ica", {"n_components": 5, **FAST_ICA}, "all"),
    ("pca", {"n_components": 4}, "controls"),
    ("centerscale", {"n_components": 4}, "all"),
])
def test_adding_a_plate_leaves_the_earlier_wells_bit_identical(data_update, tmp_path, method, params, fit_on):
    first, updated = data_update
    a, b = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    first.write_h5ad(a)
    updated.write_h5ad(b)
    run_a, frozen, refit = (tmp_path / f"{name}.h5ad" for name in ("run_a", "frozen", "refit"))
    run_postprocess(str(a), out_path=str(run_a), method=method, params=params, fit_on=fit_on)
    run_postprocess(str(b), out_path=str(frozen), method=method, params=params, fit_on=fit_on,
                    fitted=str(run_a))
    run_postprocess(str(b), out_path=str(refit), method=method, params=params, fit_on=fit_on)
    old, new, again = ad.read_h5ad(run_a), ad.read_h5ad(frozen), ad.read_h5ad(refit)
    earlier = new[old.obs_names]
    np.testing.assert_array_equal(earlier.X, old.X)  # bit-identical
    assert list(new.var_names) == list(old.var_names)
    assert not np.array_equal(again[old.obs_names].X, old.X)  # a refit moves them
    meth = new.uns["method"]
    assert bool(meth["frozen"]) and meth["frozen_from"] == str(run_a)
    from phenoica.provenance import file_sha256

    assert meth["frozen_sha256"] == file_sha256(run_a)
    assert int(meth["n_fit"]) == int(old.uns["method"]["n_fit"]) and meth["fit_on"] == fit_on
    assert str(run_a) in list(new.uns["phenoica"]["stages"]["postprocess"]["inputs"])
    np.testing.assert_array_equal(new.uns["method"]["state"]["whitening"]["components"],
                                  old.uns["method"]["state"]["whitening"]["components"])


def test_a_stored_fit_of_another_method_is_refused(data_update, tmp_path):
    first, _ = data_update
    a, pca = tmp_path / "a.h5ad", tmp_path / "pca.h5ad"
    first.write_h5ad(a)
    run_postprocess(str(a), out_path=str(pca), method="pca", params={"n_components": 3})
    with pytest.raises(InputError, match=r"pca\.h5ad.*'pca'.*'pca_rand'.*postprocess\.fitted"):
        run_postprocess(str(a), out_path=str(tmp_path / "x.h5ad"), method="pca_rand", params={},
                        fitted=str(pca))


def test_the_dry_run_check_names_the_key_and_the_file(data_update, tmp_path):
    first, _ = data_update
    a = tmp_path / "a.h5ad"
    first.write_h5ad(a)
    earlier = tmp_path / "earlier" / "postprocess" / "demo_mae"
    run_postprocess(str(a), out_path=str(earlier / "pca.h5ad"), method="pca", params={"n_components": 3})
    methods = {"pca": {}, "ica": {"method": "pca_ica"}}
    files = fitted_files(str(earlier), methods)
    assert files == {"ica": str(earlier / "ica.h5ad"), "pca": str(earlier / "pca.h5ad")}
    algorithms = {"pca": "pca", "ica": "pca_ica"}
    with pytest.raises(ConfigError, match=r"postprocess\.fitted.*ica\.h5ad.*does not exist"):
        check_fitted(files, algorithms, {})
    # a mapping freezes only the outputs it names
    check_fitted(fitted_files({"pca": str(earlier / "pca.h5ad")}, methods), algorithms, {})
    with pytest.raises(ConfigError, match=r"postprocess\.fitted.*pca\.h5ad holds a fit of 'pca'.*'pca_ica'"):
        check_fitted({"ica": str(earlier / "pca.h5ad")}, algorithms, {})
    with pytest.raises(ConfigError, match=r"postprocess\.fitted.*own output"):
        check_fitted({"pca": str(earlier / "pca.h5ad")}, algorithms, {"pca": str(earlier / "pca.h5ad")})
    with pytest.raises(ConfigError, match=r"postprocess\.fitted.*\['umap'\] are not configured"):
        fitted_files({"umap": "x.h5ad"}, methods)
    (tmp_path / "not.h5ad").write_text("text")
    with pytest.raises(ConfigError, match=r"postprocess\.fitted.*not\.h5ad is not a readable"):
        check_fitted({"pca": str(tmp_path / "not.h5ad")}, algorithms, {})


def test_the_workflow_applies_the_stored_fits_and_checks_them_in_the_dry_run(data_update, tmp_path):
    """postprocess.fitted is a rule input (a changed stored fit reruns postprocess), checked in
    the dry run: a missing file fails before any job, naming the key and the file (the other
    problems: test_the_dry_run_check_names_the_key_and_the_file)."""
    from helpers_workflow import make_project, parse_dry_run

    project = make_project(tmp_path / "p", overrides={"postprocess": {"fitted": "earlier/demo_mae"}})
    earlier = project.root / "earlier" / "demo_mae"
    first, _ = data_update
    a = tmp_path / "a.h5ad"
    first.write_h5ad(a)
    run_postprocess(str(a), out_path=str(earlier / "base.h5ad"), method="base", params={})
    run = project.snakemake("-n", check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "Job stats" not in output
    assert "config key postprocess.fitted" in output and "earlier/demo_mae/pca_ica.h5ad" in output
    run_postprocess(str(a), out_path=str(earlier / "pca_ica.h5ad"), method="pca_ica",
                    params={"n_components": 3, **FAST_ICA})
    run = project.snakemake("-n", check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "postprocess" in {job.rule for job in parse_dry_run(run.stdout + "\n" + run.stderr)}


@pytest.mark.slow
def test_workflow_rerun_with_a_new_plate_and_frozen_fits(reference_run, tmp_path):
    """The whole workflow: the tiny demo, then the same project with plate P02 added and
    postprocess.fitted set to the first run's postprocess folder: the first run's wells keep
    bit-identical coordinates in every method's output, and the outputs say they were frozen."""
    import shutil

    import pandas as pd
    from helpers_workflow import REPO, copy_project

    project = copy_project(reference_run, tmp_path / "project")
    model = project.config()["model"]["id"]
    first = project.results() / "postprocess" / model
    frozen = project.root / "frozen" / model
    shutil.copytree(first, frozen)
    project.update_config({"postprocess": {"fitted": f"frozen/{model}"}})
    demo_sheet = pd.read_csv(REPO / "config" / "plates.tsv", sep="\t", dtype=str, keep_default_na=False)
    project.write_sheet(pd.concat([project.sheet(), demo_sheet[demo_sheet["plate"] == "P02"]],
                                  ignore_index=True))
    methods = sorted(project.config()["postprocess"]["methods"])
    project.run(*(f"{project.results_folder}/postprocess/{model}/{m}.h5ad" for m in methods))
    for method in methods:
        old = ad.read_h5ad(frozen / f"{method}.h5ad")
        new = ad.read_h5ad(first / f"{method}.h5ad")
        assert set(new.obs["plate"]) == set(old.obs["plate"]) | {"P02"}
        np.testing.assert_array_equal(new[old.obs_names].X, old.X)
        assert bool(new.uns["method"]["frozen"])
        assert new.uns["method"]["frozen_from"] == f"frozen/{model}/{method}.h5ad"

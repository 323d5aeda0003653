"""Atomic writes and the AnnData contract helpers."""

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from phenoica.io import atomic_path, read_h5ad, sanitize_uns, standardize_obs, write_h5ad, write_tsv


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert not list(tmp_path.glob("*.partial"))
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_keeps_old_folder_on_failure(tmp_path):
    target = tmp_path / "plate"
    target.mkdir()
    (target / "a.tif").write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "a.tif").write_text("new")
            raise ValueError("boom")
    assert (target / "a.tif").read_text() == "old"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "b.tif").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.tif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plate"]


def test_write_h5ad_round_trip_with_contract_obs(tmp_path):
    obs = pd.DataFrame(
        {"plate": ["P1", "P1"], "well": ["A01", "A02"], "batch": ["B1", "B1"],
         "perturbation": ["DMSO", "g1"], "site": [1.0, 2.0], "is_control": [1, 0]},
        index=["P1:A01:1", "P1:A02:2"],
    )
    obs = standardize_obs(obs)
    assert isinstance(obs["plate"].dtype, pd.CategoricalDtype)
    assert obs["site"].dtype == np.int64 and obs["is_control"].dtype == bool
    adata = ad.AnnData(np.ones((2, 3), dtype=np.float32), obs=obs)
    adata.uns["params"] = sanitize_uns({"a/b": [1, 2], "c": None, "names": ["x", "y"]})
    path = write_h5ad(adata, tmp_path / "x.h5ad")
    back = read_h5ad(path)
    assert back.obs["perturbation"].tolist() == ["DMSO", "g1"]
    assert list(back.uns["params"]["a_b"]) == [1, 2]


def test_write_tsv_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "t.tsv"
    write_tsv(pd.DataFrame({"a": [1]}), target)

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        write_tsv(pd.DataFrame({"a": [2]}), target)
    assert target.read_text().splitlines() == ["a", "1"]


def test_stale_partials_from_a_killed_run_are_removed(tmp_path):
    target = tmp_path / "wells.h5ad"
    (tmp_path / ".wells.h5ad.abc123.partial").write_text("half")
    (tmp_path / ".wells.h5ad.def456.partial").mkdir()
    (tmp_path / ".other.h5ad.x.partial").write_text("not ours")
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.h5ad.x.partial", "wells.h5ad"]


def test_summary_is_printed_only_when_this_run_wrote_it(tmp_path, capsys):
    import time

    from phenoica.workflow import print_summary_if_updated

    summary = tmp_path / "summary.txt"
    assert not print_summary_if_updated(summary, since=0.0)  # no summary yet
    summary.write_text("phenoica summary: 3 wells\n")
    assert print_summary_if_updated(summary, since=time.time() - 60)
    assert "phenoica summary: 3 wells" in capsys.readouterr().out
    assert not print_summary_if_updated(summary, since=time.time() + 60)  # an earlier run's
    assert capsys.readouterr().out == ""


def test_stale_partials_of_a_name_with_glob_metacharacters(tmp_path):
    target = tmp_path / "plate[1].h5ad"  # glob metacharacters in the name
    stale = tmp_path / ".plate[1].h5ad.x1y2.partial"
    other = tmp_path / ".plate2.h5ad.x1y2.partial"  # another output's temporary: kept
    stale.write_text("half")
    other.write_text("half")
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_atomic_outputs_get_the_umask_mode_not_0600(tmp_path, umask):
    """Results are readable as the umask allows (a plain open() / mkdir), not tempfile's 0600."""
    from phenoica.io.atomic import atomic_write_text, process_umask

    old = os.umask(umask)
    process_umask.cache_clear()
    try:
        assert process_umask() == umask
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        (tmp_path / "plain_dir").mkdir()
        atomic_write_text(tmp_path / "out.txt", "x")
        write_tsv(pd.DataFrame({"a": [1]}), tmp_path / "out.tsv")
        write_h5ad(ad.AnnData(X=np.zeros((2, 2), dtype=np.float32)), tmp_path / "out.h5ad")
        with atomic_path(tmp_path / "out_dir", is_dir=True) as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
        process_umask.cache_clear()
    mode = plain.stat().st_mode & 0o777
    assert mode == 0o666 & ~umask
    for name in ("out.txt", "out.tsv", "out.h5ad"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert (tmp_path / "out_dir").stat().st_mode & 0o777 == (tmp_path / "plain_dir").stat().st_mode & 0o777


def test_an_unreadable_h5ad_is_an_input_error_naming_the_file(tmp_path):
    from phenoica.errors import InputError

    path = tmp_path / "not_anndata.h5ad"
    path.write_text("plain text, not HDF5\n")
    with pytest.raises(InputError, match=r"not_anndata\.h5ad: cannot read as AnnData"):
        read_h5ad(path)


def test_read_uns_entry_reads_one_uns_entry_as_read_h5ad_does(tmp_path):
    from phenoica.io import read_uns_entry

    adata = ad.AnnData(X=np.ones((3, 2), dtype=np.float32))
    adata.uns["method"] = {"name": "pca", "state": {"mean": np.arange(2.0), "params_json": "{}"},
                           "train_batches": np.array(["B1", "B2"], dtype=object), "n_fit": 3}
    path = write_h5ad(adata, tmp_path / "a.h5ad")
    whole, alone = read_h5ad(path).uns["method"], read_uns_entry(path, "method")
    assert alone.keys() == whole.keys() and alone["state"].keys() == whole["state"].keys()
    np.testing.assert_array_equal(alone["state"]["mean"], whole["state"]["mean"])
    assert list(alone["train_batches"]) == list(whole["train_batches"]) == ["B1", "B2"]
    assert alone["name"] == whole["name"] == "pca" and alone["n_fit"] == whole["n_fit"] == 3
    assert read_uns_entry(path, "absent") is None

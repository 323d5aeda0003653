"""phenoica.plots: report figures are written (atomically) as real PNGs with the expected panels."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from test_postprocess import make_wells  # noqa: E402 (tests/ is on sys.path)

from phenoica.config import schema_defaults
from phenoica.errors import InputError
from phenoica.metrics.separation import compute_scores
from phenoica.plots import (
    plot_attribution_heatmap,
    plot_scores_overview,
    plot_umap,
    run_method_figures,
    umap_embedding,
)
from phenoica.postprocess import make_method, run_postprocess


@pytest.fixture(scope="module")
def wells():
    return make_wells(n_batches=3, n_ctrl=10, n_rep=3)


@pytest.fixture(scope="module")
def scores(wells):
    tables = []
    for name in ("pca", "pca_rand"):
        Z = make_method(name).fit_transform(wells.X, wells.obs)
        prefix = "RC" if name == "pca_rand" else "PC"
        tables.append(compute_scores(Z, wells.obs, method=name, names=[f"{prefix}{i + 1}" for i in range(Z.shape[1])],
                                     **{**schema_defaults("scores"), "mixing": False})[0])
    return pd.concat(tables, ignore_index=True)


def _png(path) -> np.ndarray:
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_plot_umap_panels(wells, tmp_path):
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    basis = wells.X[:, :2]
    plot_umap(wells, one, color=["batch"], basis=basis)
    plot_umap(wells.X, two, obs=wells.obs, color=["batch", "perturbation"], title="raw",
              basis=basis, max_wells=50)
    assert _png(two).shape[1] > 1.5 * _png(one).shape[1]
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(InputError, match="moa"):
        plot_umap(wells, tmp_path / "x.png", color=["moa"], basis=basis)
    with pytest.raises(InputError, match="basis"):
        plot_umap(wells, tmp_path / "x.png", basis=basis[:10])
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow  # umap-learn's numba compilation takes 30 s to minutes on a busy 2-core machine
def test_umap_embedding_separates_batches():
    rng = np.random.default_rng(0)
    Z = np.vstack([rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 8.0])
    xy = umap_embedding(Z, n_neighbors=10)
    assert xy.shape == (80, 2)
    gap = np.linalg.norm(xy[:40].mean(0) - xy[40:].mean(0))
    assert gap > 3 * max(xy[:40].std(0).max(), xy[40:].std(0).max())


def test_attribution_heatmap_and_overview(scores, tmp_path):
    heat = tmp_path / "attribution.png"
    plot_attribution_heatmap(scores, heat)
    both = _png(heat)
    plot_attribution_heatmap(scores, tmp_path / "one.png", methods=["pca_rand"])
    assert both.shape[0] > _png(tmp_path / "one.png").shape[0]  # one block per method
    tsv = tmp_path / "scores.tsv"
    scores.to_csv(tsv, sep="\t", index=False)
    plot_scores_overview(tsv, tmp_path / "overview.png")
    assert _png(tmp_path / "overview.png").ndim == 3
    with pytest.raises(InputError, match="attribution"):
        plot_attribution_heatmap(scores[scores.component == "all"], tmp_path / "none.png")
    with pytest.raises(InputError, match="column"):
        plot_scores_overview(scores.drop(columns=["metric"]), tmp_path / "none.png")


def test_run_method_figures(wells, tmp_path, scores):
    src = tmp_path / "wells.h5ad"
    wells.write_h5ad(src)
    post = tmp_path / "pca_rand.h5ad"
    run_postprocess(str(src), out_path=str(post), method="pca_rand", params={})
    tsv = tmp_path / "scores.tsv"
    scores.to_csv(tsv, sep="\t", index=False)
    run_method_figures(str(post), out_umap=str(tmp_path / "umap.png"), method="pca_rand",
                       scores_tsv=str(tsv), out_attribution=str(tmp_path / "attr.png"),
                       params={"max_wells": 80, "embedding": "pca"})
    _png(tmp_path / "umap.png")
    _png(tmp_path / "attr.png")

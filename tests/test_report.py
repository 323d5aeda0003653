"""phenoica.report: the UMAP colourings, the tables and the rule
functions behind the report figures (fast; the workflow-level report test is
tests/test_report_workflow.py)."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from test_postprocess import make_wells  # noqa: E402 (tests/ is on sys.path)

from phenoica.benchmarks.generalization import POOLED, TABLE_COLUMNS
from phenoica.config import schema_defaults
from phenoica.errors import InputError
from phenoica.metrics.separation import compute_scores
from phenoica.postprocess import make_method, run_postprocess
from phenoica.report import (
    benchmark_grid,
    figure_colors,
    grid_html,
    run_benchmark_report,
    run_method_report,
    run_scores_report,
    score_grid,
)

REPORT = schema_defaults("report")


def test_umap_colours_default_to_batch_perturbation_and_the_biology_label():
    assert figure_colors(None, "moa") == ["batch", "perturbation", "moa"]
    assert figure_colors(None, None) == ["batch", "perturbation"]
    assert figure_colors(None, "perturbation") == ["batch", "perturbation"]
    assert figure_colors(["plate", "batch", "plate"], "moa") == ["plate", "batch"]


@pytest.fixture(scope="module")
def wells():
    return make_wells(n_batches=3, n_ctrl=10, n_rep=3)


@pytest.fixture(scope="module")
def score_paths(wells, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scores")
    paths = []
    for name, prefix in (("pca", "PC"), ("pca_rand", "RC")):
        Z = make_method(name).fit_transform(wells.X, wells.obs)
        table = compute_scores(Z, wells.obs, method=name, names=[f"{prefix}{i + 1}" for i in range(Z.shape[1])],
                               **{**schema_defaults("scores"), "mixing": True})[0]
        path = folder / f"{name}.tsv"
        table.to_csv(path, sep="\t", index=False)
        paths.append(str(path))
    return paths


def _png(path) -> np.ndarray:
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image[..., :3].std() > 0.02  # something was drawn
    return image


def test_score_grid_and_html_mark_the_best_value(score_paths):
    scores = pd.concat([pd.read_csv(p, sep="\t") for p in score_paths], ignore_index=True)
    grid = score_grid(scores, ["pca_rand", "pca"])
    assert list(grid.index) == ["pca_rand", "pca"]
    assert {"n_components", "hoyer", "batch_silhouette"} <= set(grid.columns)
    # the two whitened representations differ by a rotation: rotation-invariant scores tie
    assert grid.loc["pca", "batch_silhouette"] == pytest.approx(grid.loc["pca_rand", "batch_silhouette"],
                                                                abs=1e-6)
    text = grid_html(grid, metrics_on="columns")
    assert text.count("<tr>") == 1 + 2 and "pca_rand" in text
    hoyer = grid["hoyer"]
    best = hoyer.idxmax()
    assert hoyer[best] > hoyer.min()  # the rotation changes sparsity
    row = text.split("<tr>")[2 + list(grid.index).index(best)]  # [0] before, [1] header
    cells = row.split("<td")[1:]
    hoyer_cell = cells[1 + list(grid.columns).index("hoyer")]
    assert hoyer_cell.startswith(' class="best"') and f"{hoyer[best]:.3f}" in hoyer_cell


def test_run_scores_report(score_paths, tmp_path):
    png, page = tmp_path / "fig" / "overview.png", tmp_path / "fig" / "scores.html"
    run_scores_report(score_paths, methods=["pca", "pca_rand"], out_png=str(png), out_html=str(page))
    _png(png)
    text = page.read_text()
    assert "<table>" in text and "pca_rand" in text and "hoyer" in text
    assert not list(png.parent.glob(".*partial"))
    with pytest.raises(InputError, match="no tables"):
        run_scores_report([], methods=["pca"], out_png=str(png), out_html=str(page))


def benchmark_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method in ("pca", "harmony"):
        for fold in ("b0", "b1", POOLED):
            rows.append((method, "protocol", "n_test_wells", 30, fold, ""))
            for metric in ("auroc_l2", "auroc_topk"):
                rows.append((method, "auroc", metric, rng.uniform(0.6, 0.9), fold, ""))
                rows.append((method, "auroc", metric, rng.uniform(0.5, 1.0), fold, "p1"))
            rows.append((method, "classification", "accuracy_knn", rng.uniform(0.2, 0.9), fold, ""))
        rows.append((method, "protocol", "transductive", float(method == "harmony"), POOLED, ""))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def test_benchmark_grid_keeps_pooled_whole_fold_rows():
    table = benchmark_table()
    grid = benchmark_grid(table, ["harmony", "pca"])
    assert list(grid.columns) == ["harmony", "pca"]
    assert list(grid.index) == [("auroc", "auroc_l2"), ("auroc", "auroc_topk"),
                                ("classification", "accuracy_knn")]
    expected = table[(table.method == "pca") & (table.fold == POOLED) & (table.metric == "auroc_topk")
                     & (table.perturbation == "")]["value"].item()
    assert grid.loc[("auroc", "auroc_topk"), "pca"] == expected


def test_run_benchmark_report(tmp_path):
    table = benchmark_table()
    paths = []
    for method, part in table.groupby("method", sort=False):
        path = tmp_path / f"{method}.tsv"
        part.to_csv(path, sep="\t", index=False)
        paths.append(str(path))
    out_dir, page = tmp_path / "figures" / "benchmarks", tmp_path / "figures" / "table.html"
    run_benchmark_report(paths, methods=["pca", "harmony"], out_dir=str(out_dir), out_html=str(page))
    assert sorted(p.name for p in out_dir.iterdir()) == ["auroc.png", "classification.png"]
    for path in out_dir.iterdir():
        _png(path)
    text = page.read_text()
    assert "accuracy_knn" in text and "Transductive" in text and "harmony" in text
    assert "b0, b1" in text
    # tasks restricts the figures; a rerun replaces the folder whole
    run_benchmark_report(paths, methods=["pca"], out_dir=str(out_dir), out_html=str(page),
                         tasks=["auroc"])
    assert sorted(p.name for p in out_dir.iterdir()) == ["auroc.png"]
    assert not list(out_dir.parent.glob(".*partial"))


def test_run_method_report(wells, score_paths, tmp_path):
    src = tmp_path / "wells.h5ad"
    wells.write_h5ad(src)
    post = tmp_path / "pca_rand.h5ad"
    run_postprocess(str(src), out_path=str(post), method="pca_rand", params={})
    umap, attribution = tmp_path / "m" / "umap.png", tmp_path / "m" / "attribution.png"
    run_method_report(str(post), scores_tsv=score_paths[1], out_umap=str(umap),
                      out_attribution=str(attribution), method="pca_rand", bio_key=None, seed=0,
                      **{**REPORT, "embedding": "pca", "max_wells": 20})
    two_panels = _png(umap)
    _png(attribution)
    run_method_report(str(post), scores_tsv=score_paths[1], out_umap=str(umap),
                      out_attribution=str(attribution), method="pca_rand", bio_key=None, seed=0,
                      **{**REPORT, "embedding": "pca", "color": ["batch"]})
    assert _png(umap).shape[1] < 0.75 * two_panels.shape[1]  # one panel instead of two

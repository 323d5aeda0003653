"""Per-task benchmark figures from the concatenated long table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from phenoica.benchmarks.generalization import POOLED, TABLE_COLUMNS
from phenoica.benchmarks.plots import normalize_table, plot_generalization, plot_task, plotted_metrics
from phenoica.errors import InputError


def long_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method in ("pca", "pca_ica", "pca_rand"):
        for fold in ("b0", "b1", "b2", POOLED):
            rows.append((method, "protocol", "n_test_wells", 30, fold, ""))
            for metric in ("auroc_l2", "auroc_l1", "auroc_topk"):
                rows.append((method, "auroc", metric, rng.uniform(0.6, 0.9), fold, ""))
                rows.append((method, "auroc", metric, rng.uniform(0.5, 1.0), fold, "p1"))
            rows.append((method, "auroc", "n_perturbations", 1, fold, ""))
            rows.append((method, "retrieval", "map", rng.uniform(0.1, 0.4), fold, ""))
            rows.append((method, "retrieval", "p_value", 0.01, fold, "p1"))
            rows.append((method, "retrieval", "fraction_significant", 0.5, fold, ""))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def test_one_figure_per_task_with_its_summary_metrics(tmp_path):
    table = long_table()
    assert plotted_metrics(table, "auroc") == ["auroc_l2", "auroc_l1", "auroc_topk"]
    assert plotted_metrics(table, "retrieval") == ["map", "fraction_significant"]
    figures = plot_generalization(table, tmp_path / "figs")
    assert set(figures) == {"auroc", "retrieval"}  # protocol rows are not a figure
    for path in figures.values():
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # something was drawn
    assert not list((tmp_path / "figs").glob(".*partial"))


def test_table_read_back_from_tsv_plots_the_same(tmp_path):
    path = tmp_path / "benchmarks.tsv"
    long_table().to_csv(path, sep="\t", index=False)
    table = pd.read_csv(path, sep="\t")  # empty perturbations come back as NaN
    normalized = normalize_table(table)
    assert (normalized["perturbation"] == "").sum() == (long_table()["perturbation"] == "").sum()
    out = plot_task(table, "auroc", tmp_path / "auroc.png", methods=["pca_rand", "pca"])
    assert out.exists()


def test_bad_tables_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="lacks column"):
        plot_task(long_table().drop(columns=["fold"]), "auroc", tmp_path / "x.png")
    with pytest.raises(InputError, match="no plottable metric"):
        plot_task(long_table(), "protocol", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()

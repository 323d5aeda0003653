"""The rule functions behind ``snakemake --report``: per-method figures, the separation-score
overview and the held-out-batch benchmark figures, each with an HTML table the report shows
inline.

The figures themselves are drawn by :mod:`phenoica.plots` and :mod:`phenoica.benchmarks.plots`;
this module takes the ``report`` config section, gathers the per-method tables and writes the
outputs atomically.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import __version__
from .collect import BENCHMARK_COLUMNS, SCORE_COLUMNS, benchmark_grid, concat_tables, metric_direction, score_grid
from .errors import InputError
from .io import atomic_path, atomic_write_text
from .logs import get_logger

log = get_logger(__name__)

def figure_colors(color: Sequence[str] | None, bio_key: str | None) -> list[str]:
    """obs columns the UMAP panels are coloured by: ``color`` (``report.color``) when set, else
    ``batch``, ``perturbation`` and the biology label ``bio_key`` (``labels.biology``) if any."""
    if color is not None:
        return list(dict.fromkeys(str(c) for c in color))
    return list(dict.fromkeys(["batch", "perturbation", *([str(bio_key)] if bio_key else [])]))


def run_method_report(postprocessed_path: str, scores_tsv: str, out_umap: str, out_attribution: str,
                      method: str, bio_key: str | None, seed: int, *, max_wells: int, embedding: str,
                      color: Sequence[str] | None) -> None:
    """Rule function: the UMAP (coloured by batch, perturbation and the biology label) and the
    component attribution heatmap of one post-processed AnnData.

    The keyword-only arguments are the ``report`` config section (``max_wells`` wells at most
    are embedded, ``embedding`` umap or pca, ``color``; config/README.md); ``bio_key``: the
    biology label column (``labels.biology``), ``seed``: the global seed.
    """
    from .plots import run_method_figures

    wanted = figure_colors(color, bio_key)
    run_method_figures(postprocessed_path, out_umap=out_umap, method=method,
                       scores_tsv=scores_tsv, out_attribution=out_attribution, color=wanted,
                       params={"max_wells": int(max_wells), "embedding": embedding, "seed": int(seed)})


# --- tables -----------------------------------------------------------------------------------

def _format(value: float, metric: str) -> str:
    if pd.isna(value):
        return "-"
    if metric.startswith("n_") and float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.3f}"


_CSS = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; }
table { border-collapse: collapse; margin-bottom: 18px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; }
td.name, th.name { text-align: left; }
td.best { font-weight: bold; background: #e5f2e5; }
p.note { color: #555; max-width: 60em; }
"""


def grid_html(grid: pd.DataFrame, *, metrics_on: str, tol: float = 1e-9) -> str:
    """An HTML table of ``grid``; in every metric with a known direction
    (:func:`phenoica.collect.metric_direction`) the best value(s) are shaded.

    ``metrics_on``: ``"columns"`` (methods are rows) or ``"index"`` (methods are columns; the
    index may be a (task, metric) MultiIndex)."""
    if metrics_on not in ("columns", "index"):
        raise ValueError("metrics_on must be 'columns' or 'index'")
    index_names = [n or "" for n in (grid.index.names if grid.index.nlevels > 1 else [grid.index.name])]
    out = ["<table>", "<thead><tr>"]
    out += [f'<th class="name">{html.escape(str(n))}</th>' for n in index_names]
    out += [f"<th>{html.escape(str(c))}</th>" for c in grid.columns]
    out.append("</tr></thead><tbody>")

    def best_mask(values: np.ndarray, metric: str) -> np.ndarray:
        direction = metric_direction(metric)
        finite = np.isfinite(values)
        if direction == 0 or finite.sum() < 2:
            return np.zeros(len(values), dtype=bool)
        target = np.nanmax(values * direction)
        return finite & (np.abs(values * direction - target) <= tol * max(1.0, abs(target)))

    values = grid.to_numpy(dtype=np.float64)
    best = np.zeros_like(values, dtype=bool)
    if metrics_on == "columns":
        for j, metric in enumerate(grid.columns):
            best[:, j] = best_mask(values[:, j], str(metric))
    else:
        for i, key in enumerate(grid.index):
            best[i, :] = best_mask(values[i, :], str(key[-1] if isinstance(key, tuple) else key))
    for i, key in enumerate(grid.index):
        parts = key if isinstance(key, tuple) else (key,)
        out.append("<tr>" + "".join(f'<td class="name">{html.escape(str(p))}</td>' for p in parts))
        for j, column in enumerate(grid.columns):
            metric = str(column) if metrics_on == "columns" else str(parts[-1])
            css = ' class="best"' if best[i, j] else ""
            out.append(f"<td{css}>{_format(values[i, j], metric)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _page(title: str, body: str, sources: Sequence[str]) -> str:
    files = ", ".join(html.escape(str(s)) for s in sources)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body><h3>{html.escape(title)}</h3>{body}"
            f"<p class=\"note\">phenoica {html.escape(__version__)}; from {files}</p>"
            "</body></html>\n")


def _read_tables(paths: Sequence[str | os.PathLike], columns: Sequence[str], what: str) -> pd.DataFrame:
    if not paths:
        raise InputError(what, "no tables given")
    try:
        return concat_tables(list(paths), columns)
    except ValueError as exc:
        raise InputError(what, str(exc)) from exc


def run_scores_report(score_paths: Sequence[str], *, methods: Sequence[str], out_png: str,
                      out_html: str) -> None:
    """Rule function: the methods x metrics overview figure of the separation scores and the
    same numbers as an HTML table (best value of every metric shaded)."""
    from .plots import plot_scores_overview

    scores = _read_tables(score_paths, SCORE_COLUMNS, "scores")
    plot_scores_overview(scores, out_png, methods=methods)
    grid = score_grid(scores, methods)
    if grid.empty:
        raise InputError("scores", "no whole-representation rows (component 'all')")
    body = ("<p class=\"note\">Whole-representation separation scores of every post-processing "
            "method (rows). Shaded: the best value of each metric whose direction is known.</p>"
            + grid_html(grid, metrics_on="columns"))
    atomic_write_text(out_html, _page("Separation scores", body, score_paths))
    log.info("wrote %s and %s (%d methods x %d metrics)", out_png, out_html, *grid.shape)


def run_benchmark_report(benchmark_paths: Sequence[str], *, methods: Sequence[str], out_dir: str,
                         out_html: str, tasks: Sequence[str] | None = None) -> None:
    """Rule function: one figure per held-out-batch task (``<out_dir>/<task>.png``, written as
    one folder, atomically) and the pooled metrics as an HTML table (task, metric) x method."""
    from .benchmarks.plots import plot_generalization

    table = _read_tables(benchmark_paths, BENCHMARK_COLUMNS, "benchmarks")
    with atomic_path(out_dir, is_dir=True) as tmp:
        figures = plot_generalization(table, tmp, methods=methods, tasks=tasks)
    if not figures:
        log.warning("benchmarks: no task with a plottable metric; %s is empty", out_dir)
    pooled = benchmark_grid(table, methods)
    if pooled.empty:
        raise InputError("benchmarks", "no pooled whole-fold rows to tabulate")
    body = ["<p class=\"note\">Held-out-batch benchmarks: every fit sees the training batches "
            "only; values pooled over the held-out batches. Shaded: the best value of each "
            "metric whose direction is known.</p>", grid_html(pooled, metrics_on="index")]
    folds = [f for f in dict.fromkeys(table["fold"].astype(str)) if f != "pooled"]
    protocol = table[(table["task"] == "protocol") & (table["metric"] == "transductive")]
    transductive = sorted(set(protocol.loc[pd.to_numeric(protocol["value"], errors="coerce") == 1,
                                           "method"].astype(str)))
    if transductive:
        body.append("<p class=\"note\">Transductive (fitted on training and test wells with the "
                    f"test labels hidden): {html.escape(', '.join(transductive))}.</p>")
    body.append(f"<p class=\"note\">Held-out folds: {html.escape(', '.join(folds))}.</p>")
    atomic_write_text(out_html, _page("Held-out-batch benchmarks", "".join(body), benchmark_paths))
    log.info("wrote %d figure(s) under %s and %s", len(figures), out_dir, out_html)


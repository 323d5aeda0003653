"""The final collection: one AnnData users open in scanpy, the long tables, and the run summary."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from .io import read_h5ad, sanitize_key, write_h5ad, write_tsv
from .io.atomic import atomic_write_text
from .logs import get_logger
from .provenance import add_record

log = get_logger(__name__)

SCORE_COLUMNS = ["method", "component", "metric", "value"]
BENCHMARK_COLUMNS = ["method", "task", "metric", "value", "fold", "perturbation"]


def concat_tables(paths: Sequence[str | os.PathLike], columns: Sequence[str]) -> pd.DataFrame:
    """Concatenate long-format TSVs, checking they carry the interface columns."""
    frames = []
    for path in paths:
        frame = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (has {list(frame.columns)})")
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))
    extra = [c for c in table.columns if c not in columns]
    return table[list(columns) + extra]


def _uns_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy storable in .h5ad: object columns as strings, numeric value column as float."""
    out = table.copy()
    for col in out.columns:
        if col == "value":
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(np.float64)
        elif out[col].dtype == object:
            out[col] = out[col].fillna("").astype(str)
    return out.reset_index(drop=True)


def assemble(wells: ad.AnnData, methods: Mapping[str, ad.AnnData]) -> ad.AnnData:
    """Wells AnnData + one ``obsm["X_<method>"]`` per post-processing output."""
    out = wells.copy()
    fitted = {}
    for name, post in methods.items():
        if list(post.obs_names) != list(out.obs_names):
            raise ValueError(f"post-processed {name!r} has different wells than the collected wells")
        out.obsm[f"X_{sanitize_key(name)}"] = np.asarray(post.X, dtype=np.float32)
        if "method" in post.uns:
            fitted[sanitize_key(name)] = post.uns["method"]
    out.uns["postprocess"] = fitted
    return out


def collect_results(wells_path: str, *, methods: Mapping[str, str], score_paths: Sequence[str],
                    benchmark_paths: Sequence[str], out_h5ad: str, out_scores: str,
                    out_benchmarks: str, out_summary: str) -> None:
    """Write ``results/phenoica.h5ad`` and the long tables; print and save the summary."""
    wells = read_h5ad(wells_path)
    post = {name: read_h5ad(path) for name, path in methods.items()}
    adata = assemble(wells, post)
    scores = concat_tables(score_paths, SCORE_COLUMNS)
    benchmarks = concat_tables(benchmark_paths, BENCHMARK_COLUMNS)
    adata.uns["scores"] = _uns_table(scores)
    adata.uns["benchmarks"] = _uns_table(benchmarks)
    add_record(adata.uns, "collect_results", params={"methods": dict(methods)},
               inputs=[wells_path, *methods.values(), *score_paths, *benchmark_paths])
    summary = summarize(scores, benchmarks, adata.obs, list(methods))
    write_tsv(scores, out_scores)
    write_tsv(benchmarks, out_benchmarks)
    write_h5ad(adata, out_h5ad)
    atomic_write_text(out_summary, summary)
    log.info("summary:\n%s", summary)


# Direction of the overall metrics the summary compares (others are listed, not judged).
HIGHER_IS_BETTER_PREFIXES = ("auroc", "accuracy", "macro_f1", "map", "mean_ap", "recall",
                             "nsc", "nscb", "bio_top25", "hoyer", "mcc_biology",
                             "perturbation_silhouette", "label_silhouette", "nmi", "ari",
                             "batch_silhouette",
                             "ilisi", "graph_connectivity", "batch_mixing", "fraction_significant")
LOWER_IS_BETTER_PREFIXES = ("batch_silhouette_raw",)


def metric_direction(metric: str) -> int:
    """+1 if higher is better, -1 if lower is better, 0 if the summary should not judge."""
    name = metric.lower()
    if name.startswith(LOWER_IS_BETTER_PREFIXES):
        return -1
    if name.startswith(HIGHER_IS_BETTER_PREFIXES):
        return 1
    return 0


def score_grid(scores: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Whole-representation separation scores: one row per method, one column per metric."""
    overall = scores[scores["component"].astype(str).isin(["all", "", "nan"])].copy()
    overall["value"] = pd.to_numeric(overall["value"], errors="coerce")
    grid = overall.pivot_table(index="method", columns="metric", values="value", aggfunc="mean",
                               sort=False)
    order = list(methods) if methods is not None else list(dict.fromkeys(overall["method"]))
    grid = grid.reindex(index=[m for m in order if m in grid.index])
    grid.columns.name = None
    grid.index.name = "method"
    return grid


def benchmark_grid(benchmarks: pd.DataFrame, methods: Sequence[str] | None = None,
                   fold: str = "pooled") -> pd.DataFrame:
    """Held-out-batch metrics of the whole fold (``fold``: pooled over the held-out batches by
    default), rows ``(task, metric)`` in table order, one column per method."""
    pert = benchmarks["perturbation"].astype(object).fillna("").astype(str)
    keep = ((benchmarks["fold"].astype(str) == fold) & (pert == "")
            & (benchmarks["task"].astype(str) != "protocol"))
    rows = benchmarks[keep].assign(value=lambda t: pd.to_numeric(t["value"], errors="coerce"))
    rows = rows.dropna(subset=["value"])
    grid = rows.pivot_table(index=["task", "metric"], columns="method", values="value",
                            aggfunc="mean", sort=False)
    order = list(methods) if methods is not None else list(dict.fromkeys(rows["method"]))
    grid = grid.reindex(columns=[m for m in order if m in grid.columns])
    grid.columns.name = None
    return grid


def _format_grid(grid: pd.DataFrame) -> str:
    return grid.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")


def summarize(scores: pd.DataFrame, benchmarks: pd.DataFrame, obs: pd.DataFrame,
              methods: Sequence[str], focus: str = "pca_ica",
              rivals: Sequence[str] = ("base", "pca", "pca_rand"), tol: float = 1e-6) -> str:
    """A short text: tables of the headline numbers and, from them, whether ``focus`` beats each
    rival on held-out AUROC and on separation. Ties (within ``tol``) are called ties."""
    lines = [
        f"phenoica summary: {obs.shape[0]} wells, "
        f"{obs['plate'].nunique() if 'plate' in obs else '?'} plates, "
        f"{obs['batch'].nunique() if 'batch' in obs else '?'} batches, methods: {', '.join(methods)}",
        "",
    ]
    # headline rows: pooled over the held-out folds, about the whole fold (not one perturbation)
    bench_means = benchmark_grid(benchmarks, methods).sort_index()
    bench_means.columns.name = "method"
    if not bench_means.empty:
        lines += ["Held-out-batch benchmarks (pooled over held-out batches):",
                  _format_grid(bench_means), ""]
    score_means = score_grid(scores, methods).T.sort_index()
    score_means.index.name, score_means.columns.name = "metric", "method"
    if not score_means.empty:
        lines += ["Separation scores (whole representation):", _format_grid(score_means), ""]

    def verdicts(grid: pd.DataFrame, label: str, rows_filter) -> list[str]:
        out = []
        if focus not in grid.columns:
            return out
        for rival in rivals:
            if rival not in grid.columns:
                continue
            wins = ties = losses = 0
            for index, row in grid.iterrows():
                metric = index[-1] if isinstance(index, tuple) else index
                direction = metric_direction(str(metric))
                if not rows_filter(index) or direction == 0:
                    continue
                a, b = row[focus], row[rival]
                if pd.isna(a) or pd.isna(b):
                    continue
                diff = direction * (a - b)
                if abs(a - b) <= tol * max(1.0, abs(a), abs(b)):
                    ties += 1
                elif diff > 0:
                    wins += 1
                else:
                    losses += 1
            judged = wins + ties + losses
            if judged:
                word = ("beats" if wins > losses else "loses to" if losses > wins else "does not beat")
                out.append(f"- {label}: {focus} {word} {rival} "
                           f"({wins} better, {ties} tied, {losses} worse of {judged} metrics)")
        return out

    def is_auroc(index) -> bool:
        return any("auroc" in str(part).lower() for part in (index if isinstance(index, tuple) else (index,)))

    lines.append("Verdict (measured on this run):")
    verdict = verdicts(bench_means, "held-out AUROC", is_auroc)
    verdict += verdicts(score_means, "separation", lambda index: True)
    lines += verdict or ["- not enough results to compare"]
    lines.append("(Ties between pca, pca_ica and pca_rand on rotation-invariant metrics are expected: "
                 "they differ only by a rotation.)")
    return "\n".join(lines) + "\n"

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
    """Wells AnnData + one ``obsm["X_phenoica_<method>"]`` per post-processing output
    (:func:`phenoica.identifiers.obsm_key`: never one of scanpy's own keys such as ``X_pca``)."""
    from .identifiers import obsm_key

    out = wells.copy()
    fitted = {}
    for name, post in methods.items():
        if list(post.obs_names) != list(out.obs_names):
            raise ValueError(f"post-processed {name!r} has different wells than the collected wells")
        out.obsm[obsm_key(sanitize_key(name))] = np.asarray(post.X, dtype=np.float32)
        if "method" in post.uns:
            fitted[sanitize_key(name)] = post.uns["method"]
    out.uns["postprocess"] = fitted
    return out


def collect_results(wells_path: str, *, methods: Mapping[str, str], score_paths: Sequence[str],
                    benchmark_paths: Sequence[str], null_paths: Sequence[str], out_h5ad: str,
                    out_scores: str, out_benchmarks: str, out_null: str, out_summary: str,
                    n_bootstrap: int, bootstrap_seed: int) -> None:
    """Write ``results/phenoica.h5ad`` and the long tables (scores, benchmarks, the rotation
    null ``null_rotations.tsv``: columns ``method, task, metric, seed, value``); print and save
    the summary. ``n_bootstrap``/``bootstrap_seed``: the rotation_null section's bootstrap of the
    summary's intervals."""
    from .nulls import NULL_COLUMNS

    wells = read_h5ad(wells_path)
    post = {name: read_h5ad(path) for name, path in methods.items()}
    adata = assemble(wells, post)
    scores = concat_tables(score_paths, SCORE_COLUMNS)
    benchmarks = concat_tables(benchmark_paths, BENCHMARK_COLUMNS)
    null = concat_tables(null_paths, NULL_COLUMNS)
    adata.uns["scores"] = _uns_table(scores)
    adata.uns["benchmarks"] = _uns_table(benchmarks)
    adata.uns["null_rotations"] = _uns_table(null)
    add_record(adata.uns, "collect_results",
               params={"methods": dict(methods), "n_bootstrap": n_bootstrap},
               seeds={"bootstrap_seed": bootstrap_seed},
               inputs=[wells_path, *methods.values(), *score_paths, *benchmark_paths, *null_paths])
    summary = summarize(scores, benchmarks, adata.obs, list(methods), null=null,
                        n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed)
    write_tsv(scores, out_scores)
    write_tsv(benchmarks, out_benchmarks)
    write_tsv(null, out_null)
    write_h5ad(adata, out_h5ad)
    atomic_write_text(out_summary, summary)
    log.info("summary:\n%s", summary)


# Direction of the overall metrics the summary compares (others are listed, not judged).
HIGHER_IS_BETTER_PREFIXES = ("auroc", "accuracy", "macro_f1", "map", "mean_ap", "recall",
                             "nsc", "nscb", "bio_top25", "hoyer", "mcc_biology",
                             "bio_variance_captured", "r2_biology",
                             "perturbation_silhouette", "label_silhouette", "nmi", "ari",
                             "batch_silhouette",
                             "ilisi", "graph_connectivity", "batch_mixing", "fraction_significant")
LOWER_IS_BETTER_PREFIXES = ("batch_silhouette_raw", "batch_variance")


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
              methods: Sequence[str], null: pd.DataFrame | None = None, *, focus: str = "pca_ica",
              rivals: Sequence[str] = ("base", "pca", "pca_rand"), n_bootstrap: int = 1000,
              bootstrap_seed: int = 0, tol: float = 1e-4) -> str:
    """A short text: tables of the headline numbers and, from them, the verdict on ``focus``.

    ``null`` (the rotation null, :mod:`phenoica.nulls`) places ``focus`` among random rotations
    on every coordinate-dependent metric: its value, the null's median, 5-95 % range and the
    percentile of ``focus``, with a bootstrap 5-95 % interval of ``focus`` over perturbations
    (AUROC) or held-out folds (other benchmarks; ``n_bootstrap`` resamples, seed
    ``bootstrap_seed``). ``focus`` beats random rotations on a metric only outside the null's
    range. Against each rival, a benchmark metric counts as better or worse only when the paired
    bootstrap interval of the difference excludes 0, and a coordinate-dependent metric only when
    ``focus`` is also outside the rotation null; rotation-invariant metrics of PCA, PCA+ICA and
    PCA+Rand are stated as the tie they must be (a check of the code, not a result).
    """
    from .nulls import NULL_RANGE, is_rotation_invariant

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

    # every judged metric as (task, metric) -> {method: value}; task "scores" for separation
    table: dict[tuple[str, str], dict[str, float]] = {}
    for (task, metric), row in bench_means.iterrows():
        table[(str(task), str(metric))] = row.to_dict()
    for metric, row in score_means.iterrows():
        table[("scores", str(metric))] = row.to_dict()
    items = _per_item_values(benchmarks)
    null_table = _null_rows(null, table, focus, items, n_bootstrap=n_bootstrap, seed=bootstrap_seed)
    lo, hi = NULL_RANGE
    if null_table is not None and not null_table.empty:
        n_rot = int(null.groupby(["task", "metric"])["seed"].nunique().max())
        seeds = sorted(null["seed"].unique())
        lines += [(f"Rotation null: {focus} against {n_rot} random rotations of the same "
                   f"whitening ({', '.join(sorted(null['method'].unique()))}, seeds "
                   f"{seeds[0]}-{seeds[-1]}; results/null_rotations.tsv). pct = percentile of "
                   f"{focus} in the null; bootstrap = {lo:g}-{hi:g} % interval of {focus} over "
                   f"perturbations (auroc) or held-out folds ({n_bootstrap} resamples, seed "
                   f"{bootstrap_seed})."),
                  null_table.to_string(index=False), ""]
    elif null is None or null.empty:
        lines += [("Rotation null: none (no PCA+Rand method configured); coordinate-dependent "
                   "metrics are not judged."), ""]

    lines.append("Verdict (measured on this run):")
    verdict: list[str] = []
    positions = {} if null_table is None else {
        (r.task, r.metric): r.verdict for r in null_table.itertuples(index=False)}
    if positions:
        judged = {(t, m): v for (t, m), v in positions.items()
                  if metric_direction(m) != 0 and v in ("better", "worse", "inside")}
        better = [m for (t, m), v in judged.items() if v == "better"]
        worse = [m for (t, m), v in judged.items() if v == "worse"]
        inside = [m for (t, m), v in judged.items() if v == "inside"]
        verdict.append(f"- {focus} vs random rotations: beats the null's {lo:g}-{hi:g} % range on "
                       f"{len(better)} of {len(judged)} coordinate-dependent metrics"
                       + (f" ({', '.join(better)})" if better else "")
                       + (f"; inside it on {len(inside)} ({', '.join(inside)})" if inside else "")
                       + (f"; worse than it on {len(worse)} ({', '.join(worse)})" if worse else "")
                       + f". With {len(judged)} metrics, about {0.05 * len(judged):.1f} fall outside "
                       "a 5-95 % range by chance alone.")
    tie = _tie_check(table, ("pca", focus, "pca_rand"), tol)
    if tie:
        verdict.append(tie)
    for rival in rivals:
        if rival not in methods or focus not in methods:
            continue
        if rival == "pca_rand" and positions:
            verdict.append(f"- {focus} vs {rival} (one rotation, seed as configured): judged by the "
                           "rotation null above, not by this single draw")
            continue
        counts = {"better": [], "worse": [], "tied": [], "unclear": []}
        for (task, metric), values in table.items():
            direction = metric_direction(metric)
            a, b = values.get(focus, np.nan), values.get(rival, np.nan)
            if direction == 0 or pd.isna(a) or pd.isna(b):
                continue
            invariant = is_rotation_invariant(task, metric)
            if abs(a - b) <= tol * max(1.0, abs(a), abs(b)):
                counts["tied"].append(metric)
                continue
            sign = direction * (a - b)
            word = "better" if sign > 0 else "worse"
            pair = _paired(items, task, metric, focus, rival)
            if pair is not None:
                low, high = _bootstrap_diff(pair, n_bootstrap, bootstrap_seed)
                if not (direction * low > 0 or direction * high < 0):
                    word = "unclear"
            if not invariant and rival in ("pca", "pca_rand") and positions.get((task, metric)) not in (
                    "better", "worse"):
                word = "unclear"
            counts[word].append(metric)
        judged = sum(len(v) for v in counts.values())
        if judged:
            n_b, n_w = len(counts["better"]), len(counts["worse"])
            word = "beats" if n_b > n_w else "loses to" if n_w > n_b else "does not beat"
            verdict.append(f"- {focus} {word} {rival}: {n_b} better, {len(counts['tied'])} tied, "
                           f"{n_w} worse, {len(counts['unclear'])} within uncertainty of {judged} metrics"
                           + (f" (better: {', '.join(counts['better'])})" if counts["better"] else "")
                           + (f" (worse: {', '.join(counts['worse'])})" if counts["worse"] else ""))
    lines += verdict or ["- not enough results to compare"]
    lines.append("(Better/worse needs a paired bootstrap interval of the difference that excludes 0 "
                 "where per-perturbation or per-fold values exist, and for a coordinate-dependent "
                 "metric a value outside the rotation null; everything else is 'within uncertainty'.)")
    return "\n".join(lines) + "\n"


def _per_item_values(benchmarks: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (task, metric): a frame items x methods of the values a bootstrap resamples: the
    pooled per-perturbation rows (AUROC) or, without them, the per-fold whole-fold rows."""
    if benchmarks.empty:
        return {}
    pert = benchmarks["perturbation"].astype(object).fillna("").astype(str)
    fold = benchmarks["fold"].astype(str)
    value = pd.to_numeric(benchmarks["value"], errors="coerce")
    frame = benchmarks.assign(perturbation=pert, fold=fold, value=value)
    frame = frame[(frame["task"] != "protocol") & frame["value"].notna()]
    out: dict[tuple[str, str], pd.DataFrame] = {}
    per_pert = frame[(frame["fold"] == "pooled") & (frame["perturbation"] != "")]
    per_fold = frame[(frame["fold"] != "pooled") & (frame["perturbation"] == "")]
    for source, column in ((per_fold, "fold"), (per_pert, "perturbation")):  # perturbations win
        for (task, metric), rows in source.groupby(["task", "metric"], sort=False):
            if str(metric).startswith(("n_", "p_value", "q_value")):
                continue
            grid = rows.pivot_table(index=column, columns="method", values="value", aggfunc="mean")
            if len(grid) >= 2:
                out[(str(task), str(metric))] = grid
    return out


def _paired(items, task, metric, a, b) -> np.ndarray | None:
    grid = items.get((task, metric))
    if grid is None or a not in grid.columns or b not in grid.columns:
        return None
    pair = grid[[a, b]].dropna()
    return pair.to_numpy() if len(pair) >= 2 else None


def _bootstrap_diff(pair: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float]:
    from .nulls import bootstrap_interval

    return bootstrap_interval(pair[:, 0], paired=pair[:, 1], n_bootstrap=n_bootstrap, seed=seed)


def _null_rows(null: pd.DataFrame | None, table, focus: str, items, *, n_bootstrap: int,
               seed: int) -> pd.DataFrame | None:
    """One row per coordinate-dependent metric: focus's value, the null, the verdict."""
    from .nulls import NULL_RANGE, bootstrap_interval, null_position, percentile_in_null

    if null is None or null.empty:
        return None
    rows = []
    for (task, metric), values in null.groupby(["task", "metric"], sort=False)["value"]:
        value = table.get((str(task), str(metric)), {}).get(focus, np.nan)
        values = pd.to_numeric(values, errors="coerce").dropna().to_numpy()
        if pd.isna(value) or values.size == 0:
            continue
        lo, hi = np.percentile(values, NULL_RANGE)
        direction = metric_direction(str(metric))
        interval = "-"
        grid = items.get((str(task), str(metric)))
        if grid is not None and focus in grid.columns:
            col = grid[focus].dropna().to_numpy()
            b_lo, b_hi = bootstrap_interval(col, n_bootstrap=n_bootstrap, seed=seed)
            if np.isfinite(b_lo):
                unit = "perturbations" if str(task).startswith("auroc") else "folds"
                interval = f"{b_lo:.3f}-{b_hi:.3f} ({len(col)} {unit})"
        position = null_position(float(value), values, direction)
        rows.append({"task": str(task), "metric": str(metric), focus: f"{value:.3f}",
                     "null median": f"{np.median(values):.3f}", "null 5-95%": f"{lo:.3f}-{hi:.3f}",
                     "pct": f"{percentile_in_null(float(value), values):.0f}",
                     "bootstrap": interval, "verdict": position})
    return pd.DataFrame(rows)


def _tie_check(table, methods: Sequence[str], tol: float) -> str | None:
    """The rotation-invariant metrics of PCA, PCA+ICA and PCA+Rand must tie: say whether they do."""
    from .nulls import is_rotation_invariant

    spreads = {}
    for (task, metric), values in table.items():
        if not is_rotation_invariant(task, metric) or metric.startswith("n_"):
            continue
        vals = [values.get(m, np.nan) for m in methods]
        if any(pd.isna(v) for v in vals):
            continue
        spreads[f"{task}/{metric}"] = (max(vals) - min(vals), max(1.0, *map(abs, vals)))
    if not spreads:
        return None
    broken = {k: d for k, (d, scale) in spreads.items() if d > tol * scale}
    largest = max(d for d, _ in spreads.values())
    if broken:
        return (f"- rotation-invariant check FAILED: {', '.join(methods)} differ on "
                f"{len(broken)} of {len(spreads)} rotation-invariant metrics "
                f"({', '.join(f'{k} by {d:.2g}' for k, d in broken.items())}); they differ only by a "
                "rotation, so something other than the rotation differs (e.g. probe standardisation "
                "or the fitting set)")
    return (f"- rotation-invariant check: {', '.join(methods)} tie on all {len(spreads)} "
            f"rotation-invariant metrics (largest difference {largest:.1g}), as they must: a check "
            "of the code, not a result")

"""Figures of the held-out-batch benchmarks: one per task, methods side by side, the spread over
folds as a box with the fold values as dots and the pooled value as a diamond.

Input is the long table of :mod:`phenoica.benchmarks.generalization` (several methods
concatenated, e.g. ``results/benchmarks.tsv``). Figures are written atomically as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..errors import InputError
from ..io import atomic_path
from ..logs import get_logger
from .generalization import POOLED, TABLE_COLUMNS

log = get_logger(__name__)

#: Metrics that are counts, p-values or flags: listed in the table, not plotted.
NOT_PLOTTED_PREFIXES = ("n_", "p_value", "q_value", "transductive")
#: Chance level drawn as a dashed line.
CHANCE = {"auroc_l2": 0.5, "auroc_l1": 0.5, "auroc_topk": 0.5}
TASK_TITLES = {
    "auroc": "Control vs perturbed on held-out batches (AUROC, against the same batch's controls)",
    "auroc_cross": "Held-out perturbed wells vs training-batch controls (AUROC; sees batch effects)",
    "auroc_pooled": "Held-out perturbed wells vs held-out and training controls (AUROC)",
    "classification": "Classification of held-out wells",
    "retrieval": "Cross-batch replicate retrieval against the batch's controls (mAP)",
    "retrieval_biology": "Cross-batch retrieval by biology label against controls (mAP)",
    "relationships": "Known-relationship recall",
    "moa": "MOA nearest neighbour (NSC / NSCB)",
}


def normalize_table(table: pd.DataFrame, source: str = "benchmarks") -> pd.DataFrame:
    """The long table with ``value`` numeric and ``fold``/``perturbation`` as strings ('' for
    missing), as read back from TSV."""
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(source, f"benchmark table lacks column(s) {missing}")
    out = table.copy()
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    for col in ("method", "task", "metric", "fold", "perturbation"):
        out[col] = out[col].astype(object).where(out[col].notna(), "").astype(str)
    return out


def plotted_metrics(table: pd.DataFrame, task: str) -> list[str]:
    """Summary metrics of ``task`` (rows about a whole fold), in table order, without counts."""
    rows = table[(table["task"] == task) & (table["perturbation"] == "")]
    metrics = list(dict.fromkeys(rows["metric"]))
    return [m for m in metrics if not m.startswith(NOT_PLOTTED_PREFIXES)]


def plot_task(table: pd.DataFrame, task: str, out_png: str | os.PathLike, *,
              methods: Sequence[str] | None = None) -> Path:
    """One figure for ``task``: a panel per metric, methods on the x axis."""
    table = normalize_table(table)
    metrics = plotted_metrics(table, task)
    if not metrics:
        raise InputError("benchmarks", f"no plottable metric for task {task!r}")
    rows = table[(table["task"] == task) & (table["perturbation"] == "")]
    methods = list(methods) if methods is not None else list(dict.fromkeys(rows["method"]))
    ncols = min(4, len(metrics))
    nrows = int(np.ceil(len(metrics) / ncols))
    fig = Figure(figsize=(max(3.2, 0.6 * len(methods) + 1.2) * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    rng = np.random.default_rng(0)  # jitter only
    for ax, metric in zip(axes, metrics):
        sub = rows[rows["metric"] == metric]
        folds = [sub[(sub["method"] == m) & (sub["fold"] != POOLED)]["value"].dropna().to_numpy()
                 for m in methods]
        positions = np.arange(len(methods))
        filled = [i for i, f in enumerate(folds) if len(f)]
        if filled:
            ax.boxplot([folds[i] for i in filled], positions=positions[filled], widths=0.55,
                       showfliers=False, medianprops={"color": "0.3"})
        fold_label, pooled_label = "fold", POOLED  # legend entries once per panel
        for i, values in enumerate(folds):
            if len(values):
                ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=12, color="tab:blue",
                           alpha=0.7, zorder=3, label=fold_label)
                fold_label = None
        for i, method in enumerate(methods):
            pooled = sub[(sub["method"] == method) & (sub["fold"] == POOLED)]["value"].dropna()
            if len(pooled):
                ax.scatter([i], [pooled.iloc[0]], marker="D", s=36, color="tab:red", zorder=4,
                           label=pooled_label)
                pooled_label = None
        if metric in CHANCE:
            ax.axhline(CHANCE[metric], color="0.5", linestyle="--", linewidth=0.8)
        ax.set_xticks(positions, methods, rotation=45, ha="right")
        ax.set_title(metric, fontsize=10)
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(TASK_TITLES.get(task, task))
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out


def plot_generalization(table: pd.DataFrame, out_dir: str | os.PathLike, *,
                        methods: Sequence[str] | None = None,
                        tasks: Sequence[str] | None = None) -> dict[str, Path]:
    """One PNG per task present in ``table`` (``<out_dir>/<task>.png``) -> {task: path}."""
    table = normalize_table(table)
    present = [t for t in dict.fromkeys(table["task"]) if t != "protocol"]
    wanted = [t for t in (tasks or present) if t in present and plotted_metrics(table, t)]
    out = {}
    for task in wanted:
        out[task] = plot_task(table, task, Path(out_dir) / f"{task}.png", methods=methods)
        log.info("figure %s", out[task])
    return out

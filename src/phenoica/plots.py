"""Report figures (PNG): UMAPs of a representation, the component attribution heatmap, and a
methods x metrics overview of the separation scores.

Every function takes data (AnnData, arrays or the long scores table) and an output path, writes
the PNG atomically and returns None. Figures are built on :class:`matplotlib.figure.Figure`
directly (no pyplot state), so they work in Snakemake jobs and threads without a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from .errors import InputError
from .io import atomic_path
from .logs import get_logger

log = get_logger(__name__)

LABEL_COLORS = {"technical": "#d62728", "mixed": "#bdbdbd", "biological": "#2ca02c"}
CONTROL_COLOR = "#cfcfcf"
#: Overall metrics shown in the scores overview when none are named (those present are used).
OVERVIEW_METRICS = ("n_components", "n_technical", "n_biological", "hoyer", "bio_top25_share",
                    "batch_silhouette", "ilisi", "graph_connectivity", "perturbation_silhouette",
                    "label_silhouette", "nmi", "ari", "mcc_biology", "mcc_batch")


def _save(fig: Figure, out_png: str | os.PathLike, dpi: int = 120) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    log.info("wrote %s", out_png)


def _palette(n: int) -> list:
    from matplotlib import colormaps

    base = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors)
    return [base[i % len(base)] for i in range(n)]


def umap_embedding(Z: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.3,
                   seed: int = 0) -> np.ndarray:
    """2-D UMAP (umap-learn, Euclidean, seeded) of the rows of ``Z``."""
    import umap

    Z = np.asarray(Z, dtype=np.float32)
    n_neighbors = int(min(n_neighbors, max(2, Z.shape[0] - 1)))
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed,
                        n_components=2, init="spectral" if Z.shape[0] > n_neighbors + 2 else "random")
    return reducer.fit_transform(Z)


def _scatter_categorical(ax, xy: np.ndarray, labels: np.ndarray, *, title: str,
                         control: np.ndarray | None, max_legend: int, axis_label: str = "UMAP") -> None:
    cats = pd.Index(pd.unique(labels)).sort_values()
    colors = dict(zip(cats, _palette(len(cats))))
    size = float(np.clip(3000.0 / max(len(xy), 1), 1.0, 20.0))
    order = np.arange(len(xy))
    if control is not None and control.any():
        ax.scatter(*xy[control].T, s=size, c=CONTROL_COLOR, linewidths=0, label="control",
                   rasterized=True)
        order = np.flatnonzero(~control)
        cats = pd.Index(pd.unique(labels[order])).sort_values()
    # random drawing order so no category hides the others
    order = np.random.default_rng(0).permutation(order)
    ax.scatter(*xy[order].T, s=size, c=[colors[v] for v in labels[order]], linewidths=0,
               rasterized=True)
    if len(cats) <= max_legend:
        for cat in cats:
            ax.scatter([], [], s=20, color=colors[cat], label=str(cat))
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False,
                  markerscale=1.0)
    else:
        ax.text(0.01, 0.99, f"{len(cats)} categories", transform=ax.transAxes, va="top", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{axis_label} 1", fontsize=8)
    ax.set_ylabel(f"{axis_label} 2", fontsize=8)


def plot_umap(data, out_png: str | os.PathLike, *, obs: pd.DataFrame | None = None,
              color: Sequence[str] = ("batch", "perturbation"), control_key: str = "is_control",
              title: str | None = None, max_wells: int = 10000, n_neighbors: int = 15,
              seed: int = 0, max_legend: int = 20, basis: np.ndarray | None = None,
              embedding: str = "umap") -> None:
    """UMAP of a representation, one panel per ``color`` column (categorical).

    ``data`` is an AnnData (its ``X``; ``obs`` from it) or an array with ``obs`` given. At most
    ``max_wells`` wells (random, seeded) are embedded. When colouring by anything but batch,
    control wells are drawn in light grey underneath. ``basis``: precomputed 2-D coordinates
    (n x 2, e.g. scanpy's ``obsm["X_umap"]``) to plot instead of computing a UMAP;
    ``embedding="pca"`` plots the first two principal components instead (a quick preview).
    """
    if hasattr(data, "obs") and hasattr(data, "X"):
        Z, obs = np.asarray(data.X), data.obs if obs is None else obs
    else:
        Z = np.asarray(data)
    if obs is None or len(obs) != Z.shape[0]:
        raise InputError("obs", "plot_umap needs obs with one row per row of the representation")
    missing = [c for c in color if c not in obs.columns]
    if missing:
        raise InputError("obs", f"missing column(s) {missing} to colour the UMAP by")
    rng = np.random.default_rng(seed)
    rows = np.arange(Z.shape[0]) if Z.shape[0] <= max_wells else \
        np.sort(rng.choice(Z.shape[0], size=max_wells, replace=False))
    if basis is not None:
        basis = np.asarray(basis, dtype=np.float64)
        if basis.shape != (Z.shape[0], 2):
            raise InputError("basis", f"expected shape ({Z.shape[0]}, 2), got {basis.shape}")
        xy = basis[rows]
    elif embedding == "umap":
        xy = umap_embedding(Z[rows], n_neighbors=n_neighbors, seed=seed)
    elif embedding == "pca":
        centred = np.asarray(Z[rows], dtype=np.float64) - np.asarray(Z[rows], dtype=np.float64).mean(0)
        xy = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    else:
        raise InputError("embedding", f"must be 'umap' or 'pca', got {embedding!r}")
    control = obs[control_key].to_numpy().astype(bool)[rows] if control_key in obs.columns else None
    fig = Figure(figsize=(6.2 * len(color), 4.4), layout="constrained")
    axes = fig.subplots(1, len(color), squeeze=False)[0]
    for ax, key in zip(axes, color):
        labels = obs[key].astype(str).to_numpy()[rows]
        _scatter_categorical(ax, xy, labels, title=f"coloured by {key}",
                             control=None if key == "batch" else control, max_legend=max_legend,
                             axis_label="basis" if basis is not None else embedding.upper())
    note = f" ({len(rows)} of {Z.shape[0]} wells)" if len(rows) < Z.shape[0] else ""
    fig.suptitle(f"{title or embedding.upper()}{note}", fontsize=11)
    _save(fig, out_png)


def _read_scores(scores) -> pd.DataFrame:
    if isinstance(scores, (str, os.PathLike)):
        table = pd.read_csv(scores, sep="\t", keep_default_na=False, na_values=[""])
        source = str(scores)
    else:
        table, source = pd.DataFrame(scores), "scores"
    missing = [c for c in ("method", "component", "metric", "value") if c not in table.columns]
    if missing:
        raise InputError(source, f"scores table lacks column(s) {missing}")
    table = table.copy()
    table["component"] = table["component"].astype(str)
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    return table


def _component_key(name: str):
    digits = "".join(ch for ch in name if ch.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else -1, name)


def plot_attribution_heatmap(scores, out_png: str | os.PathLike, *,
                             methods: Sequence[str] | None = None,
                             max_components: int = 64) -> None:
    """Per-component batch share (on controls) and perturbation share (within batch), one block
    of two rows per method, with the technical/mixed/biological label underneath.

    ``scores``: the long scores table (DataFrame or TSV path, one or several methods). Methods
    with more than ``max_components`` components show the first ones (noted in the title).
    """
    table = _read_scores(scores)
    per = table[table["metric"].isin(["batch_share", "perturbation_share", "attribution"])
                & (table["component"] != "all")]
    names = list(dict.fromkeys(per["method"])) if methods is None else list(methods)
    names = [m for m in names if (per["method"] == m).any()]
    if not names:
        raise InputError("scores", "no per-component attribution rows to plot")
    width = min(max_components, max(per.groupby("method")["component"].nunique()))
    fig = Figure(figsize=(max(6.0, 0.18 * width + 2.5), 1.9 * len(names) + 0.6), layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    label_cmap = ListedColormap([LABEL_COLORS["technical"], LABEL_COLORS["mixed"],
                                 LABEL_COLORS["biological"]])
    image = None
    for ax, method in zip(axes, names):
        wide = per[per["method"] == method].pivot_table(index="metric", columns="component",
                                                         values="value", aggfunc="first")
        comps = sorted(wide.columns, key=_component_key)
        shown = comps[:max_components]
        shares = wide.reindex(index=["batch_share", "perturbation_share"], columns=shown).to_numpy()
        image = ax.imshow(shares, aspect="auto", vmin=0, vmax=1, cmap="viridis",
                          extent=(-0.5, len(shown) - 0.5, 2.5, 0.5))
        codes = wide.reindex(index=["attribution"], columns=shown).to_numpy(dtype=float)
        ax.imshow(codes + 1, aspect="auto", vmin=0, vmax=2, cmap=label_cmap,
                  extent=(-0.5, len(shown) - 0.5, 3.1, 2.6))
        ax.set_ylim(3.1, 0.5)
        ax.set_yticks([1, 2, 2.85], ["batch", "perturbation", "label"], fontsize=7)
        step = max(1, len(shown) // 32)
        ax.set_xticks(range(0, len(shown), step), [shown[i] for i in range(0, len(shown), step)],
                      fontsize=6, rotation=90)
        more = f" (first {len(shown)} of {len(comps)})" if len(shown) < len(comps) else ""
        counts = pd.Series(codes.ravel()).map({-1: "technical", 0: "mixed", 1: "biological"}).value_counts()
        summary = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in ("technical", "mixed", "biological"))
        ax.set_title(f"{method}{more}: {summary}", fontsize=9, loc="left")
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.025, pad=0.01, label="variance share",
                     shrink=min(1.0, 2.0 / len(axes) + 0.3))
    _save(fig, out_png)


def plot_scores_overview(scores, out_png: str | os.PathLike, *,
                         methods: Sequence[str] | None = None,
                         metrics: Sequence[str] | None = None) -> None:
    """Methods x whole-representation metrics, each column coloured by rank (darker = higher),
    with the values written in the cells."""
    table = _read_scores(scores)
    overall = table[table["component"].isin(["all", "", "nan"])]
    grid = overall.pivot_table(index="method", columns="metric", values="value", aggfunc="mean")
    if grid.empty:
        raise InputError("scores", "no whole-representation rows (component 'all') to plot")
    wanted = [m for m in (metrics or OVERVIEW_METRICS) if m in grid.columns]
    rows = [m for m in (methods or list(dict.fromkeys(overall["method"]))) if m in grid.index]
    grid = grid.reindex(index=rows, columns=wanted)
    span = grid.max() - grid.min()
    colour = ((grid - grid.min()) / span.where(span > 0, 1.0)).fillna(0.5)
    fig = Figure(figsize=(0.95 * len(wanted) + 2.0, 0.42 * len(rows) + 1.6), layout="constrained")
    ax = fig.subplots()
    ax.imshow(colour.to_numpy(), aspect="auto", cmap="Blues", vmin=-0.2, vmax=1.3)
    for i in range(len(rows)):
        for j in range(len(wanted)):
            value = grid.iat[i, j]
            text = "-" if pd.isna(value) else (f"{value:.0f}" if wanted[j].startswith("n_")
                                               else f"{value:.3f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(wanted)), wanted, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title("separation scores (shading: rank within each column)", fontsize=10)
    _save(fig, out_png)


def run_method_figures(postprocessed_path: str, *, out_umap: str, method: str,
                       scores_tsv: str | None = None, out_attribution: str | None = None,
                       color: Sequence[str] = ("batch", "perturbation"),
                       params: dict | None = None) -> None:
    """Rule function: the UMAP (and, with ``scores_tsv``, the attribution heatmap) of one
    post-processed AnnData. ``params`` go to :func:`plot_umap` (``max_wells``, ``n_neighbors``,
    ``seed``, ``control_key``, ``max_legend``, ``embedding``)."""
    from .io import read_h5ad

    try:
        adata = read_h5ad(postprocessed_path)
    except (OSError, KeyError) as exc:
        raise InputError(postprocessed_path, f"cannot read as AnnData: {exc}") from exc
    color = [c for c in color if c in adata.obs.columns] or ["batch"]
    try:
        plot_umap(adata, out_umap, color=color, title=f"{method}: {adata.n_vars} components",
                  **dict(params or {}))
    except InputError as exc:
        raise InputError(postprocessed_path, exc.problem) from exc
    if out_attribution is not None:
        if scores_tsv is None:
            raise InputError(postprocessed_path, "an attribution heatmap needs scores_tsv")
        plot_attribution_heatmap(scores_tsv, out_attribution, methods=[method])

"""What a component is: image galleries and feature loadings per component (config section
``gallery``; rule ``component_gallery``; ``phenoica gallery`` for one component).

For every method with meaningful coordinates (PCA, ICA) the components with the largest biology
share and the largest batch share (from the scores table, with their attribution label and ICA
stability) are shown

* for image sources: as the sites at the component's two extremes. The ``per_side`` sites of one
  extreme are drawn (seeded) from the ``tail * per_side`` most extreme wells of all batches pooled,
  never balanced per batch, so that a batch artefact shows as tiles of one batch. Each site is a
  colour composite of its channels, read read-only from the original image files listed in the
  plate manifests (``<results>/plates/<plate>/manifest.parquet``); every channel is scaled from
  its lower to its upper percentile over all tiles of the figure together (so a batch's gain stays
  visible) and given a colour (``channel_colors`` by name, else ``palette`` by position);
  the composite adds the coloured channels and clips at white. The shown sites are recorded in
  ``sites.tsv`` (:data:`SITE_COLUMNS`);
* for profile inputs (``source: profiles``): as the features with the largest absolute loadings,
  with signs (:func:`method_loadings`; for methods without a fixed linear map, e.g. TVN, the
  features' correlations with the component over all wells, :func:`feature_correlations`),
  recorded in ``loadings.tsv`` (:data:`LOADING_COLUMNS`).

An index figure (``index.png``: each component's batch share against its perturbation share,
coloured by label) names every component that has a figure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .errors import InputError
from .io.atomic import atomic_path
from .logs import get_logger

log = get_logger(__name__)

#: Columns of ``sites.tsv``: one row per shown site; ``side`` low | high, ``rank`` 1 = the most
#: extreme shown, ``value`` the well's coordinate on the component.
SITE_COLUMNS = ["method", "component", "side", "rank", "plate", "well", "site", "batch",
                "perturbation", "value"]
#: Columns of ``loadings.tsv`` (profile inputs): the top features of each shown component;
#: ``kind`` says what ``loading`` is: ``loading`` (:func:`method_loadings`) or ``correlation``
#: (:func:`feature_correlations`, for methods without a fixed linear map).
LOADING_COLUMNS = ["method", "component", "rank", "feature", "loading", "kind"]
#: Columns of ``components.tsv``: the shown components and why they were chosen.
COMPONENT_COLUMNS = ["method", "component", "label", "stability", "batch_share",
                     "perturbation_share", "chosen_for"]
SIDES = ("low", "high")
LABEL_NAMES = {-1.0: "technical", 0.0: "mixed", 1.0: "biological"}
LABEL_COLORS = {"technical": "#d62728", "mixed": "#9e9e9e", "biological": "#2ca02c",
                "unstable": "#9467bd"}


# --- choosing components ----------------------------------------------------------------------

def component_table(scores: pd.DataFrame | str | os.PathLike, method: str) -> pd.DataFrame:
    """Per component of ``method`` in the long scores table: ``label`` (technical / mixed /
    biological / unstable), ``stability`` (NaN for methods without ICA), ``batch_share``,
    ``perturbation_share``; indexed by component name, in the table's order."""
    source = str(scores) if isinstance(scores, (str, os.PathLike)) else "scores"
    table = (pd.read_csv(scores, sep="\t", keep_default_na=False, na_values=[""])
             if isinstance(scores, (str, os.PathLike)) else pd.DataFrame(scores))
    missing = [c for c in ("method", "component", "metric", "value") if c not in table.columns]
    if missing:
        raise InputError(source, f"scores table lacks column(s) {missing}")
    rows = table[(table["method"].astype(str) == method) & (table["component"].astype(str) != "all")]
    if rows.empty or "batch_share" not in set(rows["metric"]):
        raise InputError(source, f"no per-component attribution rows of method {method!r}")
    rows = rows.assign(component=rows["component"].astype(str),
                       value=pd.to_numeric(rows["value"], errors="coerce"))
    order = list(dict.fromkeys(rows["component"]))
    wide = rows.pivot_table(index="component", columns="metric", values="value", aggfunc="first",
                            dropna=False).reindex(order)
    out = pd.DataFrame(index=pd.Index(order, name="component"))
    out["batch_share"] = wide["batch_share"]
    out["perturbation_share"] = wide.get("perturbation_share", np.nan)
    out["stability"] = wide.get("stability", np.nan)
    codes = wide.get("attribution", pd.Series(np.nan, index=wide.index))
    # the long table codes unstable components as NaN
    out["label"] = [LABEL_NAMES.get(float(c), "unstable") for c in codes]
    return out


def choose_components(components: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """The ``top_n`` components with the largest perturbation share (``chosen_for`` biology)
    and the ``top_n`` with the largest batch share (batch; ``biology+batch`` when in both),
    biology first; columns :data:`COMPONENT_COLUMNS` without ``method``."""
    bio = components["perturbation_share"].fillna(-1).sort_values(ascending=False, kind="stable")
    batch = components["batch_share"].fillna(-1).sort_values(ascending=False, kind="stable")
    reasons: dict[str, list[str]] = {}
    for name in bio.index[:top_n]:
        reasons.setdefault(name, []).append("biology")
    for name in batch.index[:top_n]:
        reasons.setdefault(name, []).append("batch")
    chosen = components.loc[list(reasons)].copy()
    chosen.insert(0, "component", chosen.index)
    chosen["chosen_for"] = ["+".join(reasons[c]) for c in chosen.index]
    return chosen.reset_index(drop=True)[COMPONENT_COLUMNS[1:]]


# --- sites at the extremes --------------------------------------------------------------------

def read_manifests(paths: Sequence[str | os.PathLike], channels: Sequence[str]) -> pd.DataFrame:
    """The plate manifests, concatenated (with a ``manifest`` column naming each row's file)."""
    if not paths:
        raise InputError("gallery", "no plate manifests given (image galleries need them)")
    frames = []
    for path in paths:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read the plate manifest: {exc}") from exc
        needed = ["plate", "well", "site", *(f"path_{c}" for c in channels)]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise InputError(path, f"manifest lacks column(s) {missing} (channels {list(channels)})")
        frames.append(frame.assign(manifest=str(path)))
    out = pd.concat(frames, ignore_index=True)
    out["plate"] = out["plate"].astype(str)
    out["well"] = out["well"].astype(str)
    return out


def sites_by_well(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """``"<plate>:<well>"`` -> the row positions of the well's sites in ``manifest`` (in the
    manifest's order): built once per figure set, not per component."""
    keys = manifest["plate"].astype(str) + ":" + manifest["well"].astype(str)
    return keys.groupby(keys.to_numpy(), sort=False).indices


def extreme_sites(values: np.ndarray, obs: pd.DataFrame, manifest: pd.DataFrame, *, method: str,
                  component: str, per_side: int, tail: float, seed: int,
                  by_well: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The sites shown at the two extremes of one component (:data:`SITE_COLUMNS` plus
    ``site_id``, ``manifest`` and the ``path_<channel>`` columns).

    ``values``: the component's coordinate per well (rows of ``obs``, which has ``plate``,
    ``well``, ``batch``, ``perturbation``). Per side, ``per_side`` wells are drawn without
    replacement from the ``ceil(tail * per_side)`` most extreme wells that have imaged sites
    (all batches pooled), and one site per drawn well (a QC-passing one where the well has any);
    the draws are seeded by ``seed``, the component name and the side. Rank 1 = most extreme.
    ``by_well``: :func:`sites_by_well` of ``manifest`` when the caller has it already."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) != len(obs):
        raise InputError("gallery", f"{len(values)} values for {len(obs)} wells")
    keys = obs["plate"].astype(str).to_numpy() + ":" + obs["well"].astype(str).to_numpy()
    by_well = sites_by_well(manifest) if by_well is None else by_well
    imaged = pd.Index(keys).isin(list(by_well)) & np.isfinite(values)
    if not imaged.any():
        raise InputError("gallery", "no well of the post-processed data has a site in the plate "
                                    "manifests (plate and well columns do not match)")
    rows = []
    for side in SIDES:
        candidates = np.flatnonzero(imaged)
        order = candidates[np.argsort(values[candidates] * (1 if side == "low" else -1), kind="stable")]
        pool = order[:min(len(order), int(np.ceil(tail * per_side)))]
        rng = np.random.default_rng([int(seed), _name_seed(method), _name_seed(component),
                                     SIDES.index(side)])
        drawn = rng.choice(pool, size=min(per_side, len(pool)), replace=False)
        drawn = drawn[np.argsort(values[drawn] * (1 if side == "low" else -1), kind="stable")]
        for rank, i in enumerate(drawn, start=1):
            sites = manifest.iloc[by_well[keys[i]]]
            if "qc_pass" in sites.columns and sites["qc_pass"].astype(bool).any():
                sites = sites[sites["qc_pass"].astype(bool)]
            site = sites.iloc[int(rng.integers(len(sites)))]
            rows.append({"method": method, "component": component, "side": side, "rank": rank,
                         "plate": str(obs["plate"].iloc[i]), "well": str(obs["well"].iloc[i]),
                         "site": site["site"], "batch": str(obs["batch"].iloc[i]),
                         "perturbation": str(obs["perturbation"].iloc[i]),
                         "value": float(values[i]), "site_id": site.get("site_id", keys[i]),
                         "manifest": site["manifest"],
                         **{c: site[c] for c in site.index if str(c).startswith("path_")}})
    return pd.DataFrame(rows)


def _name_seed(name: str) -> int:
    """A stable integer for a name (Python's hash() is salted per process)."""
    import zlib

    return zlib.crc32(str(name).encode())


# --- composites -------------------------------------------------------------------------------

def channel_rgb(channels: Sequence[str], *, palette: Sequence[str],
                channel_colors: Mapping[str, str | None]) -> dict[str, tuple[str, tuple[float, float, float]]]:
    """The colour of each channel shown, as (the configured name, RGB): ``channel_colors[name]``
    when given (null = not shown), else ``palette[position]``. Unknown colour names are an
    InputError naming the key."""
    from matplotlib.colors import to_rgb

    unknown = sorted(set(channel_colors) - set(channels))
    if unknown:
        raise InputError("gallery.channel_colors", f"names channel(s) {unknown} not in channels "
                                                   f"{list(channels)}")
    out = {}
    for i, name in enumerate(channels):
        if name in channel_colors:
            colour, key = channel_colors[name], f"gallery.channel_colors.{name}"
        elif i < len(palette):
            colour, key = palette[i], f"gallery.palette[{i}]"
        else:
            raise InputError("gallery.palette", f"has {len(palette)} colours for {len(channels)} "
                                                f"channels; name a colour for {name!r} in "
                                                "gallery.channel_colors or extend the palette")
        if colour is None:
            continue
        try:
            out[name] = (str(colour), tuple(float(v) for v in to_rgb(colour)))
        except ValueError as exc:
            raise InputError(key, f"{colour!r} is not a colour (matplotlib name or #rrggbb)") from exc
    if not out:
        raise InputError("gallery.channel_colors", "leaves no channel to show")
    return out


def read_site(site: Mapping, channels: Sequence[str], crop: int | None) -> dict[str, np.ndarray]:
    """The channel images of one site (central ``crop`` x ``crop`` pixels, or whole), read-only.
    A missing file is an InputError naming it, the site and the manifest that lists it."""
    from .io.images import read_image

    out = {}
    for name in channels:
        path = str(site[f"path_{name}"])
        if not os.path.isfile(path):
            raise InputError(path, f"image file not found (channel {name} of site "
                                   f"{site.get('site_id', '?')}, listed in {site.get('manifest', '?')}; "
                                   "the gallery reads the original images through the manifests)")
        image = read_image(path).astype(np.float32)
        if crop is not None:
            h, w = image.shape
            top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
            image = image[top:top + crop, left:left + crop]
        out[name] = image
    return out


def channel_ranges(tiles: Sequence[Mapping[str, np.ndarray]], percentiles: Sequence[float],
                   max_pixels: int = 2_000_000) -> dict[str, tuple[float, float]]:
    """Per channel, the (low, high) percentiles of the pixels of all ``tiles`` together
    (a regular subsample of at most ``max_pixels`` pixels per channel)."""
    lo, hi = (float(p) for p in percentiles)
    if not lo < hi:
        raise InputError("gallery.percentiles", f"lower {lo} must be below upper {hi}")
    out = {}
    for name in tiles[0]:
        pixels = np.concatenate([t[name].ravel() for t in tiles])
        step = max(1, len(pixels) // max_pixels)
        low, high = np.percentile(pixels[::step], [lo, hi])
        out[name] = (float(low), float(high) if high > low else float(low) + 1.0)
    return out


def composite(tile: Mapping[str, np.ndarray], colours: Mapping[str, tuple[str, Sequence[float]]],
              ranges: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """An RGB float image in [0, 1]: each channel scaled to [0, 1] by its range, times its
    colour, added, clipped at 1."""
    shape = next(iter(tile.values())).shape
    rgb = np.zeros((*shape, 3), dtype=np.float32)
    for name, (_, colour) in colours.items():
        low, high = ranges[name]
        scaled = np.clip((tile[name] - low) / (high - low), 0.0, 1.0)
        rgb += scaled[..., None] * np.asarray(colour, dtype=np.float32)
    return np.clip(rgb, 0.0, 1.0)


def _title(method: str, row: Mapping) -> str:
    stability = row.get("stability")
    stab = "n/a" if stability is None or not np.isfinite(stability) else f"{stability:.2f}"
    return (f"{method} {row['component']}: {row['label']} (stability {stab})\nbatch share "
            f"{row['batch_share']:.2f}, perturbation share {row['perturbation_share']:.2f}; "
            f"top by {row['chosen_for']}")


def draw_site_gallery(sites: pd.DataFrame, out_png: str | os.PathLike, *, title: str,
                      channels: Sequence[str], colours: Mapping[str, tuple[str, Sequence[float]]],
                      percentiles: Sequence[float], crop: int | None) -> None:
    """One component's figure: a row of tiles per side (low, high) with plate, well, batch and
    perturbation under each tile; the channel-colour mapping in the footer."""
    from matplotlib.figure import Figure

    shown = [c for c in channels if c in colours]
    tiles = [read_site(row, shown, crop) for row in sites.to_dict("records")]
    ranges = channel_ranges(tiles, percentiles)
    per_side = int(sites.groupby("side").size().max())
    fig = Figure(figsize=(1.75 * per_side + 0.6, 5.4), layout="constrained")
    axes = fig.subplots(2, per_side, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for (row, side) in enumerate(SIDES):
        part = sites[sites["side"] == side]
        for col, (i, site) in enumerate(part.iterrows()):
            ax = axes[row, col]
            ax.imshow(composite(tiles[sites.index.get_loc(i)], colours, ranges), interpolation="nearest")
            ax.set_xlabel(f"{site['plate']} {site['well']} s{site['site']}\n{site['batch']} · "
                          f"{_short(site['perturbation'])}\nvalue {site['value']:+.2f}", fontsize=7)
        axes[row, 0].set_ylabel(f"{side} end", fontsize=9)
    legend = ", ".join(f"{c} {colours[c][0]}" for c in shown)
    lo, hi = percentiles
    fig.suptitle(title, fontsize=9)
    fig.supxlabel(f"channels: {legend}; each scaled from percentile {lo:g} to {hi:g} of all tiles "
                  "of this figure", fontsize=7)
    _save(fig, out_png)


def _short(text: str, width: int = 18) -> str:
    text = str(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def _save(fig, out_png: str | os.PathLike) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


# --- loadings (profile inputs) ----------------------------------------------------------------

def method_loadings(state: Mapping) -> np.ndarray | None:
    """Loadings (features x components) of a fitted method from its stored state
    (``uns["method"]["state"]``); None for methods without a fixed linear map.

    The loading of feature j on component c is the covariance, on the fitting set, of feature j
    (in the units the method works in: standardised when it standardises, else raw) with the
    component, divided by the component's standard deviation: the change of the feature, per
    standard deviation of the component, that the component accounts for. On standardised
    features it is the correlation of the feature with the component.

    Derived from the method's linear map (:func:`phenoica.tl.linear_map`) and the covariance its
    PCA stores: for a map ``W`` within the kept principal subspace, Cov(x, x W) = C diag(eig)
    C^T W (exact there, since C holds eigenvectors of the covariance). ``centerscale`` counts
    as linear here: its PCA scores are only shifted and scaled per batch and component, which
    leaves this pattern unchanged."""
    from .postprocess.methods import method_from_state
    from .tl import LINEAR_METHODS, linear_map

    if str(state.get("name", "")) not in (*LINEAR_METHODS, "centerscale"):
        return None
    model = method_from_state(dict(state))
    white = model.whitening
    mapping = linear_map(model)
    W = mapping[1] if mapping is not None else white.projection(whiten=False)
    P = white.components.T @ (W * white.feature_scale[:, None])  # in the principal coordinates
    cov = white.components @ (white.eigenvalues[:, None] * P)
    var = np.einsum("pk,p,pk->k", P, white.eigenvalues, P)
    return cov / np.sqrt(np.clip(var, np.finfo(np.float64).tiny, None))


def feature_correlations(X: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Pearson correlation (features x components) of every feature with every component over
    the wells given: what a method without a fixed linear map (TVN, ComBat, Harmony: per-batch
    corrections) shows instead of loadings. Unlike loadings it also picks up the variation the
    method removed (e.g. between batches); constant features get 0."""
    X = np.asarray(X, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.float64)
    Xc, Zc = X - X.mean(axis=0), Z - Z.mean(axis=0)
    xs, zs = np.linalg.norm(Xc, axis=0), np.linalg.norm(Zc, axis=0)
    return (Xc.T @ Zc) / np.outer(np.where(xs > 0, xs, np.inf), np.where(zs > 0, zs, np.inf))


def top_loadings(loadings: np.ndarray, features: Sequence[str], components: Sequence[str],
                 chosen: Sequence[str], *, method: str, top_features: int,
                 kind: str = "loading") -> pd.DataFrame:
    """The ``top_features`` features with the largest absolute loading on each ``chosen``
    component (:data:`LOADING_COLUMNS`), largest first."""
    loadings = np.asarray(loadings, dtype=np.float64)
    if loadings.shape != (len(features), len(components)):
        raise InputError("gallery", f"loadings of shape {loadings.shape} for {len(features)} "
                                    f"features and {len(components)} components")
    index = {c: j for j, c in enumerate(components)}
    rows = []
    for comp in chosen:
        column = loadings[:, index[comp]]
        order = np.argsort(-np.abs(column), kind="stable")[:top_features]
        rows += [{"method": method, "component": comp, "rank": r, "feature": str(features[i]),
                  "loading": float(column[i]), "kind": kind} for r, i in enumerate(order, start=1)]
    return pd.DataFrame(rows, columns=LOADING_COLUMNS)


def draw_loadings(table: pd.DataFrame, out_png: str | os.PathLike, *, title: str) -> None:
    """Horizontal bars of one component's top loadings (or correlations), each labelled
    ``feature +0.41``."""
    from matplotlib.figure import Figure

    table = table.sort_values("rank", ascending=False)
    fig = Figure(figsize=(7.5, 0.32 * len(table) + 1.3), layout="constrained")
    ax = fig.subplots()
    colours = np.where(table["loading"] >= 0, "#c0392b", "#2e6da4")
    ax.barh(range(len(table)), table["loading"], color=colours)
    ax.set_yticks(range(len(table)), [f"{f} {v:+.2f}" for f, v in zip(table["feature"], table["loading"])],
                  fontsize=7)
    ax.axvline(0, color="black", lw=0.6)
    if (table["kind"] == "correlation").all():
        ax.set_xlabel("correlation of the feature with the component over all wells\n(no fixed "
                      "linear map: the method corrects each batch on its own)", fontsize=7)
    else:
        ax.set_xlabel("loading: change of the feature per SD of the component\n(the correlation "
                      "when the method standardises the features)", fontsize=7)
    fig.suptitle(title, fontsize=8)
    _save(fig, out_png)


# --- the index figure -------------------------------------------------------------------------

def draw_index(components: pd.DataFrame, chosen: pd.DataFrame, out_png: str | os.PathLike, *,
               method: str) -> None:
    """Attribution map: every component's batch share (x) against its perturbation share (y),
    coloured by label, the components with a figure named."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ax = fig.subplots()
    colours = [LABEL_COLORS.get(label, "#000000") for label in components["label"]]
    ax.scatter(components["batch_share"], components["perturbation_share"], c=colours, s=22,
               alpha=0.75, edgecolors="none")
    named = set(chosen["component"])
    for name, row in components.iterrows():
        if name in named:
            ax.annotate(str(name), (row["batch_share"], row["perturbation_share"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    top = float(np.nanmax([components["batch_share"].max(), components["perturbation_share"].max(), 0.1]))
    ax.plot([0, top], [0, top], color="#cccccc", lw=0.8, zorder=0)
    ax.set_xlabel("batch share (variance explained by batch among controls)", fontsize=8)
    ax.set_ylabel("perturbation share (within batch)", fontsize=8)
    ax.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in LABEL_COLORS.items()
                       if k in set(components["label"])], fontsize=7, loc="upper right")
    ax.set_title(f"{method}: attribution map; named: the {len(named)} components with a gallery "
                 "figure", fontsize=8)
    _save(fig, out_png)


# --- rule and notebook functions --------------------------------------------------------------

def _read_wells(wells_path: str | os.PathLike, with_X: bool = False):
    """(feature names, wells index, X or None) of the wells AnnData the method was fitted on."""
    import anndata as ad

    try:
        wells = ad.read_h5ad(wells_path, backed="r")
    except (OSError, KeyError) as exc:
        raise InputError(wells_path, f"cannot read as AnnData: {exc}") from exc
    try:
        X = np.asarray(wells.X[:], dtype=np.float64) if with_X else None
        return [str(v) for v in wells.var_names], [str(v) for v in wells.obs_names], X
    finally:
        wells.file.close()


def figure_sources(adata, *, method: str, manifest: pd.DataFrame | None,
                   wells: str | os.PathLike | None) -> dict:
    """What every component figure of one method reads, read and computed once per method:
    ``by_well`` (:func:`sites_by_well`) with ``manifest`` (image sources), else the loadings
    over the features of the wells AnnData ``wells``: ``loadings`` (features x components),
    ``features`` and ``kind`` (:data:`LOADING_COLUMNS`)."""
    if manifest is not None:
        return {"manifest": manifest, "by_well": sites_by_well(manifest)}
    if wells is None:
        raise InputError(method, "a loadings figure needs the wells AnnData (its features)")
    loadings, kind = method_loadings(dict(adata.uns["method"]["state"])), "loading"
    features, names, X = _read_wells(wells, with_X=loadings is None)
    if loadings is None:
        if names != [str(v) for v in adata.obs_names]:
            raise InputError(wells, f"its wells are not those of the {method!r} output")
        loadings, kind = feature_correlations(X, np.asarray(adata.X)), "correlation"
    return {"loadings": loadings, "features": features, "kind": kind}


def _check_component(components: pd.DataFrame, component: str, method: str) -> None:
    if component not in components.index:
        raise InputError(component, f"no component of that name in {method!r}; known: "
                                    f"{list(components.index)}")


def component_figure(adata, components: pd.DataFrame, component: str, out_png: str | os.PathLike,
                     *, method: str, channels: Sequence[str], seed: int, sources: Mapping,
                     per_side: int, tail: float, palette: Sequence[str],
                     channel_colors: Mapping[str, str | None], percentiles: Sequence[float],
                     crop: int | None, top_features: int) -> pd.DataFrame:
    """Draw one component's figure (sites when ``sources`` (:func:`figure_sources`) has a
    manifest, else the loadings) and return its recorded rows (sites or loadings)."""
    _check_component(components, component, method)
    row = components.loc[component].to_dict()
    row.setdefault("chosen_for", "request")
    title = _title(method, {"component": component, **row})
    if "manifest" in sources:
        j = list(adata.var_names).index(component)
        sites = extreme_sites(np.asarray(adata.X)[:, j], adata.obs, sources["manifest"], method=method,
                              component=component, per_side=per_side, tail=tail, seed=seed,
                              by_well=sources["by_well"])
        colours = channel_rgb(channels, palette=palette, channel_colors=channel_colors)
        draw_site_gallery(sites, out_png, title=title, channels=channels, colours=colours,
                          percentiles=percentiles, crop=crop)
        return sites[SITE_COLUMNS]
    table = top_loadings(sources["loadings"], sources["features"], list(adata.var_names), [component],
                         method=method, top_features=top_features, kind=sources["kind"])
    draw_loadings(table, out_png, title=title)
    return table


def run_component_gallery(postprocessed_path: str, scores_tsv: str, out_dir: str, method: str,
                          channels: Sequence[str], seed: int,
                          manifest_paths: Sequence[str] = (), wells_path: str | None = None, *,
                          top_n: int, per_side: int, tail: float, palette: Sequence[str],
                          channel_colors: Mapping[str, str | None], percentiles: Sequence[float],
                          crop: int | None, top_features: int) -> None:
    """Rule function: the galleries of one method into the folder ``out_dir``.

    With ``manifest_paths`` (image sources): ``<component>.png`` site galleries and
    ``sites.tsv``; else (profiles, ``wells_path`` naming the features): ``<component>.png``
    loading bars and ``loadings.tsv``. Both: ``index.png`` (attribution map) and
    ``components.tsv`` (the shown components, their label, stability, shares and why chosen).
    ``params.json`` records the seed, the settings, the inputs and the phenoica version.
    The keyword-only arguments are the ``gallery`` config section (config/README.md)."""
    from .io import read_h5ad

    adata = read_h5ad(postprocessed_path)
    components = component_table(scores_tsv, method)
    if list(components.index) != [str(v) for v in adata.var_names]:
        raise InputError(scores_tsv, f"its components of {method!r} are not those of "
                                     f"{postprocessed_path}")
    chosen = choose_components(components, top_n)
    manifest = read_manifests(manifest_paths, channels) if manifest_paths else None
    sources = figure_sources(adata, method=method, manifest=manifest, wells=wells_path)
    records = []
    with atomic_path(out_dir, is_dir=True) as tmp:
        tmp = Path(tmp)
        settings = dict(per_side=per_side, tail=tail, palette=palette, channel_colors=channel_colors,
                        percentiles=percentiles, crop=crop, top_features=top_features)
        for row in chosen.to_dict("records"):
            table = components.assign(chosen_for=row["chosen_for"])
            records.append(component_figure(adata, table, row["component"],
                                            tmp / f"{row['component']}.png", method=method,
                                            channels=channels, seed=seed, sources=sources,
                                            **settings))
        draw_index(components, chosen, tmp / "index.png", method=method)
        chosen.insert(0, "method", method)
        chosen.to_csv(tmp / "components.tsv", sep="\t", index=False)
        name, columns = ("sites.tsv", SITE_COLUMNS) if manifest is not None else ("loadings.tsv",
                                                                                    LOADING_COLUMNS)
        pd.concat(records, ignore_index=True).reindex(columns=columns).to_csv(tmp / name, sep="\t",
                                                                             index=False)
        record = {"method": method, "seed": int(seed), "channels": list(channels),
                  "top_n": int(top_n), **settings, "inputs": [str(postprocessed_path), str(scores_tsv),
                                                             *map(str, manifest_paths),
                                                             *([str(wells_path)] if wells_path else [])],
                  "phenoica": __version__}
        (tmp / "params.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    log.info("%s: galleries of %d components in %s", method, len(chosen), out_dir)


def component_gallery(config: Mapping | str | os.PathLike, method: str, component: str,
                      out_png: str | os.PathLike, **overrides) -> pd.DataFrame:
    """One component's gallery from a finished run's results files, for a notebook or the
    ``phenoica gallery`` command: the figure at ``out_png`` and its recorded sites (image
    sources) or loadings (profiles) as a TSV beside it (``<out_png stem>.tsv``), also returned.

    ``config``: the run's config (a mapping or a YAML file; defaults filled from the schema); it
    names the results folder, the model, the channels, the seed and the ``gallery`` section,
    whose keys ``overrides`` replace (e.g. ``per_side=8``; ``seed`` replaces the global seed).
    Reads ``<results>/postprocess/<model>/<method>.h5ad``, ``<results>/scores/<model>/<method>.tsv``
    and the plate manifests ``<results>/plates/*/manifest.parquet`` (or, for ``source: profiles``,
    the features of ``<results>/embeddings/<model>/wells.h5ad``); image paths in the manifests
    are relative to the project folder the workflow ran in."""
    import copy

    from .config import load_config, section_arguments, validate_config
    from .io import read_h5ad

    config = (load_config(config) if isinstance(config, (str, os.PathLike))
              else validate_config(copy.deepcopy(dict(config))))
    settings = {**section_arguments("gallery", config["gallery"]), **overrides}
    seed = int(settings.pop("seed", config["seed"]))
    settings.pop("top_n", None)
    results, model = Path(config["results"]), str(config["model"]["id"])
    post = results / "postprocess" / model / f"{method}.h5ad"
    scores = results / "scores" / model / f"{method}.tsv"
    for path in (post, scores):
        if not path.is_file():
            raise InputError(path, f"not found: run the workflow for method {method!r} first "
                                   "(snakemake --cores N), or check config keys results, model.id "
                                   "and postprocess.methods")
    adata = read_h5ad(post)
    components = component_table(scores, method)
    _check_component(components, component, method)
    channels = [str(c["name"]) for c in config["channels"]]
    manifest, wells = None, None
    if config["source"] == "profiles":
        wells = results / "embeddings" / model / "wells.h5ad"
    else:
        paths = sorted(str(p) for p in results.glob("plates/*/manifest.parquet"))
        if not paths:
            raise InputError(results / "plates", "holds no plate manifest (*/manifest.parquet)")
        manifest = read_manifests(paths, channels)
    sources = figure_sources(adata, method=method, manifest=manifest, wells=wells)
    table = component_figure(adata, components, component, out_png, method=method,
                             channels=channels, seed=seed, sources=sources, **settings)
    tsv = Path(out_png).with_suffix(".tsv")
    table.to_csv(tsv, sep="\t", index=False)
    log.info("wrote %s and %s", out_png, tsv)
    return table

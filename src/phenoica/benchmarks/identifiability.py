"""Identifiability in the workflow: cross-seed alignment per layer and decoder isometry.

Rule-level functions::

    identifiability_alignment(embeddings, seeds, out_tsv, out_summary, out_png, **settings)
        per-seed embeddings of one shared probe set (AnnData, obsm["X_layer<k>"])
        -> results/identifiability/alignment.tsv          (layer, seed_a, seed_b, map, k, metric, value)
        -> results/identifiability/alignment_summary.tsv  (layer, k, map, metric, value)
    decoder_isometry(checkpoints, weight_decays, seeds, embeddings, manifests, channels, out_tsv,
                     out_png, **settings)
        MAE checkpoints of a weight-decay x seed sweep, their probe embeddings, probe images
        -> results/identifiability/isometry.tsv   (weight_decay, seed, bilipschitz_L, ...)

``settings`` are the config's ``identifiability`` keys, the keyword-only arguments of
:func:`alignment_table` and :func:`summarize_alignment` (``ALIGNMENT_KEYS``) or of
:func:`isometry_table` (``ISOMETRY_KEYS``); their defaults live in the workflow's schema only
(``phenoica.config.schema_defaults("identifiability")``).

Protocol (alignment): the probe rows common to every file are split once, seeded, into fitting
and test rows (``fit_fraction``). For every layer, every subspace dimension k of the sweep and
every pair of seeds (a < b), both representations are projected on their own top-k principal
axes (fitted on the fitting rows) and the maps of
``phenoica.metrics.identifiability.alignment_errors`` from seed a's projection to seed b's are
fitted on the fitting rows and scored on the test rows: every map class sees the same input and
aims at the same target, so the ICA error no longer includes what the truncation to k
components leaves out. Errors are relative to the latent diameter of seed b's projection on the
test rows. Rows with ``seed_a == seed_b`` describe one seed's representation: its ICA
``stability`` at k (chance-corrected split-half reproducibility of its ICA components,
``phenoica.metrics.identifiability.ica_stability``).

The sweep (``dims``; null = 2, 3, 4, 6, 8, 12, ... up to min(rank, n_fit / 5)) shows how the
comparison depends on k. The headline k per layer (``k: stable``) is the largest k of the sweep
whose every ICA component is reproducible (median stability over the seeds >=
``stability_threshold``): beyond it ICA unmixes near-Gaussian directions that no run can reproduce and the
ICA map then matches arbitrary directions. A selected k below 5 is logged as a warning and
flagged (``k_below_5``): few components make every map class look alike.

Summary (:func:`summarize_alignment`): errors averaged over the seed pairs, with their range, and
the ICA efficiency computed from these pair-averaged errors, (perm - ica) / (perm - rigid), as
the paper's figures are ratios of mean errors (an average of per-pair ratios is dominated by pairs
where permutation and rigid nearly tie). The linear map is ridge-stabilised by 5-fold CV
(``linear_ridge: cv``; 0 = plain least squares), since probe sets often have fewer fitting rows
than dimensions.

Protocol (isometry): each decoder's bi-Lipschitz constant 1 + L is estimated from distance
ratios ||g(z) - g(z')|| / ||z - z'|| on pairs of probe latents z (the final-layer token
sequence of a probe crop, all tokens visible) and the scale-free L = sqrt(max / min ratio) - 1
over the central 98 % of ratios; ``rigid_bound`` = sqrt(2 L + L^2) is the paper's bound. The
rigid alignment error of each checkpoint is the mean over the other seeds trained with the
same weight decay (test rows, default layer, every dimension: the rigid map needs no
truncation).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..config import section_values
from ..errors import ConfigError, InputError
from ..io import atomic_path, read_table, write_tsv
from ..logs import get_logger, progress
from ..metrics.identifiability import (
    MAP_CLASSES,
    alignment_errors,
    decoder_bilipschitz,
    fit_whitened_ica,
    ica_efficiency,
    ica_stability,
    principal_axes,
    split_rows,
    stable_k,
)
from .rule_keys import ALIGNMENT_KEYS, ISOMETRY_KEYS, check_keys

log = get_logger(__name__)

ALIGNMENT_COLUMNS: tuple[str, ...] = ("layer", "seed_a", "seed_b", "map", "k", "metric", "value")
SUMMARY_COLUMNS: tuple[str, ...] = ("layer", "k", "map", "metric", "value")
ISOMETRY_COLUMNS: tuple[str, ...] = ("weight_decay", "seed", "bilipschitz_L", "rigid_bound", "ratio_median",
                                     "ratio_min", "ratio_max", "rigid_error", "rigid_sup_error", "n_probe")
#: Below this many components the comparison of map classes says little (warning + flag).
FEW_COMPONENTS = 5
_LAYER_KEY = re.compile(r"^X_layer(\d+)$")
_K_STEPS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)

#: The paper's cross-run alignment errors (mean L2 error / latent diameter), for reporting only.
PAPER_ALIGNMENT: dict[str, dict[str, float]] = {
    "Pythia-160M seed 0 vs 1": {"permutation": 0.219, "rigid": 0.150, "linear": 0.131, "ica": 0.202},
    "MAE (two ViT MAEs)": {"permutation": 0.197, "rigid": 0.109, "linear": 0.036, "ica": 0.145},
    "CheXpert MAE small vs base": {"permutation": 0.218, "rigid": 0.104, "linear": 0.048, "ica": 0.175},
    "ResNet-18 two runs": {"permutation": 0.382, "rigid": 0.206, "linear": 0.175, "ica": 0.312},
}


# --------------------------------------------------------------------------------------------
# reading probe embeddings
# --------------------------------------------------------------------------------------------
def layer_keys(adata: ad.AnnData) -> dict[int, str]:
    """Block number -> obsm key for every ``X_layer<k>``."""
    return {int(m.group(1)): key for key in adata.obsm if (m := _LAYER_KEY.match(key))}


def read_probe_embeddings(paths: Sequence[str | os.PathLike]) -> tuple[list[ad.AnnData], pd.Index]:
    """Read per-seed embeddings and the probe rows they share (in the first file's order)."""
    adatas = []
    for path in paths:
        try:
            adatas.append(ad.read_h5ad(path))
        except (OSError, KeyError, ValueError) as err:
            raise InputError(path, f"cannot read embeddings: {err}") from err
    common = adatas[0].obs_names
    for path, adata in zip(paths, adatas):
        if adata.obs_names.has_duplicates:
            raise InputError(path, "obs names (probe identifiers) are not unique")
        common = common[common.isin(adata.obs_names)]
    for path, adata in zip(paths, adatas):
        if len(common) < adata.n_obs:
            log.warning("%s: %d of %d probe rows are not in every file and are left out", path,
                        adata.n_obs - len(common), adata.n_obs)
    if len(common) < 10:
        raise InputError(paths[0], f"the embeddings share only {len(common)} probe rows (need >= 10): "
                                   "embed the same probe set with every seed")
    return adatas, common


def _representation(adata: ad.AnnData, layer: int | None, rows: pd.Index, source: str | os.PathLike
                    ) -> np.ndarray:
    if layer is None:
        matrix = adata.X
    else:
        key = f"X_layer{layer}"
        if key not in adata.obsm:
            raise InputError(source, f"no obsm[{key!r}]; layers present: {sorted(layer_keys(adata))}")
        matrix = adata.obsm[key]
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    out = matrix[adata.obs_names.get_indexer(rows)].astype(np.float64)
    if not np.isfinite(out).all():
        raise InputError(source, f"non-finite values in layer {layer if layer is not None else 'X'}")
    return out


def k_grid(dims: Sequence[int] | None, k: int | str, *, rank: int, n_fit: int) -> list[int]:
    """The subspace dimensions of the sweep for representations of numerical rank ``rank``
    (the smallest over the seeds) fitted on ``n_fit`` rows; see ``identifiability.dims``."""
    if rank < 2:
        raise ValueError(f"the representations have rank {rank}: nothing to align")
    cap = min(rank, max(2, n_fit // 5))
    if dims is None:
        ks = {d for d in _K_STEPS if d <= cap} | {cap}
    else:
        ks = {int(d) for d in dims if int(d) <= rank}
        dropped = sorted(int(d) for d in dims if int(d) > rank)
        if dropped:
            log.warning("identifiability.dims: %s exceed the representations' rank %d and are left out",
                        dropped, rank)
    if k != "stable":
        if int(k) > rank:
            log.warning("identifiability.k: %d exceeds the representations' rank %d; using k = %d", k, rank, rank)
        ks.add(min(int(k), rank))
    big = sorted(d for d in ks if d > n_fit // 5)
    if big:
        log.warning("k = %s above n_fit / 5 = %d: ICA and the linear map then fit sampling noise", big, n_fit // 5)
    if not ks:
        raise ConfigError(f"identifiability.dims: no dimension <= the representations' rank {rank} "
                          f"in {list(dims or [])}")
    return sorted(ks)


# --------------------------------------------------------------------------------------------
# alignment
# --------------------------------------------------------------------------------------------
def alignment_table(embeddings: Sequence[str | os.PathLike], seeds: Sequence[int], *, layers: Sequence[int] | None,
                    maps: Sequence[str], fit_fraction: float, split_seed: int, diameter: str,
                    dims: Sequence[int] | None, k: int | str, stability_seeds: int, linear_ridge: float | str,
                    ica_seed: int, ica_backend: str, max_rows: int | None) -> pd.DataFrame:
    """The long alignment table (``ALIGNMENT_COLUMNS``) for per-seed probe embeddings.

    Per layer, k of the sweep (:func:`k_grid`) and seed pair: the rows of
    ``phenoica.metrics.identifiability.alignment_errors`` with every map in the shared top-k
    subspace; per layer, k and seed (``seed_a == seed_b``, ``map = ica``): ``stability`` (the
    chance-corrected split-half index over ``stability_seeds`` splits) and ``stability_raw``.
    The keyword arguments are the config's ``identifiability`` keys of the same names.
    """
    if len(embeddings) != len(seeds) or len(embeddings) < 2:
        raise ConfigError(f"identifiability: need >= 2 embeddings and one seed each, got "
                          f"{len(embeddings)} files and seeds {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"identifiability.seeds: duplicate seeds {list(seeds)}")
    unknown = sorted(set(maps) - set(MAP_CLASSES))
    if unknown:
        raise ConfigError(f"identifiability.maps: unknown map classes {unknown}; known: {MAP_CLASSES}")
    adatas, rows = read_probe_embeddings(embeddings)
    if max_rows is not None and len(rows) > max_rows:
        keep = np.sort(np.random.default_rng(split_seed).choice(len(rows), max_rows, replace=False))
        rows = rows[keep]
    available = [set(layer_keys(a)) for a in adatas]
    common_layers = sorted(set.intersection(*available))
    layers = list(layers) if layers is not None else common_layers
    if not layers:
        raise InputError(embeddings[0], "no obsm['X_layer<k>'] common to all embeddings")
    for layer in layers:
        for path, have in zip(embeddings, available):
            if layer not in have:
                raise InputError(path, f"no obsm['X_layer{layer}']; layers present: {sorted(have)}")
    fit = split_rows(len(rows), fit_fraction=float(fit_fraction), seed=int(split_seed))
    order = [int(i) for i in np.argsort(seeds, kind="stable")]
    pairs = list(itertools.combinations(order, 2))
    split_seeds = [int(ica_seed) + 1 + j for j in range(int(stability_seeds))]
    tables = []
    for layer in progress(layers, desc="alignment (layers)"):
        reps = [_representation(a, layer, rows, path) for a, path in zip(adatas, embeddings)]
        axes = [principal_axes(r[fit]) for r in reps]  # one SVD per seed and layer, for every k
        rank = min(ax.rank for ax in axes)
        for kk in k_grid(dims, k, rank=rank, n_fit=int(fit.sum())):
            subspaces = [ax.subspace(kk) for ax in axes]
            projected = [sub.project(r[fit]) for sub, r in zip(subspaces, reps)]
            fits = [fit_whitened_ica(z, n_components=kk, seed=int(ica_seed), backend=ica_backend)
                    if "ica" in maps else None for z in projected]
            for i in order:
                stability, raw = ica_stability(projected[i], k=kk, seeds=split_seeds, backend=ica_backend)
                tables.append(pd.DataFrame({"layer": layer, "seed_a": int(seeds[i]), "seed_b": int(seeds[i]),
                                            "map": "ica", "k": kk, "metric": ["stability", "stability_raw"],
                                            "value": [stability, raw]}))
            errors = []
            for a, b in pairs:
                t = alignment_errors(reps[a][fit], reps[b][fit], reps[a][~fit], reps[b][~fit], maps=tuple(maps), k=kk,
                                     diameter=diameter, seed=int(ica_seed), ica_backend=ica_backend,
                                     linear_ridge=linear_ridge,
                                     ica_fits=(fits[a], fits[b]) if "ica" in maps else None,
                                     subspaces=(subspaces[a], subspaces[b]))
                t.insert(0, "k", kk)
                t.insert(0, "seed_b", int(seeds[b]))
                t.insert(0, "seed_a", int(seeds[a]))
                t.insert(0, "layer", int(layer))
                errors.append(t[t["metric"] == "mean_error"])
                tables.append(t)
            means = pd.concat(errors).groupby("map", sort=False)["value"].mean()
            log.info("layer %d, k = %d: mean error over seed pairs: %s", layer, kk,
                     ", ".join(f"{m} {v:.3f}" for m, v in means.items()))
    table = pd.concat(tables, ignore_index=True)[list(ALIGNMENT_COLUMNS)]
    return table.astype({"layer": int, "seed_a": int, "seed_b": int, "k": int})


def summarize_alignment(table: pd.DataFrame, *, k: int | str, stability_threshold: float) -> pd.DataFrame:
    """Per layer and k: the seed-pair means (and ``*_min``/``*_max`` ranges of ``mean_error``)
    of every per-pair metric, the ICA efficiency from the pair-averaged mean errors, the median
    ICA stability over the seeds; per layer, the selected k (``map = all``: ``selected`` = 1,
    ``stable`` = whether it reaches ``stability_threshold``, ``k_below_5`` = 1 when k < 5).

    ``k``: ``"stable"`` selects per layer the largest k whose median stability reaches
    ``stability_threshold`` (the smallest k of the sweep, with a warning, when none does); an
    integer selects the largest k of the sweep not above it. Columns ``SUMMARY_COLUMNS``.
    """
    missing = set(ALIGNMENT_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"not an alignment table: missing columns {sorted(missing)}")
    pairs = table[table["seed_a"] != table["seed_b"]]
    per_seed = table[table["seed_a"] == table["seed_b"]]
    keys = ["layer", "k", "map", "metric"]
    out = [pairs.groupby(keys, sort=True)["value"].mean().reset_index()]
    err = pairs[pairs["metric"] == "mean_error"].groupby(keys)["value"]
    for stat in ("min", "max"):
        part = err.agg(stat).reset_index()
        part["metric"] = f"mean_error_{stat}"
        out.append(part)
    out.append(per_seed.groupby(keys)["value"].median().reset_index())
    summary = pd.concat(out, ignore_index=True)
    mean_error = summary[summary["metric"] == "mean_error"].pivot_table(index=["layer", "k"], columns="map",
                                                                      values="value")
    extra = []
    if {"permutation", "rigid", "ica"} <= set(mean_error.columns):
        for (layer, kk), row in mean_error.iterrows():
            extra.append((layer, kk, "ica", "efficiency", ica_efficiency(row["permutation"], row["rigid"], row["ica"])))
    stability = summary[summary["metric"] == "stability"]
    for layer in sorted(summary["layer"].unique()):
        sweep = sorted(summary.loc[summary["layer"] == layer, "k"].unique())
        per_k = {int(kk): float(v) for kk, v in stability[stability["layer"] == layer].set_index("k")["value"].items()}
        chosen = _select_k(layer, sweep, per_k, k, stability_threshold)
        stable = per_k.get(chosen, np.nan) >= stability_threshold
        extra += [(layer, chosen, "all", "selected", 1.0), (layer, chosen, "all", "stable", float(stable)),
                  (layer, chosen, "all", "k_below_5", float(chosen < FEW_COMPONENTS))]
        if chosen < FEW_COMPONENTS:
            log.warning("layer %d: the comparison rests on k = %d components (< %d): with so few, every map "
                        "class aligns about equally well; read the sweep over k too", layer, chosen, FEW_COMPONENTS)
    summary = pd.concat([summary, pd.DataFrame(extra, columns=keys + ["value"])], ignore_index=True)
    return summary.sort_values(keys, kind="stable").reset_index(drop=True)[list(SUMMARY_COLUMNS)]


def _select_k(layer: int, sweep: list[int], stability: dict[int, float], k: int | str, threshold: float) -> int:
    if k != "stable":
        below = [kk for kk in sweep if kk <= int(k)]
        return int(max(below) if below else min(sweep))
    chosen = stable_k(stability, threshold)
    if chosen is None:
        log.warning("layer %d: no k of the sweep %s has reproducible ICA components (stability >= %g); "
                    "reporting the smallest", layer, sweep, threshold)
        return int(min(sweep))
    return int(chosen)


def selected_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows at each layer's selected k: one row per layer, columns ``layer``, ``k``,
    the mean error of each map class, ``efficiency``, ``stability``, ``k_below_5``."""
    chosen = summary[summary["metric"] == "selected"][["layer", "k"]]
    at = summary.merge(chosen, on=["layer", "k"])
    wide = at[at["metric"] == "mean_error"].pivot_table(index=["layer", "k"], columns="map", values="value")
    for metric in ("efficiency", "stability", "k_below_5"):
        wide[metric] = at[at["metric"] == metric].set_index(["layer", "k"])["value"]
    return wide.reset_index()


def identifiability_alignment(embeddings: Sequence[str | os.PathLike], seeds: Sequence[int],
                              out_tsv: str | os.PathLike, out_summary: str | os.PathLike,
                              out_png: str | os.PathLike | None = None, **settings: Any) -> None:
    """Rule function: write ``alignment.tsv``, ``alignment_summary.tsv`` (and the figure).
    ``settings``: the keyword arguments of :func:`alignment_table` and :func:`summarize_alignment`
    (``ALIGNMENT_KEYS``)."""
    _check_keys(settings, ALIGNMENT_KEYS)
    table = alignment_table(embeddings, seeds, **section_values(alignment_table, settings))
    write_tsv(table, out_tsv)
    summary = summarize_alignment(table, **section_values(summarize_alignment, settings))
    write_tsv(summary, out_summary)
    if out_png is not None:
        plot_alignment(summary, out_png, stability_threshold=float(settings["stability_threshold"]))


def plot_alignment(summary: pd.DataFrame | str | os.PathLike, out_png: str | os.PathLike, *,
                   stability_threshold: float | None = None) -> None:
    """Three panels from :func:`summarize_alignment`: mean error per map class at each layer's
    selected k (bars = range over seed pairs); ICA efficiency (from pair-averaged errors) against
    k, one line per layer, the selected k circled; ICA stability against k, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(summary, pd.DataFrame):
        summary = read_table(summary)
    chosen = summary[summary["metric"] == "selected"][["layer", "k"]]
    at = summary.merge(chosen, on=["layer", "k"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in MAP_CLASSES:
        sub = at[at["map"] == name].pivot_table(index="layer", columns="metric", values="value")
        if sub.empty or "mean_error" not in sub:
            continue
        axes[0].errorbar(sub.index, sub["mean_error"], yerr=[sub["mean_error"] - sub["mean_error_min"],
                                                             sub["mean_error_max"] - sub["mean_error"]],
                         marker="o", capsize=2, label=name)
    ks = chosen.set_index("layer")["k"]
    axes[0].set_xticks(list(ks.index), [f"{layer}\nk={k}" for layer, k in ks.items()], fontsize=7)
    axes[0].set_xlabel("layer (block), selected k")
    axes[0].set_title("mean L2 error / diameter")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    for ax, metric, title in ((axes[1], "efficiency", "ICA efficiency (pair-averaged errors)"),
                              (axes[2], "stability", "ICA stability (split halves)")):
        sub = summary[(summary["map"] == "ica") & (summary["metric"] == metric)]
        for i, (layer, part) in enumerate(sub.groupby("layer")):
            ax.plot(part["k"], part["value"], marker=".", color=f"C{i % 10}", label=f"layer {layer}")
            pick = part[part["k"] == ks.get(layer)]
            ax.scatter(pick["k"], pick["value"], s=80, facecolors="none", edgecolors=f"C{i % 10}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("subspace dimension k")
        ax.set_title(title)
    for value in (0.0, 1.0):
        axes[1].axhline(value, color="grey", lw=0.8)
    if stability_threshold is not None:
        axes[2].axhline(stability_threshold, color="grey", lw=0.8, ls="--")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, out_png)


# --------------------------------------------------------------------------------------------
# decoder isometry of MAE checkpoints
# --------------------------------------------------------------------------------------------
def probe_crops(manifests: Sequence[str | os.PathLike], channels: Sequence[str], *, crop: int,
                normalization: str, max_crops: int = 256, seed: int = 0) -> np.ndarray:
    """Up to ``max_crops`` crops (n, C, crop, crop) of the probe sites, normalised the way the
    model's data stage does (``image``/``plate``/``none``); one seeded random tile per site,
    sites drawn evenly across the manifests."""
    from ..models.data import (
        load_site,
        manifest_path_lists,
        plate_channel_stats,
        read_manifest,
        tile_site,
    )

    rng = np.random.default_rng(seed)
    per_manifest = max(1, -(-max_crops // max(len(manifests), 1)))
    crops = []
    for manifest in manifests:
        lists = manifest_path_lists(read_manifest(manifest, channels), channels)
        stats = plate_channel_stats(lists) if normalization == "plate" else None
        for index in np.sort(rng.permutation(len(lists))[:per_manifest]):
            site = load_site(lists[index], normalization, stats)
            tiles = tile_site(site, crop, crop)
            crops.append(tiles[rng.integers(len(tiles))])
    if len(crops) < 2:
        raise InputError(manifests[0] if manifests else "identifiability", "need at least 2 probe crops")
    return np.stack(crops[:max_crops]).astype(np.float32)


def mae_decoder_bilipschitz(model, images: np.ndarray, *, n_pairs: int = 2000, seed: int = 0,
                            local: bool = False, quantile: float = 0.01, batch_size: int = 32) -> dict[str, float]:
    """Bi-Lipschitz estimate of an MAE decoder on the latents of ``images``.

    A latent is the encoder's final-layer token sequence (class token + every patch token,
    nothing masked); the decoder maps it to per-patch pixel predictions. ``images`` are
    (n, C, H, W) crops as the data stage feeds them to the model.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    encoder = model.encoder
    model.eval()
    with torch.no_grad():
        grid = encoder.grid_of(x)
        tokens = torch.cat([encoder.forward_features(x[i:i + batch_size])[encoder.depth]
                            for i in range(0, len(x), batch_size)])
    n_channels = x.shape[1]

    def decode(latents: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
        out = []
        with torch.no_grad():
            for i in range(0, len(z), batch_size):
                chunk = z[i:i + batch_size]
                n_tokens = chunk.shape[1] - 1
                restore = torch.arange(n_tokens).expand(len(chunk), n_tokens)
                out.append(model.decoder(chunk, restore, grid=grid, n_channels=n_channels))
        return torch.cat(out).numpy()

    return decoder_bilipschitz(decode, tokens.numpy(), n_pairs=n_pairs, seed=seed, local=local, quantile=quantile)


def isometry_table(checkpoints: Sequence[str | os.PathLike], weight_decays: Sequence[float],
                   seeds: Sequence[int], embeddings: Sequence[str | os.PathLike],
                   manifests: Sequence[str | os.PathLike], channels: Sequence[str], *, layer: int | None,
                   n_pairs: int, local_pairs: bool, ratio_quantile: float, max_probe_crops: int, probe_seed: int,
                   fit_fraction: float, split_seed: int, diameter: str) -> pd.DataFrame:
    """One row per checkpoint: its decoder's bi-Lipschitz estimate and its rigid alignment
    error to the other seeds of the same weight decay (``ISOMETRY_COLUMNS``). The keyword
    arguments are the config's ``identifiability`` keys of the same names."""
    from ..models import load_model

    n = len(checkpoints)
    if not (len(weight_decays) == len(seeds) == len(embeddings) == n) or n == 0:
        raise ConfigError("identifiability: checkpoints, weight_decays, seeds and embeddings must be "
                          f"parallel lists, got {n}, {len(weight_decays)}, {len(seeds)}, {len(embeddings)}")
    rows = []
    crops_cache: dict[tuple[int, str], np.ndarray] = {}
    for ckpt, wd, seed in progress(list(zip(checkpoints, weight_decays, seeds)), desc="decoder isometry"):
        model = load_model(ckpt)
        spec = model.spec
        key = (spec.img_size, spec.normalization)
        if key not in crops_cache:
            crops_cache[key] = probe_crops(manifests, channels, crop=spec.img_size, normalization=spec.normalization,
                                           max_crops=int(max_probe_crops), seed=int(probe_seed))
        est = mae_decoder_bilipschitz(model, crops_cache[key], n_pairs=int(n_pairs), seed=int(probe_seed),
                                      local=bool(local_pairs), quantile=float(ratio_quantile))
        rows.append({"weight_decay": float(wd), "seed": int(seed), **est, "n_probe": len(crops_cache[key])})
        log.info("%s (weight decay %g, seed %d): L = %.3f", ckpt, wd, seed, est["bilipschitz_L"])
    table = pd.DataFrame(rows)
    table["rigid_error"], table["rigid_sup_error"] = _rigid_errors_by_group(
        embeddings, weight_decays, layer=layer, fit_fraction=fit_fraction, split_seed=split_seed, diameter=diameter)
    return table[list(ISOMETRY_COLUMNS)]


def _rigid_errors_by_group(embeddings: Sequence[str | os.PathLike], weight_decays: Sequence[float], *,
                           layer: int | None, fit_fraction: float, split_seed: int, diameter: str
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Per checkpoint: mean rigid error (mean and sup norm) to the other seeds of its weight
    decay, NaN when it has no partner."""
    n = len(embeddings)
    mean_err = [[] for _ in range(n)]
    sup_err = [[] for _ in range(n)]
    groups: dict[float, list[int]] = {}
    for i, wd in enumerate(weight_decays):
        groups.setdefault(float(wd), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        adatas, rows = read_probe_embeddings([embeddings[i] for i in members])
        fit = split_rows(len(rows), fit_fraction=float(fit_fraction), seed=int(split_seed))
        reps = [_representation(a, layer, rows, embeddings[i]) for a, i in zip(adatas, members)]
        for (ia, ra), (ib, rb) in itertools.combinations(list(zip(members, reps)), 2):
            t = alignment_errors(ra[fit], rb[fit], ra[~fit], rb[~fit], maps=("rigid",), diameter=diameter)
            values = t.set_index(["map", "metric"])["value"]
            for i in (ia, ib):
                mean_err[i].append(values[("rigid", "mean_error")])
                sup_err[i].append(values[("rigid", "sup_error")])
    return (np.array([np.mean(v) if v else np.nan for v in mean_err]),
            np.array([np.mean(v) if v else np.nan for v in sup_err]))


def decoder_isometry(checkpoints: Sequence[str | os.PathLike], weight_decays: Sequence[float],
                     seeds: Sequence[int], embeddings: Sequence[str | os.PathLike],
                     manifests: Sequence[str | os.PathLike], channels: Sequence[str],
                     out_tsv: str | os.PathLike, out_png: str | os.PathLike | None = None, **settings: Any) -> None:
    """Rule function: write the isometry table (and the figure). ``settings``: the keyword
    arguments of :func:`isometry_table` (``ISOMETRY_KEYS``)."""
    _check_keys(settings, ISOMETRY_KEYS)
    table = isometry_table(checkpoints, weight_decays, seeds, embeddings, manifests, channels, **settings)
    write_tsv(table, out_tsv)
    if out_png is not None:
        plot_isometry(table, out_png)


def plot_isometry(table: pd.DataFrame | str | os.PathLike, out_png: str | os.PathLike) -> None:
    """Left: bi-Lipschitz L per weight decay. Right: rigid alignment error vs L, with the
    paper's bound sqrt(2 L + L^2) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(table, pd.DataFrame):
        table = read_table(table)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    wds = sorted(table["weight_decay"].unique())
    positions = np.arange(len(wds))
    for i, wd in enumerate(wds):
        sub = table[table["weight_decay"] == wd]
        ax1.scatter(np.full(len(sub), positions[i]), sub["bilipschitz_L"], color=f"C{i}")
        ax2.scatter(sub["bilipschitz_L"], sub["rigid_error"], color=f"C{i}", label=f"wd {wd:g}")
    ax1.set_xticks(positions, [f"{wd:g}" for wd in wds])
    ax1.set_xlabel("weight decay")
    ax1.set_ylabel("decoder bi-Lipschitz L")
    finite = table["bilipschitz_L"][np.isfinite(table["bilipschitz_L"])]
    if len(finite):
        grid = np.linspace(0, float(finite.max()) * 1.1 + 1e-9, 100)
        ax2.plot(grid, np.sqrt(2 * grid + grid**2), color="grey", lw=0.8, label="sqrt(2L + L^2)")
    ax2.set_xlabel("decoder bi-Lipschitz L")
    ax2.set_ylabel("rigid error / diameter")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, out_png)


def _save_figure(fig, out_png: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _check_keys(settings: dict[str, Any], expected: tuple[str, ...]) -> None:
    unknown, missing = sorted(set(settings) - set(expected)), sorted(set(expected) - set(settings))
    if unknown or missing:
        raise ConfigError(f"identifiability: unknown settings {unknown}, missing settings {missing} "
                          "(phenoica.config.schema_defaults('identifiability') has them all)")


# The config's ``identifiability`` keys read by the alignment rule and by the isometry rule are
# in rule_keys (read by the Snakefile); checked here against the functions.
check_keys(ALIGNMENT_KEYS, alignment_table, summarize_alignment)
check_keys(ISOMETRY_KEYS, isometry_table)

"""Identifiability in the workflow: cross-seed alignment per layer and decoder isometry.

Rule-level functions::

    identifiability_alignment(embeddings=, seeds=, out_tsv=, out_png=, params=)
        per-seed embeddings of one shared probe set (AnnData, obsm["X_layer<k>"])
        -> results/identifiability/alignment.tsv  (layer, seed_a, seed_b, map, metric, value)
    decoder_isometry(checkpoints=, weight_decays=, seeds=, embeddings=, manifests=, channels=,
                     out_tsv=, out_png=, params=)
        MAE checkpoints of a weight-decay x seed sweep, their probe embeddings, probe images
        -> results/identifiability/isometry.tsv   (weight_decay, seed, bilipschitz_L, ...)

Protocol (alignment): the probe rows common to every file are split once, seeded, into fitting
and test rows (``fit_fraction``); for every layer and every pair of seeds (a < b) the maps of
``phenoica.metrics.identifiability.alignment_errors`` from seed a's representation to seed b's
are fitted on the fitting rows and scored on the test rows. Errors are relative to the latent
diameter of seed b on the test rows.

ICA components: with ``ica_components: auto`` both sides are whitened to k components, the
larger of the two sides' counts of principal components holding ``ica_variance`` (90 %) of the
variance on the fitting rows, capped at n_fit / 5 (ICA on as many dimensions as samples fits
noise). Trailing low-variance components of a small probe set are close to Gaussian noise, and
a signed permutation cannot align noise, so a larger k lowers the measured ICA efficiency;
a float in (0, 1) sets that share without the cap, an integer fixes k, ``null`` keeps each side's rank. The
number used is recorded (``map=ica, metric=n_components``). The linear map is ridge-stabilised
by 5-fold CV (``linear_ridge: cv``; 0 = plain least squares), since probe sets often
have fewer fitting rows than dimensions.

Protocol (isometry): each decoder's bi-Lipschitz constant 1 + L is estimated from distance
ratios ||g(z) - g(z')|| / ||z - z'|| on pairs of probe latents z (the final-layer token
sequence of a probe crop, all tokens visible) and the scale-free L = sqrt(max / min ratio) - 1
over the central 98 % of ratios; ``rigid_bound`` = sqrt(2 L + L^2) is the paper's bound. The
rigid alignment error of each checkpoint is the mean over the other seeds trained with the
same weight decay (test rows, default layer).
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..io import atomic_path, read_table, write_tsv
from ..logs import get_logger, progress
from ..metrics.identifiability import (
    DIAMETERS,
    MAP_CLASSES,
    alignment_errors,
    components_for_variance,
    decoder_bilipschitz,
    split_rows,
)

log = get_logger(__name__)

ALIGNMENT_COLUMNS: tuple[str, ...] = ("layer", "seed_a", "seed_b", "map", "metric", "value")
ISOMETRY_COLUMNS: tuple[str, ...] = ("weight_decay", "seed", "bilipschitz_L", "rigid_bound", "ratio_median",
                                     "ratio_min", "ratio_max", "rigid_error", "rigid_sup_error", "n_probe")
_LAYER_KEY = re.compile(r"^X_layer(\d+)$")

#: The paper's cross-run alignment errors (mean L2 error / latent diameter), for reporting only.
PAPER_ALIGNMENT: dict[str, dict[str, float]] = {
    "Pythia-160M seed 0 vs 1": {"permutation": 0.219, "rigid": 0.150, "linear": 0.131, "ica": 0.202},
    "MAE (two ViT MAEs)": {"permutation": 0.197, "rigid": 0.109, "linear": 0.036, "ica": 0.145},
    "CheXpert MAE small vs base": {"permutation": 0.218, "rigid": 0.104, "linear": 0.048, "ica": 0.175},
    "ResNet-18 two runs": {"permutation": 0.382, "rigid": 0.206, "linear": 0.175, "ica": 0.312},
}

DEFAULT_PARAMS: dict[str, Any] = {
    "layers": None,           # block numbers to compare; null = every X_layer<k> common to all files
    "maps": list(MAP_CLASSES),
    "fit_fraction": 0.5,      # share of probe rows the maps are fitted on
    "split_seed": 0,
    "diameter": "max",        # max | q99 (robust) pairwise distance of the target's test rows
    "ica_components": "auto",  # auto | null | integer | variance share in (0, 1) (see module docstring)
    "ica_variance": 0.9,      # the share used by ica_components: auto
    "linear_ridge": "cv",     # cv | 0 (plain least squares) | fixed penalty
    "ica_seed": 0,
    "ica_backend": "auto",    # phenoica.postprocess.ica backend: auto (torch) | sklearn | picard
    "max_rows": None,         # subsample the probe rows (seeded) to bound the cost; null = all
    # isometry
    "layer": None,            # layer for the rigid error of the isometry table; null = X (default layer)
    "n_pairs": 2000,          # latent pairs per decoder
    "local_pairs": False,     # pairs of nearest neighbours instead of random pairs
    "ratio_quantile": 0.01,   # ignore this share of the most extreme ratios on each side
    "max_probe_crops": 256,   # probe crops encoded and decoded per checkpoint
    "probe_seed": 0,
}


def identifiability_params(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults overlaid with the config's ``identifiability`` block, validated (ConfigError
    naming ``identifiability.<key>``). Keys the workflow itself reads (e.g. ``seeds``,
    ``weight_decays``) pass through untouched."""
    out = copy.deepcopy(DEFAULT_PARAMS)
    out.update(copy.deepcopy(dict(params or {})))
    maps = out["maps"]
    if not isinstance(maps, (list, tuple)) or not maps or any(m not in MAP_CLASSES for m in maps):
        raise ConfigError(f"identifiability.maps: a non-empty list of {MAP_CLASSES}, got {maps!r}")
    if not 0.0 < float(out["fit_fraction"]) < 1.0:
        raise ConfigError(f"identifiability.fit_fraction: must be in (0, 1), got {out['fit_fraction']!r}")
    if out["diameter"] not in DIAMETERS:
        raise ConfigError(f"identifiability.diameter: one of {DIAMETERS}, got {out['diameter']!r}")
    comp = out["ica_components"]
    if not (comp is None or comp == "auto" or (isinstance(comp, int) and not isinstance(comp, bool) and comp >= 1)
            or (isinstance(comp, float) and 0.0 < comp < 1.0)):
        raise ConfigError("identifiability.ica_components: 'auto', null, a positive integer or a variance "
                          f"share in (0, 1), got {comp!r}")
    if not 0.0 < float(out["ica_variance"]) <= 1.0:
        raise ConfigError(f"identifiability.ica_variance: must be in (0, 1], got {out['ica_variance']!r}")
    ridge = out["linear_ridge"]
    if not (ridge == "cv" or (isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and ridge >= 0)):
        raise ConfigError(f"identifiability.linear_ridge: 'cv' or a number >= 0, got {ridge!r}")
    if out["layers"] is not None and (not isinstance(out["layers"], (list, tuple))
                                      or not all(isinstance(k, int) for k in out["layers"])):
        raise ConfigError(f"identifiability.layers: null or a list of block numbers, got {out['layers']!r}")
    if out["max_rows"] is not None and (not isinstance(out["max_rows"], int) or out["max_rows"] < 10):
        raise ConfigError(f"identifiability.max_rows: null or an integer >= 10, got {out['max_rows']!r}")
    if out["ica_backend"] not in ("auto", "torch", "sklearn", "picard"):
        raise ConfigError(f"identifiability.ica_backend: auto, torch, sklearn or picard, got {out['ica_backend']!r}")
    if not 0.0 <= float(out["ratio_quantile"]) < 0.5:
        raise ConfigError("identifiability.ratio_quantile: must be in [0, 0.5)")
    return out


# --------------------------------------------------------------------------------------------
# reading probe embeddings
# --------------------------------------------------------------------------------------------
def layer_keys(adata: ad.AnnData) -> dict[int, str]:
    """Block number -> obsm key for every ``X_layer<k>``."""
    return {int(m.group(1)): key for key in adata.obsm.keys() if (m := _LAYER_KEY.match(key))}


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


def _ica_components(setting: Any, A_fit: np.ndarray, B_fit: np.ndarray, share: float) -> int | float | None:
    """The ``n_components`` passed to ``alignment_errors`` for one pair (see module docstring)."""
    if setting != "auto":
        return setting
    k = max(components_for_variance(A_fit, share), components_for_variance(B_fit, share))
    return int(max(2, min(k, len(A_fit) // 5)))


# --------------------------------------------------------------------------------------------
# alignment
# --------------------------------------------------------------------------------------------
def alignment_table(embeddings: Sequence[str | os.PathLike], seeds: Sequence[int],
                    params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The long alignment table (``ALIGNMENT_COLUMNS``) for per-seed probe embeddings."""
    p = identifiability_params(params)
    if len(embeddings) != len(seeds) or len(embeddings) < 2:
        raise ConfigError(f"identifiability: need >= 2 embeddings and one seed each, got "
                          f"{len(embeddings)} files and seeds {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"identifiability.seeds: duplicate seeds {list(seeds)}")
    adatas, rows = read_probe_embeddings(embeddings)
    if p["max_rows"] is not None and len(rows) > p["max_rows"]:
        keep = np.sort(np.random.default_rng(p["split_seed"]).choice(len(rows), p["max_rows"], replace=False))
        rows = rows[keep]
    available = [set(layer_keys(a)) for a in adatas]
    common_layers = sorted(set.intersection(*available))
    layers = list(p["layers"]) if p["layers"] is not None else common_layers
    if not layers:
        raise InputError(embeddings[0], "no obsm['X_layer<k>'] common to all embeddings")
    for k in layers:
        for path, have in zip(embeddings, available):
            if k not in have:
                raise InputError(path, f"no obsm['X_layer{k}']; layers present: {sorted(have)}")
    fit = split_rows(len(rows), fit_fraction=float(p["fit_fraction"]), seed=int(p["split_seed"]))
    order = np.argsort(seeds, kind="stable")
    pairs = [(order[i], order[j]) for i, j in itertools.combinations(range(len(seeds)), 2)]
    tables = []
    jobs = [(k, a, b) for k in layers for a, b in pairs]
    for k, a, b in progress(jobs, desc="alignment (layer, seed pair)"):
        A = _representation(adatas[a], k, rows, embeddings[a])
        B = _representation(adatas[b], k, rows, embeddings[b])
        n_comp = _ica_components(p["ica_components"], A[fit], B[fit], float(p["ica_variance"]))
        t = alignment_errors(A[fit], B[fit], A[~fit], B[~fit], maps=tuple(p["maps"]), diameter=p["diameter"],
                             n_components=n_comp, seed=int(p["ica_seed"]), ica_backend=p["ica_backend"],
                             linear_ridge=p["linear_ridge"])
        t.insert(0, "seed_b", int(seeds[b]))
        t.insert(0, "seed_a", int(seeds[a]))
        t.insert(0, "layer", int(k))
        tables.append(t)
        mean = t[t["metric"] == "mean_error"].set_index("map")["value"]
        log.info("layer %d, seeds %d vs %d: %s", k, seeds[a], seeds[b],
                 ", ".join(f"{m} {v:.3f}" for m, v in mean.items()))
    return pd.concat(tables, ignore_index=True)[list(ALIGNMENT_COLUMNS)]


def identifiability_alignment(*, embeddings: Sequence[str | os.PathLike], seeds: Sequence[int],
                              out_tsv: str | os.PathLike, out_png: str | os.PathLike | None = None,
                              params: Mapping[str, Any] | None = None) -> None:
    """Rule function: write ``alignment.tsv`` (and the figure) for per-seed probe embeddings."""
    table = alignment_table(embeddings, seeds, params)
    write_tsv(table, out_tsv)
    if out_png is not None:
        plot_alignment(table, out_png)


def summarize_alignment(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seed pairs per layer and map: mean_error, sup_error, r2, mcc_split, plus the
    ICA efficiency; one row per (layer, map)."""
    wanted = table[table["map"] != "all"]
    summary = wanted.pivot_table(index=["layer", "map"], columns="metric", values="value", aggfunc="mean")
    return summary.reset_index()


def plot_alignment(table: pd.DataFrame | str | os.PathLike, out_png: str | os.PathLike) -> None:
    """Error vs layer per map class (mean over seed pairs, bars = range), mean and sup-norm
    panels, and the ICA efficiency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(table, pd.DataFrame):
        table = read_table(table)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, metric, title in ((axes[0], "mean_error", "mean L2 error / diameter"),
                              (axes[1], "sup_error", "sup L2 error / diameter")):
        for name in MAP_CLASSES:
            sub = table[(table["map"] == name) & (table["metric"] == metric)]
            if sub.empty:
                continue
            stats = sub.groupby("layer")["value"].agg(["mean", "min", "max"])
            ax.errorbar(stats.index, stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                        marker="o", capsize=2, label=name)
        ax.set_xlabel("layer (block)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    eff = table[(table["map"] == "ica") & (table["metric"] == "efficiency")]
    if not eff.empty:
        stats = eff.groupby("layer")["value"].agg(["mean", "min", "max"])
        axes[2].errorbar(stats.index, stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                         marker="o", capsize=2, color="C3")
    axes[2].axhline(0.0, color="grey", lw=0.8)
    axes[2].set_title("ICA efficiency")
    axes[2].set_xlabel("layer (block)")
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


def isometry_table(*, checkpoints: Sequence[str | os.PathLike], weight_decays: Sequence[float],
                   seeds: Sequence[int], embeddings: Sequence[str | os.PathLike],
                   manifests: Sequence[str | os.PathLike], channels: Sequence[str],
                   params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per checkpoint: its decoder's bi-Lipschitz estimate and its rigid alignment
    error to the other seeds of the same weight decay (``ISOMETRY_COLUMNS``)."""
    from ..models import load_model

    p = identifiability_params(params)
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
                                           max_crops=int(p["max_probe_crops"]), seed=int(p["probe_seed"]))
        est = mae_decoder_bilipschitz(model, crops_cache[key], n_pairs=int(p["n_pairs"]), seed=int(p["probe_seed"]),
                                      local=bool(p["local_pairs"]), quantile=float(p["ratio_quantile"]))
        rows.append({"weight_decay": float(wd), "seed": int(seed), **est, "n_probe": len(crops_cache[key])})
        log.info("%s (weight decay %g, seed %d): L = %.3f", ckpt, wd, seed, est["bilipschitz_L"])
    table = pd.DataFrame(rows)
    table["rigid_error"], table["rigid_sup_error"] = _rigid_errors_by_group(embeddings, weight_decays, seeds, p)
    return table[list(ISOMETRY_COLUMNS)]


def _rigid_errors_by_group(embeddings: Sequence[str | os.PathLike], weight_decays: Sequence[float],
                           seeds: Sequence[int], p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
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
        fit = split_rows(len(rows), fit_fraction=float(p["fit_fraction"]), seed=int(p["split_seed"]))
        reps = [_representation(a, p["layer"], rows, embeddings[i]) for a, i in zip(adatas, members)]
        for (ia, ra), (ib, rb) in itertools.combinations(list(zip(members, reps)), 2):
            t = alignment_errors(ra[fit], rb[fit], ra[~fit], rb[~fit], maps=("rigid",), diameter=p["diameter"])
            values = t.set_index(["map", "metric"])["value"]
            for i in (ia, ib):
                mean_err[i].append(values[("rigid", "mean_error")])
                sup_err[i].append(values[("rigid", "sup_error")])
    return (np.array([np.mean(v) if v else np.nan for v in mean_err]),
            np.array([np.mean(v) if v else np.nan for v in sup_err]))


def decoder_isometry(*, checkpoints: Sequence[str | os.PathLike], weight_decays: Sequence[float],
                     seeds: Sequence[int], embeddings: Sequence[str | os.PathLike],
                     manifests: Sequence[str | os.PathLike], channels: Sequence[str],
                     out_tsv: str | os.PathLike, out_png: str | os.PathLike | None = None,
                     params: Mapping[str, Any] | None = None) -> None:
    """Rule function: write the isometry table (and the figure)."""
    table = isometry_table(checkpoints=checkpoints, weight_decays=weight_decays, seeds=seeds,
                           embeddings=embeddings, manifests=manifests, channels=channels, params=params)
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

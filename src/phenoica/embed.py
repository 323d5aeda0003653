"""Embedding plates with an MAE encoder, and aggregating sites to wells.

``embed_plate`` (one plate -> per-site AnnData):

1. DataLoader workers read each site's channel TIFFs, normalise intensities (per image or with
   per-plate channel statistics, or not at all for models that normalise inside) and cut the
   site into crops (``crop_size``, ``stride``; a last row/column of crops sits flush with the
   image edge so every pixel is covered). The model never waits on I/O.
2. The encoder runs on batches of crops and returns tokens after the requested blocks
   (``layers``, 1-based; intermediate layers, not only the last).
3. Tokens are pooled per crop (``mean`` over patch tokens, ``cls``, or ``channels``: one vector
   per channel, flattened channel-major), then crops are aggregated per site (``tile_aggregate``
   mean or median).

Output contract: obs index ``site_id``, obs = the manifest without its ``path_*`` columns,
``X`` = the default layer, ``obsm["X_layer<k>"]`` for every embedded layer (the default
included) and, with ``per_channel``, ``obsm["X_layer<k>_channels"]`` of shape
(n_sites, n_channels * width): columns ``c * width + d`` belong to channel ``c`` (order of
``uns["phenoica"]["embedding"]["channels"]``).

``collect_wells`` concatenates the plates and aggregates sites to wells (mean or median) for
``X`` and every ``obsm`` layer, optionally with the simulator's ground truth.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from .config import section_values
from .errors import ConfigError, InputError
from .io import read_table, sanitize_uns, standardize_obs, write_h5ad
from .io.images import read_image
from .logs import get_logger, progress
from .models.checkpoint import checkpoint_sha256, load_encoder, resolve_spec
from .models.data import (
    SiteError,
    SiteTiles,
    collate_sites,
    lower_worker_priority,
    manifest_path_lists,
    plate_channel_stats,
    read_manifest,
    tile_positions,
)
from .models.mae import EncoderBase
from .models.registry import ModelSpec
from .models.train import resolve_device
from .provenance import add_record

log = get_logger(__name__)

def resolve_embed_config(embed: dict, spec: ModelSpec) -> dict:
    """The ``embed`` section (every key; checked by the schema) with each null resolved to the
    model's setting (``spec``), and the settings that depend on the model checked."""
    cfg = dict(embed)
    channel_agnostic = spec.family == "camae"
    cfg["crop_size"] = int(cfg["crop_size"] or spec.img_size)
    cfg["stride"] = int(cfg["stride"] or cfg["crop_size"])
    if cfg["crop_size"] % spec.patch_size:
        raise ConfigError(f"embed.crop_size {cfg['crop_size']} is not a multiple of the model's patch "
                          f"size {spec.patch_size}")
    cfg["default_layer"] = int(cfg["default_layer"] or spec.layer)
    layers = cfg["layers"] if cfg["layers"] is not None else [cfg["default_layer"]]
    if isinstance(layers, int):
        layers = [layers]
    cfg["layers"] = sorted({int(k) for k in layers} | {cfg["default_layer"]})
    bad = [k for k in cfg["layers"] if not 1 <= k <= spec.depth]
    if bad:
        raise ConfigError(f"embed.layers: {bad} outside 1..{spec.depth} (blocks of {spec.name!r})")
    cfg["pooling"] = cfg["pooling"] or spec.pooling
    if cfg["pooling"] == "channels" and not channel_agnostic:
        raise ConfigError(f"embed.pooling 'channels' needs a channel-agnostic model; {spec.name!r} is not")
    if cfg["per_channel"] is None:
        cfg["per_channel"] = channel_agnostic and cfg["pooling"] != "channels"
    if cfg["per_channel"] and not channel_agnostic:
        raise ConfigError(f"embed.per_channel needs a channel-agnostic model; {spec.name!r} is not")
    cfg["normalization"] = cfg["normalization"] or spec.normalization
    if spec.input_norm == "self_standardize" and cfg["normalization"] != "none":
        raise ConfigError(f"embed.normalization: {cfg['normalization']!r} does not fit {spec.name!r}, "
                          "which divides pixels by 255 and standardises every crop itself "
                          "(input_norm self_standardize): standardised input would reach it with "
                          "its contrast shrunk by that standardisation's eps (to about 0.78); "
                          "leave embed.normalization null (the model's setting, none)")
    return cfg


def _channel_ids(encoder: EncoderBase, channels: list[str]) -> torch.Tensor | None:
    """Embedding slots of the configured channels for a CA-MAE trained with a channel embedding."""
    if not encoder.channel_agnostic or getattr(encoder, "channel_embed", None) is None:
        return None
    trained = getattr(encoder, "trained_channels", None)
    if not trained:
        return None
    unknown = [c for c in channels if c not in trained]
    if unknown:
        raise ConfigError(f"channels {unknown} were not seen in training (trained on {trained}); the "
                          "model's channel embedding has no slot for them")
    return torch.tensor([trained.index(c) for c in channels], dtype=torch.long)


def _aggregate(rows: torch.Tensor, how: str) -> torch.Tensor:
    if rows.shape[0] == 1:
        return rows[0]
    return rows.mean(dim=0) if how == "mean" else rows.median(dim=0).values


class _Embedder:
    """Runs the encoder on crop batches and collects per-site results."""

    def __init__(self, encoder: EncoderBase, cfg: dict, device: torch.device, n_sites: int,
                 n_channels: int, channel_ids: torch.Tensor | None, bf16: bool) -> None:
        self.encoder, self.cfg, self.device = encoder, cfg, device
        self.channel_ids = channel_ids.to(device) if channel_ids is not None else None
        self.bf16 = bf16
        self.n_channels = n_channels
        width = encoder.embed_dim * (n_channels if cfg["pooling"] == "channels" else 1)
        self.pooled = {k: np.zeros((n_sites, width), np.float32) for k in cfg["layers"]}
        self.channels = ({k: np.zeros((n_sites, n_channels * encoder.embed_dim), np.float32)
                          for k in cfg["layers"]} if cfg["per_channel"] else {})

    @torch.inference_mode()
    def forward(self, crops: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
        crops = crops.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.encoder.embed(crops, self.cfg["layers"], pooling=self.cfg["pooling"],
                                     per_channel=self.cfg["per_channel"], channel_ids=self.channel_ids)
        return {k: {name: t.float().flatten(1).cpu() for name, t in v.items()} for k, v in out.items()}

    def add(self, tiles: torch.Tensor, owner: torch.Tensor) -> None:
        size = self.cfg["batch_size"]
        parts = [self.forward(tiles[i:i + size]) for i in range(0, tiles.shape[0], size)]
        how = self.cfg["tile_aggregate"]
        sites = torch.unique_consecutive(owner).tolist()
        rows = {site: (owner == site).nonzero().squeeze(1) for site in sites}
        for k in self.cfg["layers"]:
            targets = [("pooled", self.pooled[k])] + ([("channels", self.channels[k])] if self.channels else [])
            for name, store in targets:
                values = torch.cat([p[k][name] for p in parts]) if len(parts) > 1 else parts[0][k][name]
                for site in sites:
                    store[site] = _aggregate(values[rows[site]], how).numpy()


def embed_plate(manifest_path: str | os.PathLike, out_h5ad: str | os.PathLike, model: dict,
                checkpoint: str | os.PathLike | None, channels: list[str], exclude_flagged: bool,
                device: str = "auto", *, crop_size: int | None, stride: int | None,
                layers: list[int] | int | None, default_layer: int | None, pooling: str | None,
                per_channel: bool | None, normalization: str | None, plate_stats_sites: int,
                tile_aggregate: str, batch_size: int, num_workers: int, precision: str,
                aggregate: str) -> None:
    """Embed every site of one plate and write a per-site AnnData (see the module docstring).

    The keyword-only arguments are the ``embed`` config section (config/README.md; outside the
    workflow pass ``**{**phenoica.config.schema_defaults("embed"), **overrides}``); a null
    takes the model's setting. ``aggregate`` (sites -> wells) is used by :func:`collect_wells`
    and recorded here with the other settings. ``exclude_flagged``: drop sites with
    ``qc_pass`` false (``qc.exclude_flagged``).
    """
    embed = section_values(embed_plate, locals())
    adata = embed_sites(manifest_path, model, checkpoint, channels, exclude_flagged, device, **embed)
    write_h5ad(adata, out_h5ad)
    log.info("wrote %s (%d sites x %d)", out_h5ad, adata.n_obs, adata.n_vars)


def embed_sites(manifest_path: str | os.PathLike, model: dict, checkpoint: str | os.PathLike | None,
                channels: list[str], exclude_flagged: bool, device: str = "auto", *,
                crop_size: int | None, stride: int | None, layers: list[int] | int | None,
                default_layer: int | None, pooling: str | None, per_channel: bool | None,
                normalization: str | None, plate_stats_sites: int, tile_aggregate: str, batch_size: int,
                num_workers: int, precision: str, aggregate: str) -> ad.AnnData:
    """The per-site AnnData of one plate's manifest, in memory (what :func:`embed_plate` writes;
    same arguments)."""
    embed = section_values(embed_sites, locals())
    channels = list(channels)
    spec, _, _, _ = resolve_spec(model, checkpoint, channels=channels)
    cfg = resolve_embed_config(embed, spec)
    df = read_manifest(manifest_path, channels, exclude_flagged=exclude_flagged)
    paths = manifest_path_lists(df, channels)
    dev = resolve_device(device)
    bf16 = dev.type == "cuda" and (cfg["precision"] == "bf16" or
                                   (cfg["precision"] == "auto" and torch.cuda.is_bf16_supported()))
    stats = (plate_channel_stats(paths, max_sites=cfg["plate_stats_sites"])
             if cfg["normalization"] == "plate" else None)

    first = read_image(paths[0][0])
    try:
        tiles_per_site = (len(tile_positions(first.shape[0], cfg["crop_size"], cfg["stride"]))
                          * len(tile_positions(first.shape[1], cfg["crop_size"], cfg["stride"])))
    except ValueError as exc:
        raise InputError(paths[0][0], str(exc)) from exc
    sites_per_batch = max(1, cfg["batch_size"] // tiles_per_site)
    dataset = SiteTiles(paths, crop=cfg["crop_size"], stride=cfg["stride"],
                        normalization=cfg["normalization"], stats=stats)
    workers = cfg["num_workers"]
    loader = DataLoader(dataset, batch_size=sites_per_batch, collate_fn=collate_sites, num_workers=workers,
                        prefetch_factor=4 if workers else None, pin_memory=dev.type == "cuda",
                        worker_init_fn=lower_worker_priority if workers else None)
    # start the workers reading before the weights are loaded, so the first batch is waiting
    batches = iter(loader)
    encoder = load_encoder(model, checkpoint, channels=channels).to(dev)
    embedder = _Embedder(encoder, cfg, dev, len(df), len(channels), _channel_ids(encoder, channels), bf16)
    log.info("embedding %d sites of %s with %s: %d crop(s) of %d px per site, layers %s, pooling %s, "
             "normalisation %s, device %s", len(df), manifest_path, encoder.spec.name, tiles_per_site,
             cfg["crop_size"], cfg["layers"], cfg["pooling"], cfg["normalization"], dev)
    started = time.perf_counter()
    with progress(total=len(df), desc=f"embed {Path(manifest_path).parent.name or manifest_path}") as bar:
        for batch in batches:
            if isinstance(batch, SiteError):
                raise batch.error()
            tiles, owner = batch
            embedder.add(tiles, owner)
            bar.update(int(torch.unique_consecutive(owner).numel()))
    seconds = time.perf_counter() - started
    log.info("embedded %d sites in %.1f s (%.1f crops/s)", len(df), seconds,
             len(df) * tiles_per_site / max(seconds, 1e-9))

    adata = _site_anndata(df, embedder, cfg)
    info = {
        "model": encoder.spec.name, "model_id": model.get("id", encoder.spec.name),
        "checkpoint": str(checkpoint) if checkpoint is not None else "",
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "layers": cfg["layers"], "default_layer": cfg["default_layer"], "pooling": cfg["pooling"],
        "per_channel": bool(cfg["per_channel"]), "normalization": cfg["normalization"],
        "input_norm": encoder.input_norm, "crop_size": cfg["crop_size"], "stride": cfg["stride"],
        "tiles_per_site": tiles_per_site, "tile_aggregate": cfg["tile_aggregate"],
        "channels": channels, "embedding_dim": int(encoder.embed_dim),
        "per_channel_layout": "channel-major: column c * embedding_dim + d",
    }
    add_record(adata.uns, "embed_plate", params={**info, "embed": cfg, "model_config": model},
               seeds={"random_init_seed": 0} if checkpoint is None else {},
               inputs=[manifest_path] + ([checkpoint] if checkpoint is not None else []))
    adata.uns["phenoica"]["embedding"] = sanitize_uns(info)
    return adata


def _site_anndata(df: pd.DataFrame, embedder: _Embedder, cfg: dict) -> ad.AnnData:
    obs = df.drop(columns=[c for c in df.columns if c.startswith("path_")]).set_index("site_id")
    obs.index.name = None
    obs = standardize_obs(obs)
    X = embedder.pooled[cfg["default_layer"]]
    adata = ad.AnnData(X=X.copy(), obs=obs,
                       var=pd.DataFrame(index=[f"e{i}" for i in range(X.shape[1])]))
    for k in cfg["layers"]:
        adata.obsm[f"X_layer{k}"] = embedder.pooled[k]
        if embedder.channels:
            adata.obsm[f"X_layer{k}_channels"] = embedder.channels[k]
    return adata


# --- sites -> wells --------------------------------------------------------------------------------

def _group_reduce(values: np.ndarray, codes: np.ndarray, n_groups: int, how: str) -> np.ndarray:
    """Mean or median of the rows of ``values`` per group code (0..n_groups-1)."""
    values = np.asarray(values, dtype=np.float64)
    if how == "mean":
        sums = np.zeros((n_groups, values.shape[1]))
        np.add.at(sums, codes, values)
        return sums / np.bincount(codes, minlength=n_groups)[:, None]
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    return np.stack([np.median(values[order[bounds[g]:bounds[g + 1]]], axis=0) for g in range(n_groups)])


def _truth_table(truth_paths: Sequence[str | os.PathLike], site_ids: pd.Index) -> pd.DataFrame:
    frames = []
    for path in truth_paths:
        try:
            table = read_table(path)
        except FileNotFoundError as exc:
            raise InputError(path, "ground-truth table not found") from exc
        if "site_id" not in table.columns:
            raise InputError(path, "ground-truth table lacks the site_id column")
        factors = [c for c in table.columns if c.startswith(("bio_", "batch_"))]
        if not factors:
            raise InputError(path, "ground-truth table has no bio_* or batch_* columns")
        non_numeric = [c for c in factors if not pd.api.types.is_numeric_dtype(table[c])]
        if non_numeric:
            raise InputError(path, f"ground-truth columns must be numeric: {', '.join(non_numeric)}")
        frames.append(table.set_index(table["site_id"].astype(str))[factors])
    truth = pd.concat(frames)
    if truth.index.duplicated().any():
        raise InputError(truth_paths[0], f"site_id {truth.index[truth.index.duplicated()][0]!r} "
                                         "appears in more than one ground-truth row")
    missing = site_ids.difference(truth.index)
    if len(missing):
        raise InputError(truth_paths[0], f"{len(missing)} embedded site(s) have no ground truth, "
                                         f"e.g. {missing[0]!r}")
    return truth.loc[site_ids]


def collect_wells(site_paths: list[str], out_h5ad: str | os.PathLike, truth_paths: list[str] | None = None, *,
                  aggregate: str) -> None:
    """All plates' site embeddings -> one well-level AnnData (index ``plate:well``).

    ``X`` and every ``obsm`` layer are aggregated per well (``aggregate``: mean or median); obs
    keeps the columns that are constant within each well (``site`` and site-level columns such
    as ``qc_pass`` are dropped) and gains ``n_sites``. With ``truth_paths`` the simulator's
    ground truth is aggregated the same way into ``obsm["truth_biology"]`` and
    ``obsm["truth_batch"]`` (DataFrames, column prefixes removed).
    """
    if not site_paths:
        raise InputError(None, "collect_wells needs at least one per-site embedding file")
    adatas = []
    for path in progress(site_paths, desc="read site embeddings"):
        try:
            adatas.append(ad.read_h5ad(path))
        except FileNotFoundError as exc:
            raise InputError(path, "site embedding file not found") from exc
    _check_same_embedding(adatas, site_paths)
    keys = set(adatas[0].obsm.keys())
    for path, a in zip(site_paths, adatas):
        if set(a.obsm.keys()) != keys:
            raise InputError(path, f"obsm layers {sorted(a.obsm.keys())} differ from {site_paths[0]}'s "
                                   f"{sorted(keys)}")
    sites = ad.concat(adatas, join="inner", merge="same", uns_merge="first", index_unique=None)
    if sites.obs_names.duplicated().any():
        raise InputError(None, f"site_id {sites.obs_names[sites.obs_names.duplicated()][0]!r} occurs in "
                               "more than one plate file")
    for col in ("plate", "well"):
        if col not in sites.obs:
            raise InputError(site_paths[0], f"obs lacks the {col!r} column")

    well_keys = sites.obs["plate"].astype(str) + ":" + sites.obs["well"].astype(str)
    codes, wells = pd.factorize(well_keys, sort=False)
    n_wells = len(wells)
    obs = _well_obs(sites.obs, codes, n_wells)
    obs.index = pd.Index(wells.astype(str))
    X = _group_reduce(sites.X, codes, n_wells, aggregate).astype(np.float32)
    out = ad.AnnData(X=X, obs=standardize_obs(obs), var=sites.var.copy())
    for key in sorted(keys):
        out.obsm[key] = _group_reduce(sites.obsm[key], codes, n_wells, aggregate).astype(np.float32)
    if truth_paths:
        truth = _truth_table(truth_paths, sites.obs_names)
        for prefix, name in (("bio_", "truth_biology"), ("batch_", "truth_batch")):
            cols = [c for c in truth.columns if c.startswith(prefix)]
            if cols:
                values = _group_reduce(truth[cols].to_numpy(), codes, n_wells, aggregate)
                out.obsm[name] = pd.DataFrame(values, index=out.obs_names,
                                              columns=[c[len(prefix):] for c in cols])
    out.uns["phenoica"] = dict(sites.uns.get("phenoica", {}))
    add_record(out.uns, "collect_wells",
               params={"aggregate": aggregate, "n_plates": len(site_paths), "n_sites": int(sites.n_obs),
                       "n_wells": n_wells, "truth": bool(truth_paths)},
               inputs=list(site_paths) + list(truth_paths or []))
    write_h5ad(out, out_h5ad)
    log.info("wrote %s (%d wells from %d sites on %d plates)", out_h5ad, n_wells, sites.n_obs, len(site_paths))


def _check_same_embedding(adatas: list[ad.AnnData], paths: Sequence[str]) -> None:
    """Every plate must come from the same model, checkpoint and embedding settings."""
    def signature(a: ad.AnnData) -> tuple:
        emb = a.uns.get("phenoica", {}).get("embedding", {})
        return tuple(str(emb.get(k, "")) for k in ("model", "checkpoint_sha256", "default_layer", "pooling",
                                                   "normalization", "crop_size", "stride"))
    ref = signature(adatas[0])
    for path, a in zip(paths[1:], adatas[1:]):
        if signature(a) != ref:
            raise InputError(path, f"embedded with other model or settings than {paths[0]} "
                                   f"({signature(a)} vs {ref}); re-embed all plates together")


def _well_obs(obs: pd.DataFrame, codes: np.ndarray, n_wells: int) -> pd.DataFrame:
    frame = obs.reset_index(drop=True).copy()
    frame["_well"] = codes
    keep, dropped = [], []
    grouped = frame.groupby("_well", sort=True, observed=True)
    for col in obs.columns:
        if col in ("site", "site_id"):
            continue
        varying = grouped[col].nunique(dropna=False).max() > 1
        (dropped if varying else keep).append(col)
    if dropped:
        log.info("well obs: dropped columns that vary between sites of a well: %s", ", ".join(dropped))
    first = grouped[keep].first() if keep else pd.DataFrame(index=range(n_wells))
    first = first.reindex(range(n_wells))
    for col in keep:  # keep categoricals as categoricals (groupby.first returns their values)
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            first[col] = pd.Categorical(first[col], categories=obs[col].cat.categories)
    first["n_sites"] = np.bincount(codes, minlength=n_wells).astype(np.int64)
    return first

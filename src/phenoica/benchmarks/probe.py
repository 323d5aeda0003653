"""The shared probe set of the identifiability benchmark: the same sites, embedded by every
checkpoint that is compared, at every layer.

Rule-level function::

    embed_probe_set(manifests, out_h5ad=, model=, checkpoint=, embed=, channels=, layers=)
        per-plate manifests of the probe plates + one checkpoint
        -> results/identifiability/embeddings/{model}/wd{wd}/seed{seed}.h5ad

Each plate is embedded on its own with :func:`phenoica.embed.embed_sites` (so per-plate
normalisation statistics are those of the main pipeline), then the plates are concatenated:
one row per site (index ``site_id``), ``X`` = the default layer, ``obsm["X_layer<k>"]`` for
every requested block (``layers="all"``: every block of the checkpoint's encoder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np

from ..errors import ConfigError, InputError
from ..io import sanitize_uns, standardize_obs, write_h5ad
from ..logs import get_logger
from ..provenance import add_record

log = get_logger(__name__)


def probe_layers(layers: str | Sequence[int] | None, depth: int) -> list[int]:
    """The blocks to embed: ``"all"`` (or null) = 1..depth, else the listed blocks (checked)."""
    if layers is None or layers == "all":
        return list(range(1, int(depth) + 1))
    if isinstance(layers, (str, bytes)) or not all(isinstance(k, (int, np.integer)) for k in layers):
        raise ConfigError(f"identifiability.layers: 'all', null or a list of block numbers, got {layers!r}")
    chosen = sorted({int(k) for k in layers})
    bad = [k for k in chosen if not 1 <= k <= depth]
    if not chosen or bad:
        raise ConfigError(f"identifiability.layers: blocks {bad or chosen} outside 1..{depth}")
    return chosen


def embed_probe_set(manifests: Sequence[str | os.PathLike], *, out_h5ad: str | os.PathLike, model: dict,
                    checkpoint: str | os.PathLike, embed: dict, channels: Sequence[str],
                    layers: str | Sequence[int] | None = "all", exclude_flagged: bool = False,
                    device: str = "auto") -> None:
    """Embed the sites of every manifest with ``checkpoint`` at ``layers`` and write one AnnData.

    ``embed``: the ``embed`` config section, every key (``phenoica.config.schema_defaults("embed")``
    outside the workflow); its ``layers`` are replaced by ``layers``."""
    from ..embed import embed_sites
    from ..models.checkpoint import checkpoint_sha256, resolve_spec

    manifests = [str(m) for m in manifests]
    if not manifests:
        raise InputError("identifiability", "no probe plates: set identifiability.probe_plates or list plates "
                                            "in the plate sheet")
    channels = list(channels)
    spec = resolve_spec(model, checkpoint, channels=channels)[0]
    cfg: dict[str, Any] = dict(embed)
    cfg["layers"] = probe_layers(layers, spec.depth)
    parts = [embed_sites(manifest, model, checkpoint, channels, exclude_flagged, device, **cfg)
             for manifest in manifests]
    embedding = dict(parts[0].uns.get("phenoica", {}).get("embedding", {}))
    adata = ad.concat(parts, join="inner", merge=None, uns_merge=None)
    if adata.obs_names.has_duplicates:
        dups = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        raise InputError(manifests[0], f"site identifiers repeat across the probe plates: {dups}")
    adata.obs = standardize_obs(adata.obs)
    missing = [k for k in cfg["layers"] if f"X_layer{k}" not in adata.obsm]
    if missing:  # embed_plate writes every requested block; a mismatch is a bug, not user input
        raise RuntimeError(f"probe embedding lacks blocks {missing}")
    adata.uns = {}
    add_record(adata.uns, "identifiability_probe",
               params={"model": dict(model), "embed": cfg, "layers": cfg["layers"], "channels": channels,
                       "exclude_flagged": bool(exclude_flagged), "n_plates": len(manifests),
                       "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256(checkpoint)},
               seeds={}, inputs=[*manifests, str(checkpoint)])
    if embedding:
        adata.uns["phenoica"]["embedding"] = sanitize_uns(embedding)
    write_h5ad(adata, out_h5ad)
    log.info("wrote %s: %d probe sites from %d plate(s), layers %s", out_h5ad, adata.n_obs, len(manifests),
             cfg["layers"])

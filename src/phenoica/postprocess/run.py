"""The ``postprocess`` rule: fit one method on the fitting set, transform all wells, write AnnData."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..io import read_h5ad, sanitize_uns, write_h5ad
from ..logs import get_logger
from ..provenance import add_record
from .methods import fitting_mask, make_method

log = get_logger(__name__)

#: obsm entries (ground truth of simulated plates) carried into the output unchanged.
TRUTH_KEYS = ("truth_biology", "truth_batch")


def select_layer(adata: ad.AnnData, layer: str | int | None, source: str = "wells") -> np.ndarray:
    """``X`` for ``layer=None``, else ``obsm["X_layer<k>"]`` (``layer`` as ``k``, ``"layer<k>"`` or
    ``"X_layer<k>"``)."""
    if layer is None or str(layer) == "":
        if adata.X is None:
            raise InputError(source, "has no X")
        X = adata.X
    else:
        match = re.fullmatch(r"(?:X_)?(?:layer)?(\d+)", str(layer))
        key = f"X_layer{match.group(1)}" if match else str(layer)
        if key not in adata.obsm:
            raise InputError(source, f"has no obsm[{key!r}]; available: {sorted(adata.obsm.keys())}")
        X = adata.obsm[key]
    if hasattr(X, "toarray"):
        X = X.toarray()
    return np.asarray(X, dtype=np.float32)


def postprocess_wells(X: np.ndarray, obs: pd.DataFrame, *, method: str, params: dict | None = None,
                      fit_on: str = "all", train_batches: list[str] | None = None):
    """Fit ``method`` on the fitting set of ``X`` and transform every well: the computation of
    the ``postprocess`` rule without the files -> ``(Z float32, fitted method, fitting mask)``."""
    model = make_method(method, **dict(params or {}))
    mask = fitting_mask(obs, fit_on, train_batches)
    log.info("%s: fitting on %d of %d wells (fit_on=%s), %d features", method, int(mask.sum()),
             len(obs), fit_on, X.shape[1])
    model.fit(X[mask], obs.iloc[np.flatnonzero(mask)])
    Z = model.transform(X, obs)
    log.info("%s: %d wells -> %d components", method, Z.shape[0], Z.shape[1])
    return Z, model, mask


def run_postprocess(wells_path: str, *, out_path: str, method: str, params: dict | None = None,
                    fit_on: str = "all", layer: str | None = None,
                    train_batches: list[str] | None = None) -> None:
    """Fit ``method`` on the fitting set of the wells AnnData and write the transformed wells.

    The output has the same ``obs`` (and ground-truth ``obsm`` DataFrames), ``X`` = the
    representation (float32, one variable per component), ``uns["method"]`` = name, state (to
    re-apply without refitting), params (JSON text and a storable copy), fit_on, transductive,
    and a provenance record under ``uns["phenoica"]``.
    """
    params = dict(params or {})
    try:
        adata = read_h5ad(wells_path)
    except (OSError, KeyError) as exc:
        raise InputError(wells_path, f"cannot read as AnnData: {exc}") from exc
    X = select_layer(adata, layer, wells_path)
    obs = adata.obs
    try:
        Z, model, mask = postprocess_wells(X, obs, method=method, params=params, fit_on=fit_on,
                                           train_batches=train_batches)
    except InputError as exc:
        if exc.source and exc.source != str(wells_path):
            raise InputError(wells_path, f"{exc.source}: {exc.problem}") from exc
        raise
    except ConfigError:
        raise

    if model.keeps_features and layer is None and Z.shape[1] == adata.n_vars:
        var_names = [str(v) for v in adata.var_names]
    else:
        var_names = model.component_names(Z.shape[1])
    out = ad.AnnData(X=Z, obs=obs.copy(), var=pd.DataFrame(index=pd.Index(var_names, dtype=str)))
    for key in TRUTH_KEYS:
        if key in adata.obsm:
            out.obsm[key] = adata.obsm[key]
    if "phenoica" in adata.uns:
        out.uns["phenoica"] = adata.uns["phenoica"]
    out.uns["method"] = {
        "name": method,
        "state": sanitize_uns(model.to_state()),
        "params": sanitize_uns(params),
        "params_json": json.dumps(params, sort_keys=True, default=str),
        "fit_on": fit_on,
        "train_batches": sanitize_uns(list(train_batches or [])),
        "layer": "" if layer is None else str(layer),
        "transductive": bool(model.transductive),
        "n_fit": int(mask.sum()),
    }
    seeds = {k: v for k, v in model.params.items() if k == "seed"}
    add_record(out.uns, "postprocess", params={"method": method, "params": model.params,
                                                "fit_on": fit_on, "layer": layer,
                                                "train_batches": train_batches},
               seeds=seeds, inputs=[wells_path])
    write_h5ad(out, out_path)
    log.info("wrote %s (%s)", out_path, _size(out_path))


def _size(path: str) -> str:
    return f"{os.path.getsize(path) / 2**20:.1f} MiB"


def load_method(adata_or_uns: Any):
    """The fitted method stored in a post-processed AnnData (or its ``uns``)."""
    from .methods import method_from_state

    uns = adata_or_uns.uns if hasattr(adata_or_uns, "uns") else adata_or_uns
    if "method" not in uns or "state" not in uns["method"]:
        raise InputError("uns", "has no fitted method (uns['method']['state'])")
    return method_from_state(dict(uns["method"]["state"]))

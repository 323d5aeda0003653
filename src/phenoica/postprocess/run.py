"""The ``postprocess`` rule: fit one method on the fitting set, transform all wells, write AnnData."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import read_h5ad, read_uns_entry, sanitize_uns, write_h5ad
from ..logs import get_logger
from ..provenance import add_record
from .methods import fitting_mask

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


def run_postprocess(wells_path: str, *, out_path: str, method: str, params: dict | None = None,
                    fit_on: str = "all", layer: str | None = None,
                    train_batches: list[str] | None = None, fitted: str | None = None) -> None:
    """Fit ``method`` on the fitting set of the wells AnnData and write the transformed wells.

    With ``fitted`` (config key ``postprocess.fitted``: an earlier run's
    ``postprocess/<model>/<method>.h5ad``) nothing is fitted: the stored fit is applied to the
    wells (:func:`phenoica.tl.apply`), so every well of the earlier run keeps its coordinates and
    every component its meaning; see :func:`run_frozen`.

    Read, :func:`phenoica.tl.postprocess`, write: the notebook verb is the computation. The
    output has the same ``obs`` (and ground-truth ``obsm`` DataFrames), ``X`` = the
    representation (float32, one variable per component), ``uns["method"]`` = name, state (to
    re-apply without refitting), params (JSON text and a storable copy), fit_on, transductive,
    and a provenance record under ``uns["phenoica"]``.
    """
    from .. import tl

    if fitted:
        run_frozen(wells_path, out_path=out_path, method=method, layer=layer, fitted=fitted)
        return
    params = dict(params or {})
    adata = read_h5ad(wells_path)
    use_rep = None if layer is None or str(layer) == "" else layer
    try:
        mask = fitting_mask(adata.obs, fit_on, train_batches)
        log.info("%s: fitting on %d of %d wells (fit_on=%s)", method, int(mask.sum()), adata.n_obs,
                 fit_on)
        tl.postprocess(adata, method, use_rep=use_rep, key_added="postprocess", fit_mask=mask,
                       **params)
    except InputError as exc:
        raise _in_file(exc, wells_path) from exc
    entry = adata.uns["postprocess"]
    meta = {"fit_on": fit_on, "train_batches": sanitize_uns(list(train_batches or [])),
            "layer": "" if layer is None else str(layer), "n_fit": int(mask.sum())}
    full_params = json.loads(str(entry["state"]["params_json"]))
    _write_output(adata, entry, meta, wells_path=wells_path, out_path=out_path,
                  record_params={"method": method, "params": full_params, "fit_on": fit_on,
                                 "layer": layer, "train_batches": train_batches})


def run_frozen(wells_path: str, *, out_path: str, method: str, layer: str | None, fitted: str) -> None:
    """Apply the fit stored in ``fitted`` (a ``postprocess/<model>/<method>.h5ad``) to the wells
    and write the workflow's file. ``uns["method"]`` keeps the stored fit's name, params,
    fit_on, train_batches and n_fit (they describe the fit) and adds ``frozen: True``,
    ``frozen_from`` (the file) and ``frozen_sha256``."""
    from .. import tl
    from ..provenance import file_sha256

    try:  # the stored fit only, not the earlier run's wells
        source = read_uns_entry(fitted, "method") or {}
    except InputError as exc:
        raise InputError(fitted, f"{exc.problem} (config key postprocess.fitted)") from exc
    if "state" not in source:
        raise InputError(fitted, "holds no fitted post-processing method (config key postprocess.fitted)")
    if str(source.get("name")) != method:
        raise InputError(fitted, f"holds a fit of {source.get('name')!r}, not of {method!r} (config key "
                                 "postprocess.fitted)")
    stored_layer = str(source.get("layer", ""))
    if stored_layer != ("" if layer is None else str(layer)):
        raise InputError(fitted, f"was fitted on layer {stored_layer or 'X'!r}, the config's postprocess.layer "
                                 f"is {layer or 'X'!r} (config key postprocess.fitted)")
    adata = read_h5ad(wells_path)
    sha = file_sha256(fitted)
    try:
        tl.apply(adata, dict(source), use_rep=layer or None, key_added="postprocess")
    except InputError as exc:
        raise _in_file(exc, wells_path) from exc
    entry = adata.uns["postprocess"]
    entry["params"], entry["params_json"] = source["params"], str(source["params_json"])
    meta = {"fit_on": str(source["fit_on"]), "train_batches": source.get("train_batches", []),
            "layer": stored_layer, "n_fit": int(source["n_fit"]), "frozen": True,
            "frozen_from": str(fitted), "frozen_sha256": sha}
    log.info("%s: applying the stored fit of %s (sha256 %s, fitted on %d wells) without refitting",
             method, fitted, sha[:12], meta["n_fit"])
    full_params = json.loads(str(entry["state"]["params_json"]))
    _write_output(adata, entry, meta, wells_path=wells_path, out_path=out_path, inputs=[fitted],
                  record_params={"method": method, "params": full_params, "fit_on": meta["fit_on"],
                                 "layer": layer, "frozen_from": str(fitted), "frozen_sha256": sha})


def _in_file(exc: InputError, wells_path: str) -> InputError:
    if exc.source == "adata":  # phenoica.tl's name for the AnnData it was given
        return InputError(wells_path, exc.problem)
    if exc.source and exc.source != str(wells_path):
        return InputError(wells_path, f"{exc.source}: {exc.problem}")
    return exc


def _write_output(adata: ad.AnnData, entry, meta: dict, *, wells_path: str, out_path: str,
                  record_params: dict, inputs: list[str] | None = None) -> None:
    """The workflow's file: ``X`` = ``obsm[entry["obsm_key"]]`` of ``adata`` (as written by a
    :mod:`phenoica.tl` verb), the fitted method under ``uns["method"]``."""
    Z = adata.obsm[entry["obsm_key"]]
    var_names = [str(v) for v in entry["component_names"]]
    out = ad.AnnData(X=Z, obs=adata.obs.copy(), var=pd.DataFrame(index=pd.Index(var_names, dtype=str)))
    for key in TRUTH_KEYS:
        if key in adata.obsm:
            out.obsm[key] = adata.obsm[key]
    if "phenoica" in adata.uns:
        out.uns["phenoica"] = adata.uns["phenoica"]
    out.uns["method"] = {
        "name": str(entry["name"]),
        "state": entry["state"],
        "params": entry["params"],
        "params_json": entry["params_json"],
        "fit_on": meta.pop("fit_on"),
        "train_batches": meta.pop("train_batches"),
        "layer": meta.pop("layer"),
        "transductive": bool(entry["transductive"]),
        "n_fit": meta.pop("n_fit"),
        **meta,
    }
    seeds = {k: v for k, v in record_params["params"].items() if k == "seed"}
    add_record(out.uns, "postprocess", params=record_params, seeds=seeds,
               inputs=[wells_path, *(inputs or [])])
    write_h5ad(out, out_path)
    log.info("%s: %d wells -> %d components; wrote %s (%s)", entry["name"], out.n_obs, out.n_vars,
             out_path, _size(out_path))


def _size(path: str) -> str:
    return f"{os.path.getsize(path) / 2**20:.1f} MiB"


def load_method(adata_or_uns: Any):
    """The fitted method stored in a post-processed AnnData (or its ``uns``)."""
    from .methods import method_from_state

    uns = adata_or_uns.uns if hasattr(adata_or_uns, "uns") else adata_or_uns
    if "method" not in uns or "state" not in uns["method"]:
        raise InputError("uns", "has no fitted method (uns['method']['state'])")
    return method_from_state(dict(uns["method"]["state"]))

"""A scanpy-style API for notebooks: ``phenoica.tl.postprocess``, ``apply`` and ``score``.

>>> import phenoica
>>> phenoica.tl.postprocess(adata, "pca_ica", n_components=32, fit_mask=adata.obs["is_control"])
>>> adata.obsm["X_phenoica_pca_ica"]          # wells x components (float32)
>>> adata.varm["phenoica_pca_ica"]            # features x components loadings (linear methods)
>>> adata.uns["phenoica_pca_ica"]["state"]    # the fitted state: re-apply without refitting
>>> phenoica.tl.apply(new_plates, adata.uns["phenoica_pca_ica"])
>>> phenoica.tl.score(adata, use_rep="X_phenoica_pca_ica")
>>> adata.uns["phenoica_scores"]              # columns method, component, metric, value

The workflow's ``postprocess`` and ``score_separation`` rules call these same functions (read,
verb, write), so a notebook and a workflow run share one code path.

Keys: by default ``obsm["X_phenoica_<method>"]`` (never scanpy's own ``X_pca``, ``X_umap``, ...,
which scanpy overwrites) and ``varm``/``uns["phenoica_<method>"]``; with ``key_added`` all three
use ``key_added`` (scanpy's convention since 1.10).

Loadings: for the methods that are one linear map of their input (``pca``, ``pca_rand``,
``pca_ica``, ``ica_clean``) ``obsm[key] = (X - uns[key]["center"]) @ loadings +
uns[key]["intercept"]`` (up to float32 rounding), with the loadings in ``varm[key]`` when the
input is ``X`` (else in ``uns[key]["loadings"]``: ``varm`` rows are the variables of ``X``).
Methods that correct each batch on its own controls (``centerscale``, ``tvn``, ``tvn_ica``), the
transductive ones (``combat``, ``harmony``) and ``base`` have none.

This module imports numpy/anndata only when a function is called (``import phenoica`` stays
light).
"""

from __future__ import annotations

import json
import os
from typing import Any

#: scanpy's own obsm/varm/uns keys, which ``key_added`` may not take (scanpy overwrites them).
SCANPY_KEYS = frozenset({"X_pca", "X_umap", "X_tsne", "X_diffmap", "X_draw_graph_fr", "X_draw_graph_fa",
                         "X_draw_graph_drl", "X_pca_harmony", "X_phate", "X_mde", "PCs", "pca", "umap",
                         "tsne", "diffmap", "neighbors"})
#: Methods whose output is one linear map of the input (they have loadings).
LINEAR_METHODS = ("pca", "pca_rand", "pca_ica", "ica_clean")
#: uns key of :func:`score`'s table by default.
SCORES_KEY = "phenoica_scores"


def _keys(name: str, key_added: str | None) -> tuple[str, str]:
    """(obsm key, varm/uns key)."""
    from .identifiers import obsm_key

    if key_added is None:
        return obsm_key(name), f"phenoica_{name}"
    key = str(key_added)
    if key in SCANPY_KEYS or key.startswith("X_draw_graph_"):
        from .errors import ConfigError

        raise ConfigError(f"key_added={key!r} is one of scanpy's own keys (scanpy overwrites it); "
                          f"leave key_added unset for {obsm_key(name)!r} or choose another name")
    if "/" in key:
        from .errors import ConfigError

        raise ConfigError(f"key_added={key!r}: AnnData keys may not contain '/'")
    return key, key


def representation(adata, use_rep: str | None = "X", source: str = "adata"):
    """The float32 matrix ``use_rep`` of ``adata``: ``"X"`` (or None) for ``X``, else an obsm key
    (``"X_layer3"``; ``"3"`` / ``"layer3"`` are short for it)."""
    from .postprocess.run import select_layer

    return select_layer(adata, None if use_rep in (None, "", "X") else use_rep, source)


def _fit_rows(adata, fit_mask) -> Any:
    import numpy as np

    if fit_mask is None:
        return np.ones(adata.n_obs, dtype=bool)
    if isinstance(fit_mask, str):
        from .errors import InputError

        if fit_mask not in adata.obs:
            raise InputError("obs", f"has no column {fit_mask!r} (fit_mask)")
        fit_mask = adata.obs[fit_mask]
    mask = np.asarray(fit_mask)
    if mask.dtype != bool or mask.shape != (adata.n_obs,):
        from .errors import InputError

        raise InputError("fit_mask", f"must be {adata.n_obs} booleans (one per row) or an obs column "
                                     f"of them, got dtype {mask.dtype} and shape {mask.shape}")
    return mask


def linear_map(model) -> tuple[Any, Any, Any] | None:
    """``(center (d,), loadings (d, k), intercept (k,))`` with ``transform(X) = (X - center) @
    loadings + intercept`` for a fitted linear method (:data:`LINEAR_METHODS`), computed from its
    fitted state; None for the others."""
    import numpy as np

    if model.name not in LINEAR_METHODS:
        return None
    whitening = model.whitening
    loadings = whitening.projection()
    intercept = np.zeros(loadings.shape[1])
    if model.name == "pca_rand":
        loadings = loadings @ model.rotation.T
    elif model.name in ("pca_ica", "ica_clean"):
        ica = model.ica
        if ica.whitening is not None:  # a second (internal) whitening of the whitened data
            inner = ica.whitening.projection()
            intercept = -(ica.whitening.mean @ inner) @ ica.unmixing.T
            loadings = loadings @ inner @ ica.unmixing.T
        else:
            intercept = -ica.mean @ ica.unmixing.T
            loadings = loadings @ ica.unmixing.T
        if model.name == "ica_clean":
            loadings, intercept = loadings[:, model.keep], intercept[model.keep]
    return whitening.mean.astype(np.float64), loadings, intercept


def _component_names(adata, model, Z, use_rep) -> list[str]:
    if model.keeps_features and use_rep in (None, "", "X") and Z.shape[1] == adata.n_vars:
        return [str(v) for v in adata.var_names]
    return model.component_names(Z.shape[1])


def _write(adata, model, Z, *, use_rep, key_added, entry: dict, copy: bool):
    """Store ``Z``, the loadings and the uns entry in ``adata`` (or a copy); the written AnnData."""
    import numpy as np

    from .io import sanitize_uns
    from .provenance import record

    target = adata.copy() if copy else adata
    obsm_key, key = _keys(model.name, key_added)
    target.obsm[obsm_key] = Z
    names = _component_names(adata, model, Z, use_rep)
    state = model.to_state()
    params = json.loads(state["params_json"])
    uns = {"method": model.name, "name": model.name, "state": sanitize_uns(state),
           "params": sanitize_uns(entry.pop("params", params)),
           "params_json": entry.pop("params_json", json.dumps(params, sort_keys=True, default=str)),
           "use_rep": "X" if use_rep in (None, "") else str(use_rep), "obsm_key": obsm_key,
           "component_names": np.array(names, dtype=object), "transductive": bool(model.transductive)}
    uns.update(entry)
    mapping = linear_map(model)
    if mapping is not None:
        center, loadings, intercept = mapping
        uns["center"], uns["intercept"] = center, np.asarray(intercept, dtype=np.float64)
        if uns["use_rep"] == "X" and loadings.shape[0] == target.n_vars:
            target.varm[key] = loadings.astype(np.float64)
        else:
            uns["loadings"] = loadings.astype(np.float64)
    seeds = {k: v for k, v in model.params.items() if k == "seed"}
    uns["provenance"] = record(uns.pop("stage"), params={"method": model.name, "params": model.params,
                                                         "use_rep": uns["use_rep"], "key": key},
                               seeds=seeds, inputs=uns.pop("inputs", []))
    target.uns[key] = uns
    return target


def postprocess(adata, method: str, *, use_rep: str | None = "X", key_added: str | None = None,
                fit_mask=None, copy: bool = False, **params: Any):
    """Fit post-processing ``method`` (:data:`phenoica.postprocess.METHOD_NAMES`) on the rows of
    ``fit_mask`` (booleans or the name of a boolean obs column; default all) of representation
    ``use_rep`` and transform every row.

    Writes ``obsm["X_phenoica_<method>"]`` (float32), for linear methods the loadings
    ``varm["phenoica_<method>"]`` (n_features x k), and ``uns["phenoica_<method>"]``: method name,
    params, the fitted state (as the workflow's ``uns["method"]["state"]``; :func:`apply`
    re-applies it), component names, ``n_fit`` and a provenance record. ``key_added`` replaces
    all three keys. ``params``: the method's parameters (``config/README.md``). Returns the
    AnnData with ``copy=True`` (``adata`` untouched), else None.
    """
    import numpy as np

    from .postprocess.methods import make_method

    model = make_method(method, **params)
    X = representation(adata, use_rep)
    mask = _fit_rows(adata, fit_mask)
    obs = adata.obs
    model.fit(X[mask], obs.iloc[np.flatnonzero(mask)])
    Z = model.transform(X, obs)
    out = _write(adata, model, Z, use_rep=use_rep, key_added=key_added, copy=copy,
                 entry={"params": dict(params),
                        "params_json": json.dumps(dict(params), sort_keys=True, default=str),
                        "n_fit": int(mask.sum()), "frozen": False, "stage": "tl.postprocess"})
    return out if copy else None


def load_fitted(fitted) -> tuple[Any, dict]:
    """The fitted method in ``fitted`` and where it came from (``{"source", "sha256"}`` for a
    file). ``fitted``: a fitted :class:`phenoica.postprocess.Method`, its state dict
    (``Method.to_state()``), an uns entry holding one under ``"state"`` (``uns["method"]`` of a
    workflow output, ``uns["phenoica_<method>"]`` of :func:`postprocess`), an AnnData with
    ``uns["method"]``, or the path of a workflow ``postprocess/<model>/<method>.h5ad``."""
    from .errors import InputError
    from .postprocess.methods import Method, method_from_state

    if isinstance(fitted, Method):
        if not fitted.fitted:
            raise InputError("fitted", f"method {fitted.name!r} is not fitted")
        return fitted, {}
    origin: dict = {}
    if isinstance(fitted, (str, os.PathLike)):
        from .io import read_uns_entry
        from .provenance import file_sha256

        path = str(fitted)
        fitted = read_uns_entry(path, "method") or {}  # the stored fit only, not the wells
        origin = {"source": path, "sha256": file_sha256(path)}
        where = path
    else:
        where = "fitted"
    if hasattr(fitted, "uns"):
        fitted = fitted.uns.get("method", {})
    state = fitted.get("state", fitted) if hasattr(fitted, "get") else None
    if not hasattr(state, "get") or "params_json" not in state or "name" not in state:
        raise InputError(where, "holds no fitted post-processing method (uns['method']['state'], "
                                "as the workflow's postprocess/<model>/<method>.h5ad has)")
    try:
        return method_from_state(dict(state)), origin
    except (KeyError, ValueError) as exc:
        raise InputError(where, f"the stored method state is incomplete: {exc}") from exc


def apply(adata, fitted, *, use_rep: str | None = "X", key_added: str | None = None,
          copy: bool = False):
    """Apply a stored fit to the rows of ``adata`` without refitting (frozen transform).

    ``fitted``: see :func:`load_fitted` (a state dict, an uns entry, an AnnData or a
    ``postprocess/<model>/<method>.h5ad`` path). Writes the same keys as :func:`postprocess`;
    ``uns[key]`` records ``frozen: True`` and, for a file, its path and sha256. Methods that
    correct each batch on its own controls use the controls of ``adata``; transductive methods
    (ComBat, Harmony) re-run their correction on ``adata``. Returns the AnnData with ``copy=True``.
    """
    model, origin = load_fitted(fitted)
    X = representation(adata, use_rep)
    Z = model.transform(X, adata.obs)
    entry = {"n_fit": 0, "frozen": True, "stage": "tl.apply",
             "frozen_from": origin.get("source", ""), "frozen_sha256": origin.get("sha256", ""),
             "inputs": [origin["source"]] if origin else []}
    out = _write(adata, model, Z, use_rep=use_rep, key_added=key_added, copy=copy, entry=entry)
    return out if copy else None


def _stored_method(adata, use_rep):
    """``(uns entry, fitted method)`` behind representation ``use_rep``: the uns entry whose
    ``obsm_key`` is ``use_rep``, or the workflow output's ``uns["method"]`` for ``X``;
    ``(None, None)`` when there is none."""
    from .postprocess.methods import method_from_state

    if use_rep in (None, "", "X"):
        entry = adata.uns.get("method")
    else:
        entry = next((v for v in adata.uns.values()
                      if hasattr(v, "get") and v.get("obsm_key") == use_rep and "state" in v), None)
    if not entry or "state" not in entry:
        return None, None
    return entry, method_from_state(dict(entry["state"]))


def score(adata, *, use_rep: str | None = "X", key_added: str | None = None, method: str | None = None,
          bio_key: str | None = None, **scores: Any):
    """Separation scores (:func:`phenoica.metrics.separation.compute_scores`) of representation
    ``use_rep``; the long table (columns ``method, component, metric, value``) goes to
    ``uns[key_added]`` (default ``"phenoica_scores"``) and is returned.

    ``scores``: keys of the ``scores`` config section (config/README.md); those not given take the
    schema's defaults. ``method``: the name in the table (default: the stored method's name, else
    ``use_rep``). ``bio_key``: obs column of the biology label (default: the perturbation).
    Ground truth is scored when ``obsm["truth_biology"]`` / ``obsm["truth_batch"]`` exist; ICA
    stability comes from the fitted method stored for ``use_rep`` (see :func:`postprocess`).
    """
    import numpy as np

    from .config import schema_defaults
    from .errors import ConfigError
    from .metrics.separation import compute_scores

    defaults = schema_defaults("scores")
    unknown = sorted(set(scores) - set(defaults))
    if unknown:
        raise ConfigError(f"phenoica.tl.score: unknown scores key(s) {unknown}; known: {sorted(defaults)}")
    Z = representation(adata, use_rep)
    entry, fitted = _stored_method(adata, use_rep)
    stability = threshold = None
    if fitted is not None and fitted.component_stability() is not None:
        stability = np.asarray(fitted.component_stability(), dtype=np.float64)
        threshold = float(fitted.params["stability_threshold"])
        if len(stability) != Z.shape[1]:
            from .errors import InputError

            raise InputError("uns", f"the stored method has {len(stability)} stability values for "
                                    f"{Z.shape[1]} components")
    if use_rep in (None, "", "X"):
        names = list(adata.var_names)
    elif entry is not None:
        names = [str(n) for n in entry["component_names"]]
    else:
        names = None
    name = method or (fitted.name if fitted is not None else str(use_rep))
    truth = {key: adata.obsm[key] for key in ("truth_biology", "truth_batch") if key in adata.obsm}
    long, _ = compute_scores(Z, adata.obs, method=name, names=names, truth=truth, bio_key=bio_key or None,
                             stability=stability, stability_threshold=threshold,
                             **{**defaults, **scores})
    adata.uns[key_added or SCORES_KEY] = long
    return long

"""Post-processing of embeddings: whitening, PCA, ICA, random rotations and batch-correction
baselines, each fitted on a fitting set and re-applicable to new plates from its stored state.

>>> m = make_method("pca_ica", n_components=32, seed=0)
>>> Z = m.fit(X[fit], obs[fit]).transform(X, obs)
>>> m2 = method_from_state(m.to_state())

The names below are loaded from their submodules on first use, so that the workflow's
dry-run checks (``phenoica.postprocess.methods.check_fit_on``) do not import anndata.
"""

from __future__ import annotations

from ..lazy import lazy_getattr

_SOURCES = {
    "ICA": "ica",
    "amari_distance": "ica",
    "fit_ica": "ica",
    "METHOD_NAMES": "methods",
    "METHODS": "methods",
    "Method": "methods",
    "fitting_mask": "methods",
    "make_method": "methods",
    "method_from_state": "methods",
    "load_method": "run",
    "run_postprocess": "run",
    "select_layer": "run",
    "Whitening": "whitening",
    "fit_whitening": "whitening",
}

__all__ = sorted(_SOURCES)

__getattr__ = lazy_getattr(__name__, _SOURCES)

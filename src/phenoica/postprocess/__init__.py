"""Post-processing of embeddings: whitening, PCA, ICA, random rotations and batch-correction
baselines, each fitted on a fitting set and re-applicable to new plates from its stored state.

>>> m = make_method("pca_ica", n_components=32, seed=0)
>>> Z = m.fit(X[fit], obs[fit]).transform(X, obs)
>>> m2 = method_from_state(m.to_state())
"""

from .ica import ICA, amari_distance, fit_ica
from .methods import (
    METHOD_NAMES,
    METHODS,
    Method,
    fitting_mask,
    make_method,
    method_from_state,
)
from .run import load_method, run_postprocess, select_layer
from .whitening import Whitening, fit_whitening

__all__ = [
    "ICA",
    "METHODS",
    "METHOD_NAMES",
    "Method",
    "Whitening",
    "amari_distance",
    "fit_ica",
    "fit_whitening",
    "fitting_mask",
    "load_method",
    "make_method",
    "method_from_state",
    "run_postprocess",
    "select_layer",
]

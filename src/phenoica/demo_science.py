"""Why PCA+ICA does not recover the demo simulator's biological factors (README: "The demo's
science").

The simulator (``phenoica.simulate``) gives every perturbation one mechanism; a mechanism moves
``factors_per_mechanism`` morphological factors together along a fixed direction, and every well
adds Gaussian noise (``well_sd``) to all ten factors. So

- the factors are not the independent sources: the factors of one mechanism move together;
- the mechanisms are not independent either: a well carries exactly one of them (or none), so
  their activities exclude each other;
- the rest of the factor variation is Gaussian, which no rotation can identify.

ICA's premise (independent non-Gaussian sources) fails at the level of the ground truth itself,
before any image or MAE is involved. :func:`mechanism_recovery` measures this on per-well
factor vectors built from the simulator's own design: once with the simulator's exclusive
mechanisms and once with every mechanism switched on independently in each well (the same
directions, strengths and noise), each against a rotation null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

MODES = ("exclusive", "independent")


def mechanism_wells(design: pd.DataFrame, *, mode: str, n_wells: int, well_sd: float,
                    activity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-well factor vectors from a simulator design (``design_screen``).

    ``exclusive`` (the simulator): each well takes one perturbation of the design (controls and
    null perturbations included) uniformly, so it carries at most one mechanism.
    ``independent``: each well switches each mechanism on with probability ``activity``, with
    the strength of a random member of that mechanism. Both add ``N(0, well_sd^2)`` to every
    factor. Returns ``(factors (n_wells x n_factors), mechanism activities (n_wells x
    n_mechanisms))``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rng = np.random.default_rng(seed)
    effects = design[[c for c in design.columns if c.startswith("effect_")]].to_numpy(np.float64)
    mechanisms = sorted(m for m in design["mechanism"].unique() if m != "none")
    directions, strengths = [], []
    for m in mechanisms:
        rows = np.flatnonzero(design["mechanism"].to_numpy() == m)
        s = design["strength"].to_numpy(np.float64)[rows]
        directions.append(effects[rows[0]] / s[0])
        strengths.append(s)
    D = np.stack(directions)
    if mode == "exclusive":
        pick = rng.integers(0, len(design), n_wells)
        mech = design["mechanism"].to_numpy()[pick]
        strength = design["strength"].to_numpy(np.float64)[pick]
        S = np.stack([np.where(mech == m, strength, 0.0) for m in mechanisms], axis=1)
    else:
        on = rng.random((n_wells, len(mechanisms))) < activity
        S = np.stack([on[:, j] * rng.choice(strengths[j], n_wells) for j in range(len(mechanisms))],
                     axis=1)
    T = S @ D + rng.normal(0.0, well_sd, (n_wells, D.shape[1]))
    return T, S


def mechanism_recovery(design: pd.DataFrame, *, n_wells: int, well_sd: float, activity: float,
                       n_rotations: int, seed: int,
                       ica_params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """MCC of PCA+ICA (all factors' components) against the mechanism activities, for both
    modes of :func:`mechanism_wells`, next to ``n_rotations`` random rotations of the same
    whitening. Returns rows ``mode, method, value`` (``method``: ``pca_ica``, ``null_median``,
    ``null_max``, ``percentile``)."""
    from .metrics.matching import mcc
    from .nulls import percentile_in_null
    from .postprocess import make_method
    from .postprocess.ica import random_orthogonal

    rows = []
    for mode in MODES:
        T, S = mechanism_wells(design, mode=mode, n_wells=n_wells, well_sd=well_sd,
                               activity=activity, seed=seed)
        obs = pd.DataFrame({"batch": "b", "perturbation": "p", "is_control": False},
                           index=[f"w{i}" for i in range(len(T))])
        k = T.shape[1]
        X = T.astype(np.float32)
        ica = make_method("pca_ica", n_components=k, seed=seed, **dict(ica_params or {}))
        value = mcc(ica.fit_transform(X, obs), S)
        white = make_method("pca", n_components=k).fit_transform(X, obs).astype(np.float64)
        null = np.array([mcc(white @ random_orthogonal(k, s).T, S) for s in range(n_rotations)])
        rows += [(mode, "pca_ica", value), (mode, "null_median", float(np.median(null))),
                 (mode, "null_max", float(null.max())),
                 (mode, "percentile", percentile_in_null(value, null))]
    return pd.DataFrame(rows, columns=["mode", "method", "value"])

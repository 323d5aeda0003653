"""The screen design: perturbations, their mechanisms and their effects on morphological factors.

A perturbation's effect is a vector in factor space. Members of one mechanism share the
direction and differ in strength (the vector's length); null perturbations and the control have
no effect. The design depends only on the global seed and the design parameters.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import write_tsv
from ..logs import get_logger
from .params import resolve_params, rng_for

log = get_logger(__name__)

#: The five channels in file-token order (RxRx layout ``w1`` .. ``w5``).
CHANNELS: tuple[dict[str, str], ...] = (
    {"name": "DNA", "token": "1"},
    {"name": "ER", "token": "2"},
    {"name": "RNA", "token": "3"},
    {"name": "AGP", "token": "4"},
    {"name": "Mito", "token": "5"},
)
CHANNEL_NAMES: tuple[str, ...] = tuple(c["name"] for c in CHANNELS)

#: Morphological factors, in factor units (0 = control mean; cell-to-cell SD = ``cell_sd``).
#: ``level`` is "cell" (drawn per cell) or "site" (one value per site); ``log_scale`` is how
#: much one factor unit changes the rendered quantity, as a factor exp(log_scale).
FACTORS: dict[str, dict[str, Any]] = {
    "nucleus_size": {"level": "cell", "log_scale": 0.10, "renders": "nucleus radius"},
    "nucleus_elongation": {"level": "cell", "log_scale": 0.12, "renders": "nucleus axis ratio"},
    "cell_size": {"level": "cell", "log_scale": 0.10, "renders": "cell radius"},
    "cell_density": {"level": "site", "log_scale": 0.30, "renders": "mean cells per site"},
    "puncta_density": {"level": "cell", "log_scale": 0.30, "renders": "mitochondrial puncta per cell"},
    "intensity_dna": {"level": "cell", "log_scale": 0.15, "renders": "DNA stain brightness"},
    "intensity_er": {"level": "cell", "log_scale": 0.15, "renders": "ER stain brightness"},
    "intensity_rna": {"level": "cell", "log_scale": 0.15, "renders": "RNA stain brightness"},
    "intensity_agp": {"level": "cell", "log_scale": 0.15, "renders": "actin/Golgi/membrane brightness"},
    "intensity_mito": {"level": "cell", "log_scale": 0.15, "renders": "mitochondria brightness"},
}
FACTOR_NAMES: tuple[str, ...] = tuple(FACTORS)
EFFECT_COLUMNS: tuple[str, ...] = tuple(f"effect_{f}" for f in FACTOR_NAMES)

CONTROL_NAME = "DMSO"
NO_MECHANISM = "none"
#: Doses a biologist records; stronger perturbations were screened at higher doses.
DOSE_LADDER_UM: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)


def design_screen(params: Mapping[str, Any] | None = None, seed: int = 0) -> pd.DataFrame:
    """The perturbations of the screen and their true effects.

    Parameters
    ----------
    params
        Simulator parameters (see ``DEFAULT_PARAMS``); used here: ``mechanism_sizes``,
        ``n_null``, ``factors_per_mechanism``, ``strength_range``.
    seed
        Global seed; the design depends on nothing else.

    Returns
    -------
    DataFrame, one row per perturbation, the control first: ``perturbation``, ``is_control``,
    ``mechanism`` (``"none"`` for the control and null perturbations), ``strength`` (length of
    the effect vector), ``dose_uM``, and one ``effect_<factor>`` column per factor.
    """
    p = resolve_params(params)
    rng = rng_for(seed, "design")
    n_factors = len(FACTOR_NAMES)
    lo, hi = p["strength_range"]

    rows: list[dict[str, Any]] = []
    for m, size in enumerate(p["mechanism_sizes"], start=1):
        chosen = rng.choice(n_factors, size=p["factors_per_mechanism"], replace=False)
        direction = np.zeros(n_factors)
        # magnitudes bounded away from 0 so every chosen factor really moves
        direction[chosen] = rng.choice([-1.0, 1.0], size=chosen.size) * rng.uniform(0.5, 1.0, chosen.size)
        direction /= np.linalg.norm(direction)
        for strength in rng.uniform(lo, hi, size=size):
            rows.append({"mechanism": f"moa{m}", "strength": float(strength),
                         "dose_uM": _dose_for(strength, lo, hi), "effect": strength * direction})
    for _ in range(p["n_null"]):
        rows.append({"mechanism": NO_MECHANISM, "strength": 0.0,
                     "dose_uM": float(rng.choice(DOSE_LADDER_UM)), "effect": np.zeros(n_factors)})

    # names carry no hint of the mechanism
    order = rng.permutation(len(rows))
    width = max(2, len(str(len(rows))))
    records = [{"perturbation": CONTROL_NAME, "is_control": True, "mechanism": NO_MECHANISM,
                "strength": 0.0, "dose_uM": 0.0, "effect": np.zeros(n_factors)}]
    for number, idx in enumerate(order, start=1):
        records.append({"perturbation": f"cmpd{number:0{width}d}", "is_control": False, **rows[idx]})

    effects = np.vstack([r.pop("effect") for r in records])
    design = pd.DataFrame.from_records(records)
    design[list(EFFECT_COLUMNS)] = effects
    design["is_control"] = design["is_control"].astype(bool)
    return design


def _dose_for(strength: float, lo: float, hi: float) -> float:
    frac = 0.5 if hi <= lo else (strength - lo) / (hi - lo)
    rung = min(int(frac * len(DOSE_LADDER_UM)), len(DOSE_LADDER_UM) - 1)
    return DOSE_LADDER_UM[rung]


def related_pairs(design: pd.DataFrame) -> pd.DataFrame:
    """Pairs of perturbations that share a mechanism (the screen's known relationships).

    Returns a DataFrame with ``perturbation_a``, ``perturbation_b`` (in design order) and
    ``relation`` (the mechanism name). Controls and ``"none"`` mechanisms form no pairs.
    """
    missing = {"perturbation", "is_control", "mechanism"} - set(design.columns)
    if missing:
        raise InputError("design", f"missing column(s) {sorted(missing)}")
    treated = design[~design["is_control"].astype(bool) & (design["mechanism"] != NO_MECHANISM)]
    pairs = [
        {"perturbation_a": a, "perturbation_b": b, "relation": mechanism}
        for mechanism, group in treated.groupby("mechanism", sort=True)
        for a, b in itertools.combinations(group["perturbation"].tolist(), 2)
    ]
    return pd.DataFrame(pairs, columns=["perturbation_a", "perturbation_b", "relation"])


def write_design(*, design_path: str | os.PathLike, relations_path: str | os.PathLike,
                 params: Mapping[str, Any] | None = None, seed: int = 0) -> None:
    """Write ``design_screen(params, seed)`` and its ``related_pairs`` as TSV files (atomically)."""
    design = design_screen(params, seed)
    pairs = related_pairs(design)
    write_tsv(design, design_path)
    write_tsv(pairs, relations_path)
    log.info("design: %d perturbations + control, %d related pairs -> %s, %s",
             len(design) - 1, len(pairs), design_path, relations_path)

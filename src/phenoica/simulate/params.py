"""Parameters of the plate simulator: defaults, validation, and stable seeding.

Every random draw of the simulator comes from a generator seeded by the global seed plus the
names that scope it (``"design"``, a batch name, a plate name, a well, a site). Names are hashed
with SHA-256, not Python's salted ``hash``, so runs are reproducible across processes, and a
plate's images never depend on which other plates exist or in which order they are made.
"""

from __future__ import annotations

import copy
import hashlib
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError

PARAMS_SOURCE = "simulate"  # the config section these parameters come from

#: Every simulator parameter with its default (the built-in demo). See ``PARAM_DOCS``.
DEFAULT_PARAMS: dict[str, Any] = {
    # geometry of the screen
    "image_size": 96,
    "n_sites": 2,
    "plate_format": 96,
    "n_rows": 4,
    "n_cols": 8,
    "n_control_wells": 8,
    # biology: the screen design
    "mechanism_sizes": [4, 3, 3],
    "n_null": 2,
    "factors_per_mechanism": 3,
    "strength_range": [1.5, 3.0],
    "well_sd": 0.3,
    "cell_sd": 1.0,
    # biology: cells
    "cells_per_site": 16.0,
    "nucleus_radius": 5.0,
    "cell_radius": 11.0,
    "puncta_per_cell": 20.0,
    # technical (batch) effects
    "batch_effect_scale": 1.0,
    "batch_gain_sd": 0.35,
    "plate_gain_sd": 0.08,
    "offset_mean": 100.0,
    "offset_sd": 40.0,
    "plate_offset_sd": 8.0,
    "background": 40.0,
    "background_sd": 0.5,
    "blur_max": 1.5,
    "plate_blur_sd": 0.2,
    "site_blur_sd": 0.15,
    "vignetting_max": 0.5,
    "edge_effect": 0.2,
    # camera
    "photons": 400.0,
    "adu_per_photon": 4.0,
    "read_noise": 5.0,
}

#: One line per parameter: what it means and its unit.
PARAM_DOCS: dict[str, str] = {
    "image_size": "side of each square image, pixels",
    "n_sites": "imaged fields (sites) per well",
    "plate_format": "plate the wells are taken from: 96 (8 x 12) or 384 (16 x 24)",
    "n_rows": "rows of the plate used, spread evenly from the first to the last row",
    "n_cols": "columns of the plate used, spread evenly from the first to the last column",
    "n_control_wells": "control (DMSO) wells per plate, spread over the used wells",
    "mechanism_sizes": "number of perturbations in each mechanism (one entry per mechanism)",
    "n_null": "perturbations without any effect",
    "factors_per_mechanism": "morphological factors each mechanism shifts",
    "strength_range": "[min, max] length of a perturbation's effect vector, in factor units",
    "well_sd": "well-to-well biological SD of every factor, in factor units",
    "cell_sd": "cell-to-cell SD of every per-cell factor, in factor units",
    "cells_per_site": "mean number of cells per site at cell_density = 0",
    "nucleus_radius": "nucleus radius at nucleus_size = 0, pixels",
    "cell_radius": "cell radius at cell_size = 0, pixels",
    "puncta_per_cell": "mean mitochondrial puncta per cell at puncta_density = 0",
    "batch_effect_scale": "multiplies every technical effect size below (0 = no batch effects)",
    "batch_gain_sd": "SD of the per-batch, per-channel log gain",
    "plate_gain_sd": "SD of the per-plate, per-channel log gain on top of the batch gain",
    "offset_mean": "camera offset, ADU",
    "offset_sd": "SD of the per-batch, per-channel offset, ADU",
    "plate_offset_sd": "SD of the per-plate, per-channel change of offset, ADU",
    "background": "background light per pixel, photons",
    "background_sd": "SD of the per-batch, per-channel log background",
    "blur_max": "largest per-batch defocus blur (Gaussian sigma, pixels); drawn uniformly from [0, max]",
    "plate_blur_sd": "SD of the per-plate change of defocus blur, pixels",
    "site_blur_sd": "SD of the per-site change of defocus blur (autofocus jitter), pixels",
    "vignetting_max": "largest per-batch illumination fall-off at the image corners (fraction)",
    "edge_effect": "typical extra intensity in edge wells (fraction; per plate between 0.5x and 1.5x)",
    "photons": "photons per pixel of a unit-intensity structure",
    "adu_per_photon": "camera conversion factor, ADU per photon",
    "read_noise": "typical camera read noise, ADU (per batch between ~0.6x and 1.6x)",
}

_INT_KEYS = {"image_size", "n_sites", "plate_format", "n_rows", "n_cols", "n_control_wells",
             "n_null", "factors_per_mechanism"}
_PLATE_SHAPES = {96: (8, 12), 384: (16, 24)}


class SimulateParamsError(InputError, ConfigError):
    """A bad ``simulate`` parameter: an InputError naming the key, and a ConfigError."""


def resolve_params(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``params`` over ``DEFAULT_PARAMS`` and validate; raise SimulateParamsError if bad."""
    if params is not None and not isinstance(params, Mapping):
        raise SimulateParamsError(PARAMS_SOURCE, f"expected a mapping of parameters, got "
                                                 f"{type(params).__name__}")
    given = dict(params or {})
    unknown = sorted(set(given) - set(DEFAULT_PARAMS))
    if unknown:
        raise SimulateParamsError(
            PARAMS_SOURCE,
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(sorted(DEFAULT_PARAMS))}",
        )
    merged = copy.deepcopy(DEFAULT_PARAMS)
    merged.update(copy.deepcopy(given))
    _validate(merged)
    return merged


def plate_shape(plate_format: int) -> tuple[int, int]:
    """Rows and columns of a plate format (96 -> (8, 12))."""
    return _PLATE_SHAPES[plate_format]


def _fail(key: str, problem: str) -> None:
    raise SimulateParamsError(f"{PARAMS_SOURCE}.{key}", problem)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


def _validate(p: dict[str, Any]) -> None:
    for key, value in p.items():
        if key in ("mechanism_sizes", "strength_range"):
            continue
        if key in _INT_KEYS:
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
                _fail(key, f"must be an integer, got {value!r}")
            p[key] = int(value)
        elif not _is_number(value):
            _fail(key, f"must be a finite number, got {value!r}")
        elif value < 0:
            _fail(key, f"must be >= 0, got {value!r}")
        else:
            p[key] = float(value)

    if p["plate_format"] not in _PLATE_SHAPES:
        _fail("plate_format", f"must be one of {sorted(_PLATE_SHAPES)}, got {p['plate_format']}")
    max_rows, max_cols = plate_shape(p["plate_format"])
    if not 1 <= p["n_rows"] <= max_rows:
        _fail("n_rows", f"must be between 1 and {max_rows} for a {p['plate_format']}-well plate")
    if not 1 <= p["n_cols"] <= max_cols:
        _fail("n_cols", f"must be between 1 and {max_cols} for a {p['plate_format']}-well plate")
    if p["image_size"] < 16:
        _fail("image_size", f"must be at least 16 pixels, got {p['image_size']}")
    if p["n_sites"] < 1:
        _fail("n_sites", f"must be at least 1, got {p['n_sites']}")
    n_wells = p["n_rows"] * p["n_cols"]
    if not 0 <= p["n_control_wells"] < n_wells:
        _fail("n_control_wells", f"must be between 0 and {n_wells - 1} (the plate has {n_wells} "
                                 f"wells and needs at least one treated well)")
    if p["n_null"] < 0:
        _fail("n_null", f"must be >= 0, got {p['n_null']}")

    sizes = p["mechanism_sizes"]
    if not isinstance(sizes, (list, tuple)) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in sizes):
        _fail("mechanism_sizes", f"must be a list of integers >= 1, got {sizes!r}")
    p["mechanism_sizes"] = [int(s) for s in sizes]
    if sum(p["mechanism_sizes"]) + p["n_null"] < 1:
        _fail("mechanism_sizes", "the screen needs at least one perturbation "
                                 "(mechanism_sizes and n_null are both empty)")

    strength = p["strength_range"]
    if (not isinstance(strength, (list, tuple)) or len(strength) != 2
            or not all(_is_number(s) for s in strength)
            or not 0 <= strength[0] <= strength[1]):
        _fail("strength_range", f"must be [min, max] with 0 <= min <= max, got {strength!r}")
    p["strength_range"] = [float(strength[0]), float(strength[1])]

    from .design import FACTORS  # local import: design imports this module

    if not 1 <= p["factors_per_mechanism"] <= len(FACTORS):
        _fail("factors_per_mechanism", f"must be between 1 and {len(FACTORS)}")
    for key in ("nucleus_radius", "cell_radius", "photons", "adu_per_photon"):
        if p[key] <= 0:
            _fail(key, f"must be > 0, got {p[key]}")
    if p["cell_radius"] <= p["nucleus_radius"]:
        _fail("cell_radius", f"must be larger than nucleus_radius ({p['nucleus_radius']})")
    if p["vignetting_max"] * p["batch_effect_scale"] >= 1:
        _fail("vignetting_max", "times batch_effect_scale must stay below 1 "
                                "(the corners would receive no light)")


def stable_int(text: str) -> int:
    """A 64-bit integer from ``text`` that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def rng_for(seed: int, *scope: str | int) -> np.random.Generator:
    """A generator seeded only by ``seed`` and ``scope`` (e.g. ``"plate", "P1", "B03"``)."""
    if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)) or seed < 0:
        raise SimulateParamsError("seed", f"must be a non-negative integer, got {seed!r}")
    entropy = [int(seed)] + [stable_int(f"{type(s).__name__}:{s}") for s in scope]
    return np.random.default_rng(np.random.SeedSequence(entropy))

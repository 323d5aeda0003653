"""Synthetic image datasets with known, independent generative factors.

Two procedural renderers, both deterministic given the factor values (so all variation in an
image comes from its factors, as in dSprites and Shapes3D) and vectorised over images:

``shapes``
    a dSprites/Shapes3D-like scene: one object (square, ellipse or triangle) of some scale,
    rotation, x/y position and hue on a background of another hue. RGB.
``cells``
    one centred cell in the style of the plate simulator (``phenoica.simulate.render``):
    nucleus size, nucleus elongation, cell size, orientation, DNA and cytoplasm stain
    intensities and the strength of a mitochondrial puncta texture. Channels DNA, ER
    (cytoplasm) and Mito. The plate simulator renders whole sites whose cells share a well's
    factors and whose count is random, so it cannot give one image per independent factor
    draw; this renderer draws each cell's factors independently instead.

Every factor takes ``n_values`` evenly spaced values (a grid, like dSprites) and is drawn
independently and uniformly per image. Values are stored in natural units (``factor_ranges``)
and as integer codes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_path
from ..logs import get_logger, progress

log = get_logger(__name__)

SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "triangle")


@dataclass(frozen=True)
class FactorSpec:
    """One generative factor: name, kind (``categorical``/``ordinal``), value range, grid size."""

    name: str
    kind: str
    low: float
    high: float
    n_values: int

    def values(self) -> np.ndarray:
        if self.kind == "categorical":
            return np.arange(self.n_values, dtype=np.float64)
        return np.linspace(self.low, self.high, self.n_values)


SHAPES_FACTORS: tuple[FactorSpec, ...] = (
    FactorSpec("shape", "categorical", 0, len(SHAPE_NAMES) - 1, len(SHAPE_NAMES)),
    FactorSpec("scale", "ordinal", 0.28, 0.5, 6),  # circumradius, fraction of the half width
    # below the square's 90-degree symmetry, so every rotation is distinguishable
    FactorSpec("rotation", "ordinal", 0.0, np.deg2rad(75.0), 8),
    # objects stay inside the frame: |position| + largest circumradius < 1
    FactorSpec("pos_x", "ordinal", -0.45, 0.45, 8),
    FactorSpec("pos_y", "ordinal", -0.45, 0.45, 8),
    FactorSpec("object_hue", "ordinal", 0.0, 0.85, 8),  # below 1 so hues do not wrap around
    FactorSpec("background_hue", "ordinal", 0.0, 0.85, 6),
)

CELLS_FACTORS: tuple[FactorSpec, ...] = (
    FactorSpec("nucleus_size", "ordinal", 0.16, 0.30, 6),  # radius, fraction of the half width
    FactorSpec("nucleus_elongation", "ordinal", 1.2, 2.0, 6),  # axis ratio (area preserving)
    FactorSpec("cell_size", "ordinal", 0.55, 0.85, 6),
    FactorSpec("orientation", "ordinal", 0.0, np.deg2rad(150.0), 8),  # below the 180-degree symmetry
    FactorSpec("intensity_dna", "ordinal", 0.35, 1.0, 6),
    FactorSpec("intensity_er", "ordinal", 0.2, 0.8, 6),
    FactorSpec("puncta_texture", "ordinal", 0.0, 1.0, 6),
)


@dataclass
class FactorDataset:
    """Images with their generative factors.

    ``images``: float32 (n, channels, size, size) in [0, 1]; ``codes``: int (n, K) grid index of
    each factor; ``factors``: float64 (n, K) the factor values in natural units.
    """

    name: str
    images: np.ndarray
    codes: np.ndarray
    factors: np.ndarray
    specs: tuple[FactorSpec, ...]
    channel_names: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def factor_kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.specs)

    def __len__(self) -> int:
        return len(self.images)

    def factor_frame(self) -> pd.DataFrame:
        """Factor values as a DataFrame (categorical factors as their names for ``shape``)."""
        df = pd.DataFrame(self.factors, columns=list(self.factor_names))
        for spec in self.specs:
            if spec.kind == "categorical":
                labels = SHAPE_NAMES if spec.name == "shape" else [str(i) for i in range(spec.n_values)]
                df[spec.name] = pd.Categorical.from_codes(df[spec.name].astype(int), categories=list(labels))
        return df

    def subset(self, rows: np.ndarray) -> FactorDataset:
        return FactorDataset(self.name, self.images[rows], self.codes[rows], self.factors[rows],
                             self.specs, self.channel_names, dict(self.meta))


# --------------------------------------------------------------------------------------------
# sampling and rendering
# --------------------------------------------------------------------------------------------
def sample_codes(specs: tuple[FactorSpec, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent uniform grid indices (n x K)."""
    return np.stack([rng.integers(0, s.n_values, n) for s in specs], axis=1).astype(np.int64)


def codes_to_values(specs: tuple[FactorSpec, ...], codes: np.ndarray) -> np.ndarray:
    return np.stack([s.values()[codes[:, k]] for k, s in enumerate(specs)], axis=1)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1] (x to the right, y down), float32 (size, size)."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return xx, yy


def _col(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)[:, None, None]


def _coverage(signed_distance: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance (image units, < 0 inside):
    a linear ramp one pixel wide."""
    pixel = 2.0 / size
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0)


def _local(xx: np.ndarray, yy: np.ndarray, cx: np.ndarray, cy: np.ndarray, theta: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = xx[None] - _col(cx), yy[None] - _col(cy)
    cos, sin = _col(np.cos(theta)), _col(np.sin(theta))
    return dx * cos + dy * sin, -dx * sin + dy * cos


def render_shapes(values: np.ndarray, *, size: int = 32) -> np.ndarray:
    """Render shapes scenes from factor values (n x 7, ``SHAPES_FACTORS`` order) -> (n, 3, size, size)."""
    import matplotlib.colors as mcolors

    values = np.asarray(values, dtype=np.float64)
    shape, scale, rotation, pos_x, pos_y, obj_hue, bg_hue = values.T
    xx, yy = _grid(size)
    u, v = _local(xx, yy, pos_x, pos_y, rotation)
    s = _col(scale)
    u, v = u / s, v / s  # object units: circumradius 1
    # signed distances in object units (exact or close to it near the boundary)
    square = np.maximum(np.abs(u), np.abs(v)) - 0.72
    semi_minor = 0.55
    ellipse = (np.sqrt(u * u + (v / semi_minor) ** 2) - 1.0) * semi_minor
    angles = np.deg2rad([90.0, 210.0, 330.0])
    triangle = np.max(np.stack([u * np.cos(a) + v * np.sin(a) for a in angles]), axis=0) - 0.5
    which = shape.astype(int)[:, None, None]
    sdf = np.where(which == 0, square, np.where(which == 1, ellipse, triangle)) * s
    cov = _coverage(sdf, size)[:, None]  # (n, 1, H, W)

    def rgb(hue: np.ndarray, sat: float, val: float) -> np.ndarray:
        hsv = np.stack([hue, np.full_like(hue, sat), np.full_like(hue, val)], axis=1)
        return mcolors.hsv_to_rgb(hsv).astype(np.float32)[:, :, None, None]

    obj, bg = rgb(obj_hue, 0.85, 0.95), rgb(bg_hue, 0.5, 0.45)
    return (bg * (1.0 - cov) + obj * cov).astype(np.float32)


# fixed positions of the puncta in the cell's own frame (radius as a fraction of the cell
# radius, angle): the texture factor scales them, the geometry factors move them with the cell
_PUNCTA = np.random.default_rng(20240611).uniform([0.55, 0.0], [0.9, 2 * np.pi], size=(14, 2))


def render_cells_factors(values: np.ndarray, *, size: int = 32) -> np.ndarray:
    """Render single centred cells from factor values (n x 7, ``CELLS_FACTORS`` order)
    -> (n, 3, size, size), channels DNA, ER, Mito."""
    values = np.asarray(values, dtype=np.float64)
    nuc_r, elong, cell_r, theta, i_dna, i_er, texture = values.T
    n = len(values)
    xx, yy = _grid(size)
    zeros = np.zeros(n)
    u, v = _local(xx, yy, zeros, zeros, theta)
    # nucleus: area-preserving ellipse along the orientation; the cell is a rounder ellipse
    # along the same axis, so orientation shows in both
    na, nb = _col(nuc_r * np.sqrt(elong)), _col(nuc_r / np.sqrt(elong))
    nucleus = _coverage((np.sqrt((u / na) ** 2 + (v / nb) ** 2) - 1.0) * _col(nuc_r), size)
    cell_aspect = 1.25
    ca, cb = _col(cell_r * np.sqrt(cell_aspect)), _col(cell_r / np.sqrt(cell_aspect))
    rho = np.sqrt((u / ca) ** 2 + (v / cb) ** 2)
    cell = _coverage((rho - 1.0) * _col(cell_r), size)
    # DNA: nucleus, slightly brighter at the centre (chromatin)
    nuc_rho = np.sqrt((u / na) ** 2 + (v / nb) ** 2)
    dna = _col(i_dna) * nucleus * (0.8 + 0.2 * np.clip(1.0 - nuc_rho, 0.0, 1.0))
    # ER: cytoplasm, enriched around the nucleus, dim over it
    er = _col(i_er) * cell * (0.5 + 0.5 * np.exp(-1.5 * rho)) * (1.0 - 0.7 * nucleus)
    # Mito: puncta at fixed positions of the cell frame
    sigma = 0.07
    mito = np.zeros_like(u)
    for radius, angle in _PUNCTA:
        pu, pv = radius * np.cos(angle) * ca, radius * np.sin(angle) * cb
        mito += np.exp(-((u - pu) ** 2 + (v - pv) ** 2) / (2 * sigma * sigma))
    mito = _col(texture) * np.clip(mito, 0.0, 1.0) * cell
    return np.clip(np.stack([dna, er, mito], axis=1), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Renderer:
    specs: tuple[FactorSpec, ...]
    render: Callable[..., np.ndarray]
    channels: tuple[str, ...]


DATASETS: dict[str, _Renderer] = {
    "shapes": _Renderer(SHAPES_FACTORS, render_shapes, ("R", "G", "B")),
    "cells": _Renderer(CELLS_FACTORS, render_cells_factors, ("DNA", "ER", "Mito")),
}


def make_factor_dataset(name: str, n: int, *, size: int = 32, seed: int = 0,
                        n_values: Mapping[str, int] | None = None, chunk: int = 512) -> FactorDataset:
    """Draw ``n`` images of dataset ``name`` (``shapes`` or ``cells``) with independent factors.

    ``n_values`` overrides the grid size of ordinal factors by name. Deterministic in ``seed``.
    """
    if name not in DATASETS:
        raise InputError("synthetic.datasets", f"unknown synthetic dataset {name!r}; known: {sorted(DATASETS)}")
    if n < 1 or size < 8:
        raise InputError("synthetic", f"need n >= 1 and size >= 8, got n={n}, size={size}")
    renderer = DATASETS[name]
    specs = renderer.specs
    if n_values:
        known = {s.name: s for s in specs}
        unknown = sorted(set(n_values) - set(known))
        if unknown:
            raise InputError("synthetic.n_values", f"unknown factors {unknown} for {name}; known: {sorted(known)}")
        specs = tuple(FactorSpec(s.name, s.kind, s.low, s.high, int(n_values[s.name]))
                      if s.name in n_values and s.kind == "ordinal" else s for s in specs)
        if any(s.n_values < 2 for s in specs):
            raise InputError("synthetic.n_values", "every factor needs at least 2 values")
    rng = np.random.default_rng(seed)
    codes = sample_codes(specs, n, rng)
    values = codes_to_values(specs, codes)
    images = np.empty((n, len(renderer.channels), size, size), dtype=np.float32)
    for start in progress(range(0, n, chunk), desc=f"render {name}", total=-(-n // chunk)):
        images[start:start + chunk] = renderer.render(values[start:start + chunk], size=size)
    log.info("rendered %d %s images of %dx%d (seed %d)", n, name, size, size, seed)
    return FactorDataset(name, images, codes, values, specs, renderer.channels,
                         {"seed": seed, "size": size})


# --------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------
_KEYS = ("images", "codes", "factors", "factor_names", "factor_kinds", "factor_low", "factor_high",
         "factor_n_values", "channel_names", "name", "seed", "size")


def save_factor_dataset(ds: FactorDataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as a compressed .npz (images as uint8), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                images=np.round(np.clip(ds.images, 0, 1) * 255).astype(np.uint8),
                codes=ds.codes, factors=ds.factors,
                factor_names=np.array(ds.factor_names), factor_kinds=np.array(ds.factor_kinds),
                factor_low=np.array([s.low for s in ds.specs]), factor_high=np.array([s.high for s in ds.specs]),
                factor_n_values=np.array([s.n_values for s in ds.specs]),
                channel_names=np.array(ds.channel_names), name=np.array(ds.name),
                seed=np.array(int(ds.meta.get("seed", -1))), size=np.array(ds.images.shape[-1]),
            )
    return Path(path)


def load_factor_dataset(path: str | os.PathLike) -> FactorDataset:
    """Read a dataset written by :func:`save_factor_dataset`; InputError names a bad file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _KEYS if k not in data.files]
            if missing:
                raise InputError(path, f"not a phenoica factor dataset (missing {missing})")
            arrays = {k: data[k] for k in _KEYS}
    except InputError:
        raise
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read factor dataset: {err}") from err
    images = arrays["images"]
    if images.ndim != 4 or len(images) != len(arrays["codes"]) or arrays["codes"].shape != arrays["factors"].shape:
        raise InputError(path, "inconsistent shapes of images, codes and factors")
    specs = tuple(FactorSpec(str(nm), str(kd), float(lo), float(hi), int(nv)) for nm, kd, lo, hi, nv in
                  zip(arrays["factor_names"], arrays["factor_kinds"], arrays["factor_low"],
                      arrays["factor_high"], arrays["factor_n_values"]))
    return FactorDataset(str(arrays["name"]), images.astype(np.float32) / 255.0, arrays["codes"].astype(np.int64),
                         arrays["factors"].astype(np.float64), specs,
                         tuple(str(c) for c in arrays["channel_names"]),
                         {"seed": int(arrays["seed"]), "size": int(arrays["size"]), "path": str(path)})

"""Simulated plates: plate layout, technical (batch/plate) parameters, and writing a plate.

Output of ``simulate_plate`` for plate ``P`` (RxRx layout, channel tokens 1..5 =
DNA, ER, RNA, AGP, Mito; wells like ``B03``; sites 1-based)::

    {images_root}/P/{well}_s{site}_w{token}.tif  uint16, one per site and channel
    {platemap_path}  CSV: well, perturbation, is_control, mechanism, dose_uM
    {truth_path}     TSV: site_id, plate, well, site, bio_<factor>..., batch_<parameter>...

Randomness is scoped (see ``params.rng_for``): the design by the seed only; batch parameters by
the seed and the batch name; plate parameters and the plate layout by the seed and the plate
name; well biology by seed, plate and well; cells and camera noise by seed, plate, well, site.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from ..identifiers import check_identifier, well_name
from ..io import atomic_path, write_tsv
from ..logs import get_logger, progress
from .design import CHANNEL_NAMES, CHANNELS, CONTROL_NAME, EFFECT_COLUMNS, FACTOR_NAMES, design_screen
from .params import DEFAULT_PARAMS, plate_shape, resolve_params, rng_for
from .render import SiteOptics, apply_optics, render_cells

log = get_logger(__name__)

PLATEMAP_COLUMNS = ("well", "perturbation", "is_control", "mechanism", "dose_uM")


@dataclass(frozen=True)
class BatchParameters:
    """Technical parameters shared by every plate of one batch (experiment/run)."""

    log_gain: np.ndarray  # per channel
    offset: np.ndarray  # per channel, ADU
    background: np.ndarray  # per channel, photons
    blur_sigma: float
    vignetting: float
    vignetting_center: tuple[float, float]
    read_noise: float


@dataclass(frozen=True)
class PlateParameters:
    """Technical parameters of one plate, on top of its batch's."""

    log_gain: np.ndarray  # per channel
    offset_delta: np.ndarray  # per channel, ADU
    blur_delta: float
    edge_multiplier: float  # applied to edge wells only


def batch_parameters(batch: str, params: Mapping[str, Any] | None = None, seed: int = 0
                     ) -> BatchParameters:
    """Draw the technical parameters of ``batch`` (depends on seed, batch name and params)."""
    p = resolve_params(params)
    rng = rng_for(seed, "batch", batch)
    scale = p["batch_effect_scale"]
    n = len(CHANNEL_NAMES)
    # draw everything first (fixed order), then scale, so scale 0 gives no batch effects at all
    log_gain = rng.normal(0.0, 1.0, n)
    offset = rng.normal(0.0, 1.0, n)
    log_background = rng.normal(0.0, 1.0, n)
    blur = rng.uniform(0.0, 1.0)
    vignetting = rng.uniform(0.0, 1.0)
    center = rng.normal(0.0, 0.2, 2)
    log_read = rng.uniform(-0.5, 0.5)
    return BatchParameters(
        log_gain=p["batch_gain_sd"] * scale * log_gain,
        offset=np.clip(p["offset_mean"] + p["offset_sd"] * scale * offset, 0.0, None),
        background=p["background"] * np.exp(p["background_sd"] * scale * log_background),
        blur_sigma=float(p["blur_max"] * scale * blur),
        vignetting=float(p["vignetting_max"] * scale * vignetting),
        vignetting_center=(float(scale * center[0]), float(scale * center[1])),
        read_noise=float(p["read_noise"] * np.exp(scale * log_read)),
    )


def plate_parameters(plate: str, params: Mapping[str, Any] | None = None, seed: int = 0
                     ) -> PlateParameters:
    """Draw the technical parameters of ``plate`` (depends on seed, plate name and params)."""
    p = resolve_params(params)
    rng = rng_for(seed, "plate-technical", plate)
    scale = p["batch_effect_scale"]
    log_gain = rng.normal(0.0, 1.0, len(CHANNEL_NAMES))
    blur = rng.normal(0.0, 1.0)
    edge = rng.uniform(0.5, 1.5)
    offset = rng.normal(0.0, 1.0, len(CHANNEL_NAMES))
    return PlateParameters(
        log_gain=p["plate_gain_sd"] * scale * log_gain,
        offset_delta=p["plate_offset_sd"] * scale * offset,
        blur_delta=float(p["plate_blur_sd"] * scale * blur),
        edge_multiplier=float(1.0 + p["edge_effect"] * scale * edge),
    )


def plate_wells(params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The wells used on every plate: the top-left ``n_rows`` x ``n_cols`` block of the plate.

    Returns columns ``well``, ``row``, ``col`` (1-based), ``is_edge`` (on the outer ring of
    the full plate, where evaporation acts) in row-major order.
    """
    p = resolve_params(params)
    max_rows, max_cols = plate_shape(p["plate_format"])
    rows, cols = np.meshgrid(np.arange(1, p["n_rows"] + 1), np.arange(1, p["n_cols"] + 1), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    return pd.DataFrame({
        "well": [well_name(r, c) for r, c in zip(rows, cols)],
        "row": rows,
        "col": cols,
        "is_edge": (rows == 1) | (rows == max_rows) | (cols == 1) | (cols == max_cols),
    })


def plate_layout(plate: str, params: Mapping[str, Any] | None = None, seed: int = 0,
                 design: pd.DataFrame | None = None) -> pd.DataFrame:
    """The plate map of ``plate``: which perturbation is in which well.

    Controls sit at fixed positions spread evenly over the used wells (as on real plates);
    the treated wells hold every perturbation about equally often, in a plate-specific random
    order. Columns: ``PLATEMAP_COLUMNS``, in well order.
    """
    p = resolve_params(params)
    design = design_screen(p, seed) if design is None else design
    wells = plate_wells(p)
    n_wells = len(wells)
    control_idx = np.unique(np.floor(np.linspace(0, n_wells - 1, p["n_control_wells"]) + 0.5).astype(int)) \
        if p["n_control_wells"] else np.zeros(0, dtype=int)
    treated_idx = np.setdiff1d(np.arange(n_wells), control_idx)

    rng = rng_for(seed, "plate-layout", plate)
    treated = design.loc[~design["is_control"], "perturbation"].to_numpy()
    n_blocks = -(-len(treated_idx) // len(treated))
    # one shuffled copy of the list per block, so counts differ by at most one
    sequence = np.concatenate([rng.permutation(treated) for _ in range(n_blocks)])[:len(treated_idx)]
    if len(treated_idx) < len(treated):
        log.warning("plate %s: only %d treated wells for %d perturbations; %d perturbation(s) "
                    "left off this plate", plate, len(treated_idx), len(treated),
                    len(treated) - len(treated_idx))

    perturbation = np.empty(n_wells, dtype=object)
    perturbation[control_idx] = CONTROL_NAME
    perturbation[treated_idx] = sequence
    info = design.set_index("perturbation")
    layout = pd.DataFrame({"well": wells["well"], "perturbation": perturbation})
    layout["is_control"] = layout["perturbation"].map(info["is_control"]).astype(bool)
    layout["mechanism"] = layout["perturbation"].map(info["mechanism"])
    layout["dose_uM"] = layout["perturbation"].map(info["dose_uM"]).astype(float)
    return layout[list(PLATEMAP_COLUMNS)]


def site_optics(batch: BatchParameters, plate: PlateParameters, is_edge: bool,
                rng: np.random.Generator, p: dict[str, Any]) -> SiteOptics:
    """Combine batch, plate and a per-site focus jitter into the parameters applied to a site."""
    jitter = p["site_blur_sd"] * p["batch_effect_scale"] * rng.normal()
    return SiteOptics(
        gain=np.exp(batch.log_gain + plate.log_gain),
        offset=np.clip(batch.offset + plate.offset_delta, 0.0, None),
        background=batch.background,
        blur_sigma=float(max(0.0, batch.blur_sigma + plate.blur_delta + jitter)),
        vignetting=batch.vignetting,
        vignetting_center=batch.vignetting_center,
        read_noise=batch.read_noise,
        edge_multiplier=plate.edge_multiplier if is_edge else 1.0,
    )


def _write_tiff(path: Path, image: np.ndarray) -> None:
    # no description/date tags, so the same pixels always give the same bytes
    tifffile.imwrite(path, image, photometric="minisblack", metadata=None)


def image_name(well: str, site: int, token: str) -> str:
    """RxRx file name of one site and channel, e.g. ``B03_s1_w2.tif``."""
    return f"{well}_s{site}_w{token}.tif"


def simulate_plate(plate: str, batch: str, *, images_root: str | os.PathLike,
                   platemap_path: str | os.PathLike, truth_path: str | os.PathLike,
                   params: Mapping[str, Any] | None = None, seed: int = 0) -> None:
    """Render one plate: its TIFFs, its plate map and its ground-truth table.

    Parameters
    ----------
    plate, batch
        Identifiers (letters, digits, ``_.-``). The plate's images depend on the seed, the batch
        name and the plate name only, never on other plates.
    images_root
        The plate's images go to ``{images_root}/{plate}/`` (rendered into a temporary folder
        and renamed, so a crash leaves no half plate; an earlier folder is replaced).
    platemap_path
        CSV with ``well, perturbation, is_control, mechanism, dose_uM`` (what a biologist knows).
    truth_path
        TSV with one row per site: ``site_id`` (``plate:well:site``), ``plate``, ``well``,
        ``site``, ``bio_<factor>`` (the site's true factor values: means over its cells) and
        ``batch_<parameter>`` (the technical parameters applied to the site).
    params
        Simulator parameters (the config's ``simulate`` section); missing keys take
        ``DEFAULT_PARAMS``. Unknown keys raise an error listing the allowed ones.

        Geometry: ``image_size`` (96 px), ``n_sites`` (2), ``plate_format`` (96),
        ``n_rows`` x ``n_cols`` (4 x 8, the top-left block incl. edge wells),
        ``n_control_wells`` (8). Design: ``mechanism_sizes`` ([4, 3, 3]), ``n_null`` (2),
        ``factors_per_mechanism`` (3), ``strength_range`` ([1.5, 3.0] factor units),
        ``well_sd`` (0.3), ``cell_sd`` (1.0). Cells: ``cells_per_site`` (16),
        ``nucleus_radius`` (5 px), ``cell_radius`` (11 px), ``puncta_per_cell`` (20).
        Technical: ``batch_effect_scale`` (1.0 multiplies all of them), ``batch_gain_sd``
        (0.35, log), ``plate_gain_sd`` (0.08, log), ``offset_mean`` / ``offset_sd`` /
        ``plate_offset_sd`` (100 / 40 / 8 ADU), ``background`` (40 photons),
        ``background_sd`` (0.5, log), ``blur_max`` (1.5 px), ``plate_blur_sd`` (0.2 px),
        ``site_blur_sd`` (0.15 px), ``vignetting_max`` (0.5), ``edge_effect`` (0.2). Camera: ``photons`` (400),
        ``adu_per_photon`` (4), ``read_noise`` (5 ADU). See ``params.PARAM_DOCS``.
    seed
        Global seed.
    """
    plate = check_identifier(plate, "plate", source="simulate_plate")
    batch = check_identifier(batch, "batch", source="simulate_plate")
    p = resolve_params(params)
    started = time.perf_counter()
    changed = {k: v for k, v in p.items() if v != DEFAULT_PARAMS[k]}
    log.info("simulating plate %s (batch %s), seed %d, parameters changed from the defaults: %s",
             plate, batch, seed, json.dumps(changed, sort_keys=True))

    design = design_screen(p, seed)
    layout = plate_layout(plate, p, seed, design)
    wells = plate_wells(p).set_index("well")
    batch_params = batch_parameters(batch, p, seed)
    plate_params = plate_parameters(plate, p, seed)
    effects = design.set_index("perturbation")[list(EFFECT_COLUMNS)].astype(float)
    n_factors = len(FACTOR_NAMES)

    truth_rows: list[dict[str, Any]] = []
    plate_dir = Path(images_root) / plate
    with atomic_path(plate_dir, is_dir=True) as tmp_dir:
        for well, perturbation in progress(zip(layout["well"], layout["perturbation"]),
                                           desc=f"simulate {plate}", total=len(layout)):
            well_rng = rng_for(seed, "well", plate, well)
            well_factors = (effects.loc[perturbation].to_numpy()
                            + well_rng.normal(0.0, p["well_sd"], n_factors))
            for site in range(1, p["n_sites"] + 1):
                images, site_factors = render_cells(rng_for(seed, "cells", plate, well, site),
                                                    well_factors, p)
                camera_rng = rng_for(seed, "camera", plate, well, site)
                optics = site_optics(batch_params, plate_params, bool(wells.at[well, "is_edge"]),
                                     camera_rng, p)
                pixels = apply_optics(images, optics, camera_rng, p)
                for channel, plane in zip(CHANNELS, pixels):
                    _write_tiff(tmp_dir / image_name(well, site, channel["token"]), plane)
                truth_rows.append({
                    "site_id": f"{plate}:{well}:{site}", "plate": plate, "well": well, "site": site,
                    **{f"bio_{f}": float(v) for f, v in zip(FACTOR_NAMES, site_factors)},
                    **optics.as_columns(),
                })

    with atomic_path(platemap_path) as tmp:
        layout.to_csv(tmp, index=False)
    write_tsv(pd.DataFrame.from_records(truth_rows), truth_path)
    log.info("plate %s (batch %s): %d wells x %d sites x %d channels in %.1f s -> %s",
             plate, batch, len(layout), p["n_sites"], len(CHANNELS),
             time.perf_counter() - started, plate_dir)


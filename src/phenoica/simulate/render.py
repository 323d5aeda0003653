"""Rendering one site: cells (biology) into float images, then the microscope (technical effects).

Everything is vectorised over cells and pixels with numpy and scipy.ndimage: per site the cost
is a few arrays of shape (cells, size, size) and a handful of Gaussian filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .design import CHANNEL_NAMES, FACTOR_NAMES, FACTORS

_F = {name: i for i, name in enumerate(FACTOR_NAMES)}
_CELL_LEVEL = np.array([FACTORS[f]["level"] == "cell" for f in FACTOR_NAMES])
_INTENSITY_FACTOR = {"DNA": "intensity_dna", "ER": "intensity_er", "RNA": "intensity_rna",
                     "AGP": "intensity_agp", "Mito": "intensity_mito"}
# relative brightness of each stain at factor 0 (fraction of ``photons``)
_CHANNEL_BRIGHTNESS = {"DNA": 1.0, "ER": 0.7, "RNA": 0.8, "AGP": 0.7, "Mito": 0.9}
_BASE_NUCLEUS_LOG_ASPECT = 0.25  # control nuclei are slightly oval, as in real cells
_MAX_CELLS_FACTOR = 3.0  # cap on cells per site, relative to the mean, against runaway densities


def _scale(name: str) -> float:
    return FACTORS[name]["log_scale"]


@dataclass(frozen=True)
class SiteOptics:
    """The technical parameters applied to one site (all channels in ``CHANNEL_NAMES`` order)."""

    gain: np.ndarray  # multiplicative ADU gain per channel
    offset: np.ndarray  # camera offset per channel, ADU
    background: np.ndarray  # background light per channel, photons
    blur_sigma: float  # defocus, Gaussian sigma in pixels
    vignetting: float  # fractional fall-off at the image corners
    vignetting_center: tuple[float, float]  # (x, y) shift of the optical centre, fraction of half size
    read_noise: float  # ADU
    edge_multiplier: float  # extra light in edge wells (1.0 elsewhere)

    def as_columns(self) -> dict[str, float]:
        """The parameters as ``batch_<parameter>`` truth-table columns."""
        cols = {
            "batch_blur_sigma": float(self.blur_sigma),
            "batch_vignetting": float(self.vignetting),
            "batch_vignetting_cx": float(self.vignetting_center[0]),
            "batch_vignetting_cy": float(self.vignetting_center[1]),
            "batch_read_noise": float(self.read_noise),
            "batch_edge_multiplier": float(self.edge_multiplier),
        }
        for what in ("gain", "offset", "background"):
            values = getattr(self, what)
            for name, value in zip(CHANNEL_NAMES, values):
                cols[f"batch_{what}_{name.lower()}"] = float(value)
        return cols


def render_cells(rng: np.random.Generator, well_factors: np.ndarray, p: dict[str, Any]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Render the cells of one site as noise-free stain images.

    Parameters
    ----------
    rng
        The site's generator (consumed in a fixed order, so a site is reproducible).
    well_factors
        The well's factor values (perturbation effect + well-to-well variation), one per factor.
    p
        Resolved simulator parameters.

    Returns
    -------
    images
        float32 (channels, size, size), in units of ``photons`` (1.0 = a unit-intensity structure).
    site_factors
        The site's true factor values: the mean over its cells for per-cell factors (the well
        value when the site has no cells) and the well value for site-level factors.
    """
    size = p["image_size"]
    well_factors = np.asarray(well_factors, dtype=float)
    density = well_factors[_F["cell_density"]]
    mean_cells = p["cells_per_site"] * np.exp(_scale("cell_density") * density)
    n_cells = int(min(rng.poisson(mean_cells), np.ceil(_MAX_CELLS_FACTOR * p["cells_per_site"]) + 5))
    nuclei_xy = _place_cells(rng, n_cells, size, min_distance=2.0 * p["nucleus_radius"])
    n_cells = len(nuclei_xy)

    cell_factors = np.repeat(well_factors[None, :], n_cells, axis=0)
    cell_factors[:, _CELL_LEVEL] += rng.normal(0.0, p["cell_sd"],
                                               size=(n_cells, int(_CELL_LEVEL.sum())))
    site_factors = cell_factors.mean(axis=0) if n_cells else well_factors.copy()
    site_factors[~_CELL_LEVEL] = well_factors[~_CELL_LEVEL]

    images = np.zeros((len(CHANNEL_NAMES), size, size), dtype=np.float32)
    if n_cells == 0:
        return images, site_factors

    cells = _cell_geometry(rng, nuclei_xy, cell_factors, p)
    brightness = {ch: np.exp(_scale(f) * cell_factors[:, _F[f]]).astype(np.float32)
                  for ch, f in _INTENSITY_FACTOR.items()}

    raster = _rasterize(cells, {ch: brightness[ch] for ch in ("DNA", "RNA")}, size)
    nucleus_any, owner, own_rho = raster["nucleus"], raster["owner"], raster["own_rho"]
    own_radius = cells["cr"][owner]
    cell_prof = np.maximum(_sigmoid((1.0 - own_rho) * own_radius / 0.8), nucleus_any)
    perinuclear = np.exp(-1.8 * np.clip(own_rho, 0.0, None))

    def texture(sigma: float) -> np.ndarray:
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma,
                                        mode="wrap")
        return noise / max(float(noise.std()), 1e-6)

    # DNA: nuclei with chromatin texture
    dna = raster["nucleus_DNA"] * np.clip(1.0 + 0.2 * texture(1.0), 0.0, None)

    # ER: reticular, enriched around the nucleus, dim over it
    er = (brightness["ER"][owner] * cell_prof * (0.35 + 0.65 * perinuclear)
          * np.clip(1.0 + 0.5 * texture(1.2), 0.0, None) * (1.0 - 0.6 * nucleus_any))

    # RNA: nucleoli, a dim nucleoplasm and cytoplasm
    n_nucleoli = 1 + rng.poisson(1.5, size=n_cells)
    which = np.repeat(np.arange(n_cells), n_nucleoli)
    nx, ny = _points_in_ellipse(rng, which, cells["nx"], cells["ny"], cells["na"], cells["nb"],
                                cells["ntheta"], rho_range=(0.0, 0.5))
    nucleoli = _splat(nx, ny, brightness["RNA"][which] * rng.uniform(0.7, 1.0, which.size), size, 1.0)
    rna = (nucleoli + 0.25 * raster["nucleus_RNA"]
           + 0.3 * brightness["RNA"][owner] * cell_prof * (1.0 - nucleus_any)
           * np.clip(1.0 + 0.4 * texture(1.0), 0.0, None))

    # AGP: membranes (outer rim and borders between touching cells), Golgi next to the nucleus
    border = np.zeros((size, size), dtype=bool)
    border[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    border[:, :-1] |= owner[:, 1:] != owner[:, :-1]
    border[1:, :] |= owner[1:, :] != owner[:-1, :]
    border[:-1, :] |= owner[1:, :] != owner[:-1, :]
    border &= cell_prof > 0.5
    rim = np.exp(-(((own_rho - 1.0) * own_radius) ** 2))
    membrane = np.clip(rim + 1.5 * ndimage.gaussian_filter(border.astype(np.float32), 0.7), 0.0, 1.0)
    golgi_angle = rng.uniform(0.0, 2.0 * np.pi, n_cells)
    golgi_x = cells["nx"] + 1.3 * cells["nr"] * np.cos(golgi_angle)
    golgi_y = cells["ny"] + 1.3 * cells["nr"] * np.sin(golgi_angle)
    golgi = _splat(golgi_x, golgi_y, 0.6 * brightness["AGP"], size, 1.6)
    agp = brightness["AGP"][owner] * (0.8 * membrane + 0.15 * cell_prof) + golgi

    # Mito: puncta through the cytoplasm (their number is the puncta_density factor)
    rate = p["puncta_per_cell"] * np.exp(_scale("puncta_density") * cell_factors[:, _F["puncta_density"]])
    n_puncta = rng.poisson(rate)
    which = np.repeat(np.arange(n_cells), n_puncta)
    px, py = _points_in_ellipse(rng, which, cells["cx"], cells["cy"], cells["ca"], cells["cb"],
                                cells["ctheta"], rho_range=(0.3, 0.95))
    puncta = _splat(px, py, brightness["Mito"][which] * rng.uniform(0.5, 1.0, which.size), size, 0.8)
    mito = puncta + 0.2 * brightness["Mito"][owner] * cell_prof * perinuclear

    for c, (name, img) in enumerate(zip(CHANNEL_NAMES, (dna, er, rna, agp, mito))):
        images[c] = _CHANNEL_BRIGHTNESS[name] * img
    return images, site_factors


def apply_optics(images: np.ndarray, optics: SiteOptics, rng: np.random.Generator,
                 p: dict[str, Any]) -> np.ndarray:
    """Image ``images`` (from ``render_cells``) through the microscope and camera -> uint16.

    Order: edge-well brightening, defocus blur, background, vignetting, shot noise (Poisson in
    photons), per-channel gain and offset, read noise, rounding and clipping to 16 bits.
    """
    n_channels, height, width = images.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    half = np.float32(height / 2.0)
    cx = width / 2.0 + optics.vignetting_center[0] * half
    cy = height / 2.0 + optics.vignetting_center[1] * half
    radius2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * half**2)  # 1.0 at the corners
    illumination = np.clip(1.0 - optics.vignetting * radius2, 0.05, None)

    out = np.empty(images.shape, dtype=np.uint16)
    for c in range(n_channels):
        signal = images[c] * np.float32(p["photons"])
        if optics.blur_sigma > 0.05:
            signal = ndimage.gaussian_filter(signal, optics.blur_sigma, mode="reflect")
        light = (signal + optics.background[c]) * optics.edge_multiplier * illumination
        photons = rng.poisson(np.clip(light, 0.0, None).astype(np.float64))
        adu = (optics.gain[c] * p["adu_per_photon"] * photons + optics.offset[c]
               + optics.read_noise * rng.standard_normal(photons.shape))
        out[c] = np.clip(np.rint(adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _place_cells(rng: np.random.Generator, n_cells: int, size: int, min_distance: float) -> np.ndarray:
    """Up to ``n_cells`` nucleus centres, uniform over the image, at least ``min_distance`` apart."""
    if n_cells == 0:
        return np.zeros((0, 2))
    candidates = rng.uniform(0.0, size, size=(6 * n_cells + 10, 2))
    dist = np.hypot(*(candidates[:, None, :] - candidates[None, :, :]).transpose(2, 0, 1))
    free = np.ones(len(candidates), dtype=bool)
    chosen: list[int] = []
    # greedy thinning over a handful of candidates (not pixels); stops once enough are placed
    for i in range(len(candidates)):
        if free[i]:
            chosen.append(i)
            if len(chosen) == n_cells:
                break
            free &= dist[i] >= min_distance
    return candidates[chosen]


def _cell_geometry(rng: np.random.Generator, nuclei_xy: np.ndarray, cell_factors: np.ndarray,
                   p: dict[str, Any]) -> dict[str, np.ndarray]:
    n = len(nuclei_xy)
    nr = p["nucleus_radius"] * np.exp(_scale("nucleus_size") * cell_factors[:, _F["nucleus_size"]])
    log_aspect = (_BASE_NUCLEUS_LOG_ASPECT
                  + _scale("nucleus_elongation") * cell_factors[:, _F["nucleus_elongation"]])
    aspect = np.exp(log_aspect)  # area-preserving, so size and elongation stay separate factors
    ntheta = rng.uniform(0.0, np.pi, n)
    cr = p["cell_radius"] * np.exp(_scale("cell_size") * cell_factors[:, _F["cell_size"]])
    cell_aspect = np.exp(rng.uniform(0.0, 0.3, n))
    ctheta = ntheta + rng.normal(0.0, 0.4, n)  # cells tend to elongate along their nucleus
    shift = rng.normal(0.0, 0.12, size=(n, 2)) * cr[:, None]  # nuclei sit off-centre
    harm_amp = rng.normal(0.0, 0.05, size=(n, 3))
    harm_phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 3))
    f32 = np.float32
    return {
        "nx": nuclei_xy[:, 0].astype(f32), "ny": nuclei_xy[:, 1].astype(f32), "nr": nr.astype(f32),
        "na": (nr * np.sqrt(aspect)).astype(f32), "nb": (nr / np.sqrt(aspect)).astype(f32),
        "ntheta": ntheta.astype(f32),
        "cx": (nuclei_xy[:, 0] - shift[:, 0]).astype(f32), "cy": (nuclei_xy[:, 1] - shift[:, 1]).astype(f32),
        "cr": cr.astype(f32), "ca": (cr * np.sqrt(cell_aspect)).astype(f32),
        "cb": (cr / np.sqrt(cell_aspect)).astype(f32), "ctheta": ctheta.astype(f32),
        "harm_amp": harm_amp.astype(f32), "harm_phase": harm_phase.astype(f32),
    }


def _rasterize(cells: dict[str, np.ndarray], nucleus_brightness: dict[str, np.ndarray], size: int
               ) -> dict[str, np.ndarray]:
    """Per-pixel cell ownership and nucleus images, computed in a window around each cell.

    Returns ``owner`` (index of the cell a pixel belongs to: nuclei claim their pixels, else the
    cell whose normalised boundary is farthest), ``own_rho`` (the owner's normalised radius,
    1.0 on its boundary; large far from all cells), ``nucleus`` (soft nucleus mask) and
    ``nucleus_<channel>`` (nuclei weighted by each cell's brightness in that channel).
    """
    big = np.float32(1e3)
    best = np.full((size, size), big, dtype=np.float32)
    owner = np.zeros((size, size), dtype=np.int64)
    own_rho = np.full((size, size), big, dtype=np.float32)
    nucleus = np.zeros((size, size), dtype=np.float32)
    weighted = {ch: np.zeros((size, size), dtype=np.float32) for ch in nucleus_brightness}
    axis = np.arange(size, dtype=np.float32)
    harm_amp, harm_phase = cells["harm_amp"], cells["harm_phase"]
    # boundary wobble can push a cell out by at most 1 / min(boundary) of its ellipse
    reach = 1.6 / np.clip(1.0 - np.abs(harm_amp).sum(axis=1), 0.5, None)
    for i in range(len(cells["cx"])):
        cell_r = reach[i] * max(cells["ca"][i], cells["cb"][i]) + 2.0
        nuc_r = 1.6 * max(cells["na"][i], cells["nb"][i]) + 2.0
        x0 = int(max(0, np.floor(min(cells["cx"][i] - cell_r, cells["nx"][i] - nuc_r))))
        x1 = int(min(size, np.ceil(max(cells["cx"][i] + cell_r, cells["nx"][i] + nuc_r)) + 1))
        y0 = int(max(0, np.floor(min(cells["cy"][i] - cell_r, cells["ny"][i] - nuc_r))))
        y1 = int(min(size, np.ceil(max(cells["cy"][i] + cell_r, cells["ny"][i] + nuc_r)) + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        xs, ys = axis[None, x0:x1], axis[y0:y1, None]
        window = (slice(y0, y1), slice(x0, x1))
        nuc_rho = _ellipse_rho(xs, ys, cells["nx"][i], cells["ny"][i], cells["na"][i], cells["nb"][i],
                               cells["ntheta"][i])
        cell_rho = _ellipse_rho(xs, ys, cells["cx"][i], cells["cy"][i], cells["ca"][i], cells["cb"][i],
                                cells["ctheta"][i], harmonics=(harm_amp[i], harm_phase[i]))
        # soft edges about one pixel wide: the slope of rho is ~1/radius per pixel
        prof = _sigmoid((1.0 - nuc_rho) * (cells["nr"][i] / 0.7))
        np.maximum(nucleus[window], prof, out=nucleus[window])
        for ch, values in nucleus_brightness.items():
            np.maximum(weighted[ch][window], prof * values[i], out=weighted[ch][window])
        metric = np.where(nuc_rho < 1.0, nuc_rho - 2.0, cell_rho)
        closer = metric < best[window]
        best[window] = np.where(closer, metric, best[window])
        owner[window] = np.where(closer, i, owner[window])
        own_rho[window] = np.where(closer, cell_rho, own_rho[window])
    return {"owner": owner, "own_rho": own_rho, "nucleus": nucleus,
            **{f"nucleus_{ch}": img for ch, img in weighted.items()}}


def _ellipse_rho(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, a: float, b: float, theta: float,
                 harmonics: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Normalised elliptical radius on the grid ``ys`` x ``xs``: 1.0 on the ellipse's boundary.

    ``harmonics`` (amplitudes, phases), each of length k, wobble the boundary with angular
    modes 2..k+1, so cells are not perfect ellipses.
    """
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    dx, dy = xs - np.float32(cx), ys - np.float32(cy)
    u = (dx * cos + dy * sin) / np.float32(a)
    v = (dy * cos - dx * sin) / np.float32(b)
    rho = np.sqrt(u * u + v * v)
    if harmonics is not None:
        amp, phase = harmonics
        # cos/sin of m * angle by the angle-addition recurrence: cheaper than arctan2 + cos
        inv = 1.0 / np.maximum(rho, np.float32(1e-6))
        cos1, sin1 = u * inv, v * inv
        cos_m, sin_m = cos1, sin1
        boundary = np.ones_like(rho)
        for k in range(len(amp)):
            cos_m, sin_m = cos_m * cos1 - sin_m * sin1, sin_m * cos1 + cos_m * sin1  # m = k + 2
            # amp cos(m angle + phase) = amp cos(phase) cos(m angle) - amp sin(phase) sin(m angle)
            boundary += (np.float32(amp[k] * np.cos(phase[k])) * cos_m
                         - np.float32(amp[k] * np.sin(phase[k])) * sin_m)
        rho *= 1.0 / np.clip(boundary, 0.5, None)
    return rho


def _points_in_ellipse(rng: np.random.Generator, which: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                       a: np.ndarray, b: np.ndarray, theta: np.ndarray,
                       rho_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random points in the annulus rho_range of each point's ellipse ``which``."""
    lo, hi = rho_range
    rho = np.sqrt(rng.uniform(lo * lo, hi * hi, which.size))
    angle = rng.uniform(0.0, 2.0 * np.pi, which.size)
    u = rho * np.cos(angle) * a[which]
    v = rho * np.sin(angle) * b[which]
    cos, sin = np.cos(theta[which]), np.sin(theta[which])
    return cx[which] + u * cos - v * sin, cy[which] + u * sin + v * cos


def _splat(x: np.ndarray, y: np.ndarray, weights: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Gaussian spots of peak height ``weights`` at (x, y); points outside the image are dropped."""
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    inside = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
    flat = np.bincount(iy[inside] * size + ix[inside], weights=weights[inside], minlength=size * size)
    spots = ndimage.gaussian_filter(flat.reshape(size, size).astype(np.float32), sigma, mode="constant")
    return spots * np.float32(2.0 * np.pi * sigma * sigma)  # unit peak per unit weight

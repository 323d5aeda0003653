"""Reading sites from manifests for training and embedding: channel stacks, intensity
normalisation (per image or per plate), tiling and random crops.

A manifest has one row per site with a ``path_<channel>`` column per channel (see
docs/architecture.md). Everything here works on numpy arrays in worker processes; the model
only ever sees float32 tensors.

Image dtypes (what a model sees; README "Image bit depth"): every image is read in its stored
dtype and converted to float32 with its values unchanged (uint8 0-255, uint16 raw counts, float
as stored). Then, per ``normalization``:

* ``image`` / ``plate``: each channel is standardised with the site's or the plate's mean and
  standard deviation, so the stored scale does not matter: a uint16 image, the same values as
  float, or the image scaled to [0, 1] give the same model input (to float rounding).
* ``none`` (models that normalise inside, e.g. OpenPhenom, which divides by 255 and standardises
  every crop channel with eps 1e-5): the values go in as stored, except float images whose
  pixels all lie in [0, 1] (scikit-image's ``img_as_float`` convention), which are multiplied by
  :data:`UNIT_FLOAT_SCALE` (65535) so that they give the numbers of the 16-bit image they were
  made from. Otherwise eps would flatten them: a [0, 1] crop with standard deviation 0.05 would
  reach OpenPhenom with standard deviation 0.06 instead of 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..io import read_table
from ..io.images import read_image

NORM_EPS = 1e-6
REQUIRED_COLUMNS = ("site_id", "plate", "well", "site")


def path_column(channel: str) -> str:
    return f"path_{channel}"


def read_manifest(path: str | os.PathLike, channels: Sequence[str], *,
                  exclude_flagged: bool = False) -> pd.DataFrame:
    """Read and check one plate manifest; optionally drop sites with ``qc_pass == False``."""
    try:
        df = read_table(path)
    except FileNotFoundError as exc:
        raise InputError(path, "manifest not found") from exc
    except Exception as exc:  # pyarrow/pandas raise many types for corrupt files
        raise InputError(path, f"cannot read manifest ({type(exc).__name__}: {exc})") from exc
    needed = [*REQUIRED_COLUMNS, *(path_column(c) for c in channels)]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InputError(path, f"manifest lacks column(s) {', '.join(missing)} "
                               f"(channels configured: {', '.join(channels)})")
    if df.empty:
        raise InputError(path, "manifest has no sites")
    if df["site_id"].duplicated().any():
        dup = df.loc[df["site_id"].duplicated(), "site_id"].iloc[0]
        raise InputError(path, f"site_id {dup!r} occurs more than once")
    if exclude_flagged and "qc_pass" in df.columns:
        df = df[df["qc_pass"].astype(bool)]
        if df.empty:
            raise InputError(path, "every site is flagged by QC (qc_pass false); nothing to embed "
                                   "(set qc.exclude_flagged: false, or relax qc.max_saturated_fraction, "
                                   "qc.max_zero_fraction, qc.min_focus_ratio)")
    return df.reset_index(drop=True)


#: Float images whose pixels all lie in [0, 1] are multiplied by this before a model that sees
#: raw intensities (``normalization: none``): the 16-bit scale of the image they came from.
UNIT_FLOAT_SCALE = 65535.0


def read_site(paths: Sequence[str], *, unit_float_scale: float | None = None) -> np.ndarray:
    """Stack one image per channel into (C, H, W) float32; all channels must share a shape.

    Values are kept as stored, except that with ``unit_float_scale`` a float image whose pixels
    all lie in [0, 1] is multiplied by it (see the module docstring).
    """
    planes = [read_image(p) for p in paths]
    shape = planes[0].shape
    for p, plane in zip(paths, planes):
        if plane.shape != shape:
            raise InputError(p, f"image shape {plane.shape} differs from the site's first channel "
                                f"{paths[0]} {shape}")
    if unit_float_scale is not None:
        planes = [plane * np.float32(unit_float_scale) if is_unit_float(plane) else plane
                  for plane in planes]
    return np.stack(planes).astype(np.float32, copy=False)


def is_unit_float(image: np.ndarray) -> bool:
    """A float image with every pixel in [0, 1]."""
    return bool(np.issubdtype(image.dtype, np.floating) and image.size
                and image.min() >= 0 and image.max() <= 1)


def load_site(paths: Sequence[str], normalization: str,
              stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One site as the model gets it: :func:`read_site` (float images in [0, 1] put on the
    16-bit scale when ``normalization`` is ``none``), then :func:`normalize_site`."""
    scale = UNIT_FLOAT_SCALE if normalization == "none" else None
    return normalize_site(read_site(paths, unit_float_scale=scale), normalization, stats)


def normalize_site(img: np.ndarray, mode: str, stats: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> np.ndarray:
    """``image``: each channel to zero mean, unit variance over the site; ``plate``: with the
    plate's channel statistics ``stats = (mean, std)``; ``none``: unchanged."""
    if mode == "none":
        return img
    if mode == "image":
        # float64 accumulators without a float64 copy of the image (this runs per site in workers)
        flat = img.reshape(img.shape[0], -1)
        mean = flat.mean(axis=1, dtype=np.float64)
        centred = flat - mean[:, None].astype(np.float32)
        std = np.sqrt(np.einsum("ij,ij->i", centred, centred, dtype=np.float64) / flat.shape[1])
        scale = (1.0 / np.maximum(std, NORM_EPS)).astype(np.float32)
        return (centred * scale[:, None]).reshape(img.shape)
    if mode == "plate":
        if stats is None:
            raise ValueError("plate normalisation needs the plate's channel statistics")
        mean, std = stats
    else:
        raise ValueError(f"unknown normalization {mode!r}; expected image, plate or none")
    scale = (1.0 / np.maximum(std, NORM_EPS)).astype(np.float32)
    return (img - mean[:, None, None].astype(np.float32)) * scale[:, None, None]


def plate_channel_stats(path_lists: Sequence[Sequence[str]], *, max_sites: int = 64
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over (an evenly spaced subset of) a plate's sites."""
    n = len(path_lists)
    if n == 0:
        raise ValueError("no sites to compute plate statistics from")
    picks = np.unique(np.linspace(0, n - 1, num=min(n, max(1, max_sites))).round().astype(int))
    total = total_sq = None
    count = 0
    for index in picks:
        img = read_site(path_lists[index]).astype(np.float64)
        flat = img.reshape(img.shape[0], -1)
        total = flat.sum(axis=1) if total is None else total + flat.sum(axis=1)
        total_sq = (flat ** 2).sum(axis=1) if total_sq is None else total_sq + (flat ** 2).sum(axis=1)
        count += flat.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return mean, std


def tile_positions(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets along one axis; a last tile is added flush with the edge so every pixel is
    covered."""
    if length < crop:
        raise ValueError(f"image side {length} is smaller than the crop size {crop}")
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


def tile_site(img: np.ndarray, crop: int, stride: int) -> np.ndarray:
    """(C, H, W) -> (T, C, crop, crop) tiles, row-major."""
    ys = tile_positions(img.shape[1], crop, stride)
    xs = tile_positions(img.shape[2], crop, stride)
    return np.stack([img[:, y:y + crop, x:x + crop] for y in ys for x in xs])


@dataclass(frozen=True)
class SiteError:
    """An InputError raised in a DataLoader worker, carried to the main process as data (the
    loader would otherwise re-raise it as a RuntimeError holding a formatted traceback)."""

    source: str | None
    problem: str

    def error(self) -> InputError:
        return InputError(self.source, self.problem)


class SiteTiles(Dataset):
    """Embedding input: item ``i`` -> ``(tiles (T, C, crop, crop) float32 tensor, i)``.

    Runs in DataLoader workers, so TIFF decoding, normalisation and tiling overlap the model.
    Unreadable inputs come back as :class:`SiteError`.
    """

    def __init__(self, path_lists: Sequence[Sequence[str]], *, crop: int, stride: int,
                 normalization: str, stats: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.path_lists = [list(p) for p in path_lists]
        self.crop, self.stride = crop, stride
        self.normalization, self.stats = normalization, stats

    def __len__(self) -> int:
        return len(self.path_lists)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | SiteError:
        paths = self.path_lists[index]
        try:
            img = load_site(paths, self.normalization, self.stats)
            try:
                tiles = tile_site(img, self.crop, self.stride)
            except ValueError as exc:
                raise InputError(paths[0], str(exc)) from exc
        except InputError as exc:
            return SiteError(exc.source, exc.problem)
        return torch.from_numpy(np.ascontiguousarray(tiles)), index


def lower_worker_priority(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers yield the CPU to the model's threads. They run
    batches ahead (prefetch), so on a busy or small machine they fill the gaps instead of
    stalling the forward pass; with idle cores this changes nothing."""
    try:
        os.nice(10)
    except OSError:  # not permitted on some systems; priority is only an optimisation
        pass


def collate_sites(items: list) -> tuple[torch.Tensor, torch.Tensor] | SiteError:
    """Concatenate the tiles of several sites; second tensor = site index of every tile."""
    for item in items:
        if isinstance(item, SiteError):
            return item
    tiles = torch.cat([t for t, _ in items])
    owner = torch.cat([torch.full((t.shape[0],), i, dtype=torch.long) for t, i in items])
    return tiles, owner


class SiteCrops(Dataset):
    """Training input: item ``(epoch, site)`` -> ``crops_per_site`` random crops of that site.

    Crop offsets come from ``numpy.random.default_rng((seed, epoch, site))``, so the data a run
    sees depend only on the seed -- not on worker count, rank or resumption.
    """

    def __init__(self, path_lists: Sequence[Sequence[str]], *, crop: int, crops_per_site: int,
                 normalization: str, stats: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
                 seed: int = 0, cache: bool = False) -> None:
        self.path_lists = [list(p) for p in path_lists]
        self.crop = crop
        self.crops_per_site = crops_per_site
        self.normalization = normalization
        self.stats = list(stats) if stats is not None else [None] * len(self.path_lists)
        self.seed = seed
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.path_lists)

    def load(self, site: int) -> np.ndarray:
        if self._cache is not None and site in self._cache:
            return self._cache[site]
        paths = self.path_lists[site]
        img = load_site(paths, self.normalization, self.stats[site])
        if img.shape[1] < self.crop or img.shape[2] < self.crop:
            raise InputError(paths[0], f"image {img.shape[1]}x{img.shape[2]} is smaller than the "
                                       f"training crop {self.crop}")
        if self._cache is not None:
            self._cache[site] = img
        return img

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, site = key
        img = self.load(site)
        rng = np.random.default_rng((self.seed, epoch, site))
        ys = rng.integers(0, img.shape[1] - self.crop + 1, size=self.crops_per_site)
        xs = rng.integers(0, img.shape[2] - self.crop + 1, size=self.crops_per_site)
        crops = np.stack([img[:, y:y + self.crop, x:x + self.crop] for y, x in zip(ys, xs)])
        return torch.from_numpy(np.ascontiguousarray(crops))


def collate_crops(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(items)


def manifest_path_lists(df: pd.DataFrame, channels: Sequence[str]) -> list[list[str]]:
    cols = [path_column(c) for c in channels]
    return df[cols].astype(str).values.tolist()

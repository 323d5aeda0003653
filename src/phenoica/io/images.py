"""Reading single-channel microscopy images (TIFF, PNG) as 2-D numpy arrays.

Every failure is an :class:`~phenoica.errors.InputError` that names the file and says what is
wrong (missing, unreadable, truncated, corrupt, unsupported compression, not one 2-D plane,
NaN/inf pixels), so a user can find the bad file among thousands. Files are only ever opened
for reading.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError

TIFF_SUFFIXES = {".tif", ".tiff"}
PNG_SUFFIXES = {".png"}
IMAGE_SUFFIXES = TIFF_SUFFIXES | PNG_SUFFIXES


def read_image(path: str | os.PathLike, *, check_finite: bool = True) -> np.ndarray:
    """Read one single-channel image as a 2-D array in its stored dtype.

    Parameters
    ----------
    path
        A ``.tif``/``.tiff`` or ``.png`` file holding one 2-D plane.
    check_finite
        For float images, refuse NaN or infinite pixels.

    Raises
    ------
    InputError
        Naming the file, for anything that cannot be read as one finite 2-D plane.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(p, f"unsupported image type {suffix!r} (expected .tif, .tiff or .png)")
    try:
        arr = _read_tiff(p) if suffix in TIFF_SUFFIXES else _read_png(p)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(p, "image file not found") from exc
    except (PermissionError, IsADirectoryError) as exc:
        raise InputError(p, f"cannot open image file ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # tifffile/PIL/imagecodecs raise many types for corrupt files
        raise InputError(p, f"corrupt or unreadable image ({type(exc).__name__}: {exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputError(p, f"expected one 2-D image plane, got shape {arr.shape}")
    if check_finite:
        check_finite_pixels(arr, p)
    return arr


def check_finite_pixels(arr: np.ndarray, source: str | os.PathLike) -> None:
    """Raise InputError if a float image holds NaN or infinite values (integers always pass)."""
    if not np.issubdtype(arr.dtype, np.floating):
        return
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - finite.sum()) - n_nan
        raise InputError(source, f"float image has {n_nan} NaN and {n_inf} infinite pixel(s)")


def _read_tiff(p: Path) -> np.ndarray:
    """libtiff (imagecodecs) first: several times faster than tifffile on small files, which
    matters for plates of thousands of images. Whatever libtiff refuses goes through tifffile,
    which either reads it or says precisely what is wrong."""
    import imagecodecs

    with open(p, "rb") as handle:
        data = handle.read()
    try:
        return imagecodecs.tiff_decode(data)
    except Exception:  # noqa: BLE001 - diagnosed (or read) by tifffile below
        return _read_tiff_tifffile(p)


def _read_tiff_tifffile(p: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        file_size = tif.filehandle.size
        if len(tif.pages) == 1:  # the common case; skips tifffile's slower series detection
            page = tif.pages.first
            _check_tiff_page(p, page, file_size)
            return page.asarray()
        if not tif.series:
            raise InputError(p, "corrupt or unreadable image: the TIFF holds no image data")
        series = tif.series[0]
        for page in series.pages:
            if page is not None:
                _check_tiff_page(p, page, file_size)
        return series.asarray()


def _check_tiff_page(p: Path, page, file_size: int) -> None:
    """Refuse compressions nobody can decode and strips/tiles past the end of the file."""
    import tifffile

    compression = int(page.keyframe.compression)
    if compression not in tifffile.TIFF.DECOMPRESSORS:
        raise InputError(p, f"unsupported TIFF compression {_compression_name(compression)} "
                            "(tifffile + imagecodecs cannot decode it; re-export as uncompressed, "
                            "LZW, deflate or zstd)")
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
    if ends and max(ends) > file_size:
        raise InputError(p, f"truncated TIFF: image data should end at byte {max(ends)} but the "
                            f"file has only {file_size} bytes")


def _compression_name(code: int) -> str:
    import tifffile

    try:
        return f"{tifffile.COMPRESSION(code).name} ({code})"
    except ValueError:
        return f"code {code}"


def _read_png(p: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(p) as img:
        img.load()  # forces decoding so truncation surfaces here, not later
        return np.asarray(img)

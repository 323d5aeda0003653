"""Reading single-channel microscopy images (TIFF, PNG) as 2-D numpy arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError

TIFF_SUFFIXES = {".tif", ".tiff"}
PNG_SUFFIXES = {".png"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one single-channel image as a 2-D array in its stored dtype.

    Raises InputError naming the file for anything that cannot be read as one 2-D plane.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            arr = tifffile.imread(p)
        elif suffix in PNG_SUFFIXES:
            from PIL import Image

            with Image.open(p) as img:
                arr = np.asarray(img)
        else:
            raise InputError(p, f"unsupported image type {suffix!r} (expected .tif, .tiff or .png)")
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(p, "image file not found") from exc
    except Exception as exc:  # tifffile/PIL raise many types for corrupt files
        raise InputError(p, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputError(p, f"expected one 2-D image plane, got shape {arr.shape}")
    return arr

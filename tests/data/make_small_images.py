"""Make the small test images in tests/data/images/ from the original public images.

    python tests/data/make_small_images.py ORIGINALS [OUT]

ORIGINALS is a folder holding ``cellpainting_phenix_BR00143976/`` (6 Phenix TIFFs, 1080 x 1080
uint16) and ``examplefly/`` (9 CellProfiler ExampleFly TIFFs, 1006 x 1000 uint8); OUT defaults
to this script's ``images/`` folder. Each image is cut to its central half (half the height and
half the width, pixel values unchanged) and written again in its original format: same file
name, byte order, dtype, compression (LZW or none), predictor, rows per strip, photometric
interpretation (the fly files are palette images with a grey colour map), resolution, software
tag and Harmony/Acapella private tags. What describes the whole image is made true for the crop:
the min/max sample value tags, the size in the FlexXML tag and the JSON statistics tag.

The output is byte-for-byte reproducible (no time stamps); the sha256 of every file made is
listed in tests/data/images/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import tifffile

PHENIX = "cellpainting_phenix_BR00143976"
FLY = "examplefly"
# private tags of the Revvity Harmony/Acapella export
FLEX_XML, HARMONY_INFO, ACAPELLA_STATS = 65200, 65500, 65520


def central_half(image: np.ndarray) -> np.ndarray:
    """The central (h // 2) x (w // 2) block of a 2-D image, pixels untouched."""
    h, w = image.shape
    top, left = (h - h // 2) // 2, (w - w // 2) // 2
    return np.ascontiguousarray(image[top:top + h // 2, left:left + w // 2])


def _rational(value) -> tuple[int, int]:
    return tuple(int(v) for v in value)


def _common(page) -> dict:
    """tifffile.imwrite arguments that reproduce the page's layout."""
    return {
        "byteorder": page.parent.byteorder,
        "compression": None if page.compression == 1 else int(page.compression),
        "predictor": None if page.predictor == 1 else int(page.predictor),
        "rowsperstrip": int(page.rowsperstrip),
        "photometric": int(page.photometric),
        "resolution": (_rational(page.tags["XResolution"].value),
                       _rational(page.tags["YResolution"].value)),
        "resolutionunit": int(page.tags["ResolutionUnit"].value),
        "metadata": None,  # no tifffile ImageDescription
    }


def shrink_phenix(src: Path, dst: Path) -> None:
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        crop = central_half(page.asarray())
        tags = page.tags
        flex = re.sub(r'Width="\d+"', f'Width="{crop.shape[1]}"', tags[FLEX_XML].value)
        flex = re.sub(r'Height="\d+"', f'Height="{crop.shape[0]}"', flex)
        values = crop.astype(np.float64)
        stats = json.dumps({"mean": float(values.mean()), "stddev": float(values.std(ddof=1)),
                            "min": int(crop.min()), "max": int(crop.max())}, separators=(",", ":"))
        extratags = [
            (340, "H", 1, int(crop.min()), True),  # SMinSampleValue
            (341, "H", 1, int(crop.max()), True),  # SMaxSampleValue
            (FLEX_XML, "s", 0, flex, True),
            (HARMONY_INFO, "B", len(tags[HARMONY_INFO].value), tags[HARMONY_INFO].value, True),
            (ACAPELLA_STATS, "s", 0, stats, True),
        ]
        tifffile.imwrite(dst, crop, software=tags["Software"].value, subfiletype=0,
                         extratags=extratags, **_common(page))


def shrink_fly(src: Path, dst: Path) -> None:
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        crop = central_half(page.asarray())
        # SubfileType, Orientation; tifffile does not write PlanarConfiguration for one sample
        # per pixel (1, the value the originals hold, is what readers assume without it)
        extratags = [(code, "H", 1, int(page.tags[code].value), True) for code in (255, 274)]
        tifffile.imwrite(dst, crop, colormap=page.tags["ColorMap"].value, software=False,
                         extratags=extratags, **_common(page))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("originals", type=Path, help="folder with the original image folders")
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).resolve().parent / "images")
    args = parser.parse_args(argv)
    for name, pattern, shrink in ((PHENIX, "*.tiff", shrink_phenix), (FLY, "*.TIF", shrink_fly)):
        sources = sorted((args.originals / name).glob(pattern))
        if not sources:
            raise SystemExit(f"{args.originals / name}: no {pattern} files")
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for src in sources:
            shrink(src, args.out / name / src.name)
            print(args.out / name / src.name)


if __name__ == "__main__":
    main()

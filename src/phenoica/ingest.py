"""Ingest one plate: find its images, validate everything, compute QC, write manifest + QC table.

``ingest_plate`` reads every image exactly once (QC needs the pixels anyway), checks it, and only
when the whole plate is valid writes ``manifest.parquet`` (one row per site) and ``qc.parquet``
(one row per site and channel), each atomically. Raw files are opened read-only.

QC (config section ``qc``): per site and channel the intensity statistics,
the saturated and zero-pixel fractions, and a focus score (variance of the 4-neighbour Laplacian
divided by the squared mean intensity, so dim and bright sites compare); ``focus_ratio`` is that
score over the plate's median for the channel. A site is flagged (``qc_flagged``) when any channel
has too many saturated or zero pixels or a focus ratio below ``min_focus_ratio``. With
``exclude_flagged`` the manifest marks flagged sites ``qc_pass = False`` and the embed stage drops
them; without it every site passes and the flags are for information only.

Plate-map wells without images raise an error unless ``ingest.allow_missing_wells`` (then a
warning); images of wells absent from the plate map always raise. Every problem of a plate is
reported at once, one line each.

In the workflow, rule ``ingest_plate`` writes into ``results/plates/<plate>/validated/`` and rule
``publish_plate`` copies a plate that passed to ``results/plates/<plate>/``: Snakemake deletes a
job's outputs before running it, so a failed re-validation loses only the ``validated/`` copy
and the plate's earlier manifest and QC stay where the later stages read them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .io.atomic import atomic_path
from .io.images import read_image
from .io.layouts import (
    IMAGE_TABLE_COLUMNS,
    Channel,
    list_image_paths,
    list_plate_images,
    parse_channels,
    plate_folder,
    sites_table,
)
from .logs import get_logger, progress
from .sheet import check_plate_row, read_platemap

log = get_logger(__name__)

QC_FLAGS = ("saturated", "blank", "out_of_focus")


def plate_image_files(plate_row: Mapping, channels: Sequence[Mapping] | Sequence[Channel], *,
                      tokens: set[str] | None = None) -> list[str]:
    """The plate's image files (no pixels read), for the Snakefile input function.

    Returns ``[]`` when the folder or LoadData CSV does not exist yet (e.g. the demo simulator has
    not run). Files whose names do not parse are left out here; ``ingest_plate`` reports them.
    ``tokens``: a set that gets every channel token of the file names
    (:func:`phenoica.io.layouts.list_image_paths`).
    """
    return list_image_paths(plate_row, channels, tokens=tokens)


def focus_score(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the squared mean intensity (0 for a blank
    image). Higher is sharper; scale-free, so bright and dim sites compare."""
    img = image.astype(np.float32, copy=False)
    if img.shape[0] < 3 or img.shape[1] < 3:
        return 0.0
    mean = float(img.mean(dtype=np.float64))
    if mean <= 0:
        return 0.0
    lap = img[:-2, 1:-1] + img[2:, 1:-1]
    lap += img[1:-1, :-2]
    lap += img[1:-1, 2:]
    lap -= 4.0 * img[1:-1, 1:-1]
    return _variance(lap) / (mean * mean)


def _variance(values: np.ndarray) -> float:
    """Population variance via one BLAS dot of the centred values (much faster than
    ``var(dtype=float64)``, which converts the whole array first)."""
    flat = values.ravel()
    centred = flat - np.float32(flat.mean(dtype=np.float64))
    return float(np.dot(centred, centred)) / flat.size


def image_stats(image: np.ndarray, saturation_value: float | None = None) -> dict:
    """Intensity statistics, saturated and zero-pixel fractions, and focus score of one image.

    Percentiles use the inverted-CDF definition (an observed pixel value). 8/16-bit unsigned
    images go through one histogram instead of sorting, which is several times faster on large
    images.
    """
    n = image.size
    ceiling = saturation_value
    if ceiling is None and np.issubdtype(image.dtype, np.integer):
        ceiling = np.iinfo(image.dtype).max
    if image.dtype in (np.uint8, np.uint16):
        counts = np.bincount(image.ravel())
        cdf = np.cumsum(counts)
        p01, p99 = np.searchsorted(cdf, [0.01 * n, 0.99 * n], side="left")
        lowest = int(np.flatnonzero(counts)[0])
        highest = len(counts) - 1
        n_zero = int(counts[0])
        n_saturated = int(counts[int(np.ceil(ceiling)):].sum()) if ceiling is not None else 0
    else:
        p01, p99 = np.percentile(image, [1, 99], method="inverted_cdf")
        lowest, highest = image.min(), image.max()
        n_zero = int(np.count_nonzero(image == 0))
        n_saturated = int(np.count_nonzero(image >= ceiling)) if ceiling is not None else 0
    return {
        "mean": float(image.mean(dtype=np.float64)),
        "std": float(np.sqrt(_variance(image.astype(np.float32, copy=False)))),
        "min": float(lowest),
        "max": float(highest),
        "p01": float(p01),
        "p99": float(p99),
        "saturated_fraction": n_saturated / n if ceiling is not None else np.nan,
        "zero_fraction": n_zero / n,
        "focus_score": focus_score(image),
    }


def ingest_plate(plate_row: Mapping, channels: Sequence[Mapping], manifest_path: str, qc_path: str,
                 threads: int = 1, *, allow_missing_wells: bool, control_values: Sequence[str],
                 max_saturated_fraction: float, max_zero_fraction: float, min_focus_ratio: float,
                 saturation_value: float | None, exclude_flagged: bool) -> None:
    """Validate one plate and write its manifest and QC table (nothing is written on failure).

    Every problem of the plate is collected (files that do not parse, sites missing a channel,
    duplicate files, wells missing from or absent in the plate map, unreadable images, images
    of another shape or dtype) and raised as one :class:`InputError` with one line per problem.

    The keyword-only arguments are the ``ingest`` and ``qc`` config sections (config/README.md;
    outside the workflow pass ``**schema_defaults("ingest"), **schema_defaults("qc")``).

    Parameters
    ----------
    plate_row
        One plate-sheet row (``plate, batch, layout, path, platemap, pattern``).
    channels
        Ordered ``[{"name": ..., "token": ...}, ...]``; the manifest has ``path_<name>`` columns.
    manifest_path, qc_path
        Outputs: one row per site; one row per site and channel.
    threads
        Images are read by this many threads (decoding releases the GIL).
    allow_missing_wells
        Plate-map wells without images: warning (True) or InputError (False).
    control_values
        Perturbations that are negative controls, for plate maps without a control flag.
    max_saturated_fraction, max_zero_fraction, min_focus_ratio, saturation_value
        QC thresholds (see the module docstring).
    exclude_flagged
        Flagged sites get ``qc_pass`` False (the embed stage drops them).
    """
    chans = parse_channels(channels)
    qc_cfg = {"max_saturated_fraction": max_saturated_fraction, "max_zero_fraction": max_zero_fraction,
              "min_focus_ratio": min_focus_ratio, "saturation_value": saturation_value,
              "exclude_flagged": exclude_flagged}
    row = check_plate_row(plate_row, channels=chans, source=f"plate {plate_row.get('plate')!r}")
    plate, batch = row["plate"], row["batch"]
    folder = Path(row["path"]) if row["layout"] == "loaddata" else plate_folder(row)
    problems: list[str] = []  # one "<file>: <problem>" line each

    try:
        platemap = read_platemap(row["platemap"], plate=plate, control_values=control_values)
    except InputError as err:
        problems.append(str(err))
        platemap = None
    try:
        images = list_plate_images(row, chans, strict=True, problems=problems)
    except InputError as err:  # a LoadData CSV that cannot be read as a whole
        problems.append(str(err))
        images = pd.DataFrame(columns=IMAGE_TABLE_COLUMNS)
    if images.empty:
        if not problems:
            problems.append(f"{folder}: {_nothing_found(row, chans, folder)}")
        raise _plate_error(folder, plate, problems)
    sites = sites_table(images, chans, folder, problems=problems)
    if platemap is not None:
        problems += _well_problems(set(images["well"]), platemap, row, folder, allow_missing_wells)
    sites.insert(0, "site_id", [f"{plate}:{w}:{s}" for w, s in zip(sites["well"], sites["site"])])

    qc_table = _read_and_measure(sites, chans, qc_cfg, threads, plate, problems)
    if not qc_table.empty:
        problems += _uniformity_problems(qc_table)
    if problems:
        raise _plate_error(folder, plate, problems)
    qc_table = _flag(qc_table, qc_cfg)

    flagged = qc_table.groupby("site_id", sort=False)["flagged"].any()
    manifest = sites.assign(plate=plate, batch=batch)
    manifest = manifest[["site_id", "plate", "batch", "well", "row", "col", "site"]
                        + [f"path_{c.name}" for c in chans]]
    manifest = manifest.merge(platemap, on="well", how="left", validate="many_to_one")
    manifest["qc_flagged"] = manifest["site_id"].map(flagged).astype(bool).to_numpy()
    manifest["qc_pass"] = ~manifest["qc_flagged"] if qc_cfg["exclude_flagged"] else True
    n_flagged = int(manifest["qc_flagged"].sum())
    if qc_cfg["exclude_flagged"] and not manifest["qc_pass"].any():
        raise InputError(folder, f"plate {plate}: all {len(manifest)} sites failed QC "
                                 f"({_flag_summary(qc_table)}); relax the thresholds "
                                 "qc.max_saturated_fraction, qc.max_zero_fraction, "
                                 "qc.min_focus_ratio or set qc.exclude_flagged: false")
    qc_table.insert(1, "plate", plate)

    with atomic_path(manifest_path) as tmp_manifest, atomic_path(qc_path) as tmp_qc:
        manifest.to_parquet(tmp_manifest, index=False)
        qc_table.to_parquet(tmp_qc, index=False)
    log.info("plate %s: %d sites in %d wells, %d channels; %d site(s) flagged by QC%s",
             plate, len(manifest), manifest["well"].nunique(), len(chans), n_flagged,
             " and excluded" if qc_cfg["exclude_flagged"] and n_flagged else "")


MAX_LISTED_PROBLEMS = 50


def _plate_error(folder: Path, plate: str, problems: list[str]) -> InputError:
    """One InputError listing every problem of the plate, one line each (the first
    :data:`MAX_LISTED_PROBLEMS`; the log gets them all)."""
    shown = problems[:MAX_LISTED_PROBLEMS]
    if len(problems) > len(shown):
        log.error("plate %s: all %d problems:\n  %s", plate, len(problems), "\n  ".join(problems))
        shown = shown + [f"... and {len(problems) - len(shown)} more (all of them are in the log)"]
    return InputError(folder, f"plate {plate}: {len(problems)} problem(s), nothing written:\n  "
                              + "\n  ".join(shown))


def _nothing_found(row: Mapping[str, str], chans: list[Channel], folder: Path) -> str:
    tokens = [c.token for c in chans]
    if row["layout"] == "loaddata":
        return f"empty plate: the LoadData CSV has no rows for plate {row['plate']!r}"
    try:
        n_files = sum(1 for e in os.scandir(folder) if e.is_file())
    except OSError:
        n_files = 0
    if row["layout"] == "pattern":
        return (f"empty plate: regex {row['pattern']!r} matches none of the {n_files} file(s) "
                f"for plate {row['plate']!r} with channel tokens {tokens} (it must match the whole "
                "file name)")
    return (f"empty plate: none of the {n_files} file(s) follow the {row['layout']!r} naming "
            f"with channel tokens {tokens}")


def _well_problems(imaged: set[str], platemap: pd.DataFrame, row: Mapping[str, str],
                   folder: Path, allow_missing_wells: bool) -> list[str]:
    problems = []
    mapped = set(platemap["well"])
    unmapped = sorted(imaged - mapped, key=_well_key)
    if unmapped:
        problems.append(f"{row['platemap']}: {len(unmapped)} imaged well(s) are missing from the "
                        f"plate map: {unmapped[:20]} (images in {folder})")
    unimaged = sorted(mapped - imaged, key=_well_key)
    if unimaged:
        message = f"{len(unimaged)} plate-map well(s) have no images: {unimaged[:20]}"
        if not allow_missing_wells:
            problems.append(f"{row['platemap']}: {message} (set ingest.allow_missing_wells: true "
                            "if they were not imaged on purpose)")
        else:
            log.warning("%s: plate %s: %s", row["platemap"], row["plate"], message)
    return problems


def _well_key(well: str) -> tuple[int, str]:
    letters = well.rstrip("0123456789")
    return len(letters), well


def _site_stats(args: tuple[dict, list[Channel], float | None]) -> tuple[list[dict], list[str]]:
    """Read one site's channel images once: one QC row per channel (with shape/dtype), and one
    problem line per image that cannot be read (the site then has no rows)."""
    site, chans, saturation_value = args
    rows, problems = [], []
    for c in chans:
        path = site[f"path_{c.name}"]
        try:
            image = read_image(path)
        except InputError as err:
            problems.append(str(err))
            continue
        rows.append({"site_id": site["site_id"], "well": site["well"], "site": site["site"],
                     "channel": c.name, "path": path, "dtype": str(image.dtype),
                     "height": image.shape[0], "width": image.shape[1],
                     **image_stats(image, saturation_value)})
    return (rows if not problems else []), problems


def _read_and_measure(sites: pd.DataFrame, chans: list[Channel], qc_cfg: Mapping,
                      threads: int, plate: str, problems: list[str]) -> pd.DataFrame:
    jobs = [(site, chans, qc_cfg["saturation_value"]) for site in sites.to_dict("records")]
    bar = progress(total=len(jobs), desc=f"ingest {plate}", unit="site")
    rows: list[dict] = []
    with bar, ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        results = pool.map(_site_stats, jobs) if threads > 1 else map(_site_stats, jobs)
        for site_rows, site_problems in results:
            rows += site_rows
            problems += site_problems
            bar.update(1)
    return pd.DataFrame.from_records(rows)


def _uniformity_problems(qc_table: pd.DataFrame) -> list[str]:
    """All images of a plate share one shape and dtype (the embedder stacks them): one problem
    per image that differs from the plate's most common shape or dtype."""
    problems = []
    for what, cols in (("shape", ["height", "width"]), ("dtype", ["dtype"])):
        keys = [tuple(v) for v in qc_table[cols].itertuples(index=False)]
        counts = pd.Series(keys).value_counts(sort=True)
        if len(counts) == 1:
            continue
        common = counts.index[0]
        for path, key in zip(qc_table["path"], keys):
            if key != common:
                problems.append(f"{path}: image {what} {_fmt(key)} differs from {_fmt(common)} "
                                f"(the {what} of {counts.iloc[0]} of the plate's {len(keys)} "
                                "images)")
    return problems


def _fmt(values: tuple) -> str:
    return "x".join(str(v) for v in values) if len(values) > 1 else str(values[0])


def _flag(qc_table: pd.DataFrame, qc_cfg: Mapping) -> pd.DataFrame:
    table = qc_table.copy()
    median = table.groupby("channel", sort=False)["focus_score"].transform("median")
    table["focus_ratio"] = np.where(median > 0, table["focus_score"] / median.where(median > 0, 1),
                                    1.0)
    table["flag_saturated"] = table["saturated_fraction"].fillna(0) > qc_cfg["max_saturated_fraction"]
    table["flag_blank"] = table["zero_fraction"] > qc_cfg["max_zero_fraction"]
    table["flag_out_of_focus"] = table["focus_ratio"] < qc_cfg["min_focus_ratio"]
    flag_cols = [f"flag_{f}" for f in QC_FLAGS]
    table["flagged"] = table[flag_cols].any(axis=1)
    table["flags"] = [";".join(f for f, on in zip(QC_FLAGS, flags) if on)
                      for flags in table[flag_cols].itertuples(index=False)]
    return table


def _flag_summary(qc_table: pd.DataFrame) -> str:
    counts = {f: int(qc_table[f"flag_{f}"].sum()) for f in QC_FLAGS}
    return ", ".join(f"{n} channel image(s) {f}" for f, n in counts.items() if n)

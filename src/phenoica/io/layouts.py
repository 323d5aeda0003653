"""Instrument file-naming layouts: find a plate's image files and what each one holds.

A layout turns one plate-sheet row into a table with one row per image file: ``well``
(normalised, ``A01``), ``row``, ``col`` (1-based ints), ``site`` (int), ``channel`` (the
configured channel *name*) and ``path``. No pixels are read here.

Layouts (``layout`` column of the plate sheet):

``rxrx``
    ``{path}/{plate}/{well}_s{site}_w{token}.{png,tif,tiff}`` (RxRx1/RxRx3, the demo simulator).
    If ``{path}/{plate}`` is not a folder, ``{path}`` itself is taken as the plate folder (RxRx1
    names plate folders ``Plate1``..., which rarely equal a plate identifier).
``phenix``
    Opera Phenix / Harmony export names ``r{RR}c{CC}f{FF}p{PP}-ch{token}sk{T}fk1fl1.tiff`` in
    ``{path}`` (or ``{path}/Images`` when the export keeps that folder). Only plane ``p01`` of
    time point ``sk1`` is used; other planes and time points are skipped with a warning (z-stacks
    are not projected).
``loaddata``
    ``{path}`` is a CellProfiler LoadData CSV (JUMP / Cell Painting Gallery): ``Metadata_Plate``,
    ``Metadata_Well`` (or ``Metadata_Row`` + ``Metadata_Col``), ``Metadata_Site`` (or
    ``Metadata_Field``), and ``FileName_Orig{token}`` + ``PathName_Orig{token}`` per channel.
    Relative ``PathName`` values are relative to the CSV's folder. Rows of other plates are
    skipped; a CSV that names a single plate is used whole even if that name differs.
``pattern``
    A user regex with named groups ``well`` (or ``row`` + ``col``), ``site``, ``channel`` and an
    optional ``plate``, matched in full against the file names in ``{path}`` (or, if the regex
    contains ``/``, against the paths relative to ``{path}``, searched recursively). ``row`` may
    be letters (``C``) or a 1-based number (``03``). When a ``plate`` group is present, files
    of other plates are skipped.

Channel tokens (``channels`` config, ``[{name, token}, ...]``) say which file token holds which
channel; files whose token is not configured are skipped (e.g. Phenix brightfield). Numeric
tokens compare as numbers (``"2"`` matches ``ch02``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ConfigError, InputError
from ..identifiers import IDENTIFIER_RE, normalize_well, row_index, well_name
from ..logs import get_logger
from .images import IMAGE_SUFFIXES

log = get_logger(__name__)

LAYOUTS = ("rxrx", "phenix", "loaddata", "pattern")
IMAGE_TABLE_COLUMNS = ["well", "row", "col", "site", "channel", "path"]

RXRX_RE = re.compile(
    r"(?P<well>[A-Za-z]{1,2}[0-9]{1,3})_s(?P<site>[0-9]+)_w(?P<channel>[A-Za-z0-9]+)"
    r"\.(?:png|tiff?)", re.IGNORECASE)
PHENIX_RE = re.compile(
    r"r(?P<row>[0-9]{2,3})c(?P<col>[0-9]{2,3})f(?P<site>[0-9]{2,4})p(?P<plane>[0-9]{2,3})"
    r"-ch(?P<channel>[0-9]+)sk(?P<timepoint>[0-9]+)fk[0-9]+fl[0-9]+\.tiff?", re.IGNORECASE)
_SUFFIX_TUPLE = tuple(sorted(IMAGE_SUFFIXES))
REMOTE_PREFIXES = ("s3://", "gs://", "http://", "https://", "ftp://")


@dataclass(frozen=True)
class Channel:
    """One configured channel: ``name`` (column ``path_<name>``) and its file-name ``token``."""

    name: str
    token: str


def parse_channels(channels: Sequence[Mapping], source: str = "config channels") -> list[Channel]:
    """Validate the ``channels`` config (non-empty list of ``{name, token}``, unique names and
    tokens, names usable as identifiers) and return it as :class:`Channel` objects."""
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
        raise ConfigError(f"{source}: must be a non-empty list of {{name, token}} entries, "
                          f"got {channels!r}")
    parsed: list[Channel] = []
    for i, entry in enumerate(channels):
        key = f"{source}[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}: must be a mapping with keys 'name' and 'token', got {entry!r}")
        unknown = set(entry) - {"name", "token"}
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {sorted(unknown)} (allowed: name, token)")
        for field in ("name", "token"):
            value = entry.get(field)
            if value is None or str(value).strip() == "":
                raise ConfigError(f"{key}.{field}: missing or empty")
        name, token = str(entry["name"]).strip(), str(entry["token"]).strip()
        if not IDENTIFIER_RE.match(name):
            raise ConfigError(f"{key}.name: {name!r} must match {IDENTIFIER_RE.pattern} "
                              "(it becomes the manifest column path_<name>)")
        if "/" in token or os.sep in token:
            raise ConfigError(f"{key}.token: {token!r} must not contain a path separator")
        parsed.append(Channel(name, token))
    for field in ("name", "token"):
        values = [_token_key(getattr(c, field)) if field == "token" else c.name for c in parsed]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(f"{source}: duplicate channel {field}(s) {dupes}; each must be unique")
    return parsed


def _token_key(token: str) -> str:
    """Numeric tokens compare as numbers ('02' == '2'); others as written."""
    token = str(token).strip()
    return str(int(token)) if token.isdigit() else token


def check_pattern(regex: str, source: str = "pattern") -> re.Pattern:
    """Compile a ``pattern``-layout regex and check its named groups.

    Needs ``site``, ``channel`` and either ``well`` or both ``row`` and ``col``; ``plate`` is
    optional. Raises ConfigError naming ``source`` and the groups that are missing.
    """
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise ConfigError(f"{source}: invalid regular expression {regex!r}: {exc}") from exc
    groups = set(compiled.groupindex)
    missing = [g for g in ("site", "channel") if g not in groups]
    if "well" not in groups and not {"row", "col"} <= groups:
        missing.insert(0, "well (or row + col)")
    if missing:
        raise ConfigError(
            f"{source}: regex {regex!r} lacks the named group(s) {', '.join(missing)}; required: "
            "(?P<well>...) or (?P<row>...)+(?P<col>...), (?P<site>...), (?P<channel>...); "
            "optional: (?P<plate>...)")
    return compiled


def plate_folder(plate_row: Mapping) -> Path:
    """The folder holding the plate's images (see the layout notes in the module docstring)."""
    layout, root = str(plate_row["layout"]), Path(str(plate_row["path"]))
    if layout == "rxrx":
        sub = root / str(plate_row["plate"])
        return sub if sub.is_dir() else root
    if layout == "phenix":
        sub = root / "Images"
        return sub if sub.is_dir() else root
    if layout == "pattern":
        return root
    if layout == "loaddata":
        return root.parent
    raise ConfigError(f"layout {layout!r} is not one of the allowed values: {', '.join(LAYOUTS)}")


def list_plate_images(plate_row: Mapping, channels: Sequence[Mapping] | Sequence[Channel], *,
                      strict: bool = True, problems: list[str] | None = None) -> pd.DataFrame:
    """Table of the plate's image files (columns :data:`IMAGE_TABLE_COLUMNS`), sorted by well,
    site and channel order. No pixels are read.

    With ``strict`` (ingest), a matching file whose well or site cannot be parsed, or a LoadData
    CSV that is malformed, raises InputError; without it (listing for Snakemake) such files are
    skipped and a missing folder or CSV gives an empty table. With a ``problems`` list, strict
    listing appends one ``"<file>: <problem>"`` line per file or CSV line that does not parse
    and goes on with the others (ingest reports every problem of a plate at once).
    """
    chans = _as_channels(channels)
    layout = str(plate_row.get("layout", ""))
    if layout == "loaddata":
        records = _loaddata_records(plate_row, chans, strict=strict, problems=problems)
    elif layout in ("rxrx", "phenix", "pattern"):
        records = _folder_records(plate_row, chans, strict=strict, problems=problems)
    else:
        raise ConfigError(f"plate {plate_row.get('plate')!r}, column 'layout': {layout!r} is not "
                          f"one of the allowed values: {', '.join(LAYOUTS)}")
    table = pd.DataFrame.from_records(records, columns=IMAGE_TABLE_COLUMNS)
    if table.empty:
        return table
    order = {c.name: i for i, c in enumerate(chans)}
    table["site"] = table["site"].astype("int64")
    table = table.assign(_ch=table["channel"].map(order))
    table = table.sort_values(["row", "col", "site", "_ch", "path"], kind="stable")
    return table.drop(columns="_ch").reset_index(drop=True)


def list_image_paths(plate_row: Mapping, channels: Sequence[Mapping] | Sequence[Channel], *,
                     tokens: set[str] | None = None) -> list[str]:
    """Paths of the plate's image files, sorted, without parsing wells or reading pixels.

    The fast, lenient listing behind :func:`phenoica.ingest.plate_image_files` (Snakemake input
    functions run it for every plate when the DAG is built): a missing folder or CSV gives
    ``[]``; files whose well or site would not parse are included and reported by ingest.

    With a ``tokens`` set, the same scan adds to it every channel token the plate's file names
    carry, configured or not (numeric ones as numbers: ``"02"`` -> ``"2"``), for the dry-run
    check of the ``channels`` config (:mod:`phenoica.preflight`); folder layouts only (a
    LoadData CSV's tokens are its column names, which the plate sheet check reads).
    """
    chans = _as_channels(channels)
    layout = str(plate_row.get("layout", ""))
    if layout == "loaddata":
        return sorted(r["path"] for r in _loaddata_records(plate_row, chans, strict=False))
    if layout not in ("rxrx", "phenix", "pattern"):
        return []
    folder = plate_folder(plate_row)
    if not folder.is_dir():
        return []
    if layout == "rxrx":
        regex, recursive = RXRX_RE, False
    elif layout == "phenix":
        regex, recursive = PHENIX_RE, False
    else:
        pattern = str(plate_row.get("pattern") or "")
        try:
            regex = check_pattern(pattern)
        except ConfigError:
            return []
        recursive = "/" in pattern
    wanted = {_token_key(c.token) for c in chans}
    plate = str(plate_row["plate"])
    paths = []
    for rel, path in _iter_files(folder, recursive):
        match = regex.fullmatch(rel)
        if match is None:
            continue
        groups = match.groupdict()
        if groups.get("plate") is not None and groups["plate"] != plate:
            continue
        token = _token_key(groups["channel"] or "")
        if tokens is not None:
            tokens.add(token)
        if token not in wanted:
            continue
        if layout == "phenix" and (int(groups["plane"]) != 1 or int(groups["timepoint"]) != 1):
            continue
        paths.append(path)
    return sorted(paths)


def _as_channels(channels: Sequence[Mapping] | Sequence[Channel]) -> list[Channel]:
    if channels and all(isinstance(c, Channel) for c in channels):
        return list(channels)  # type: ignore[arg-type]
    return parse_channels(channels)  # type: ignore[arg-type]


def _folder_records(plate_row: Mapping, chans: list[Channel], *, strict: bool,
                    problems: list[str] | None = None) -> list[dict]:
    layout, plate = str(plate_row["layout"]), str(plate_row["plate"])
    folder = plate_folder(plate_row)
    if layout == "rxrx":
        regex, recursive = RXRX_RE, False
    elif layout == "phenix":
        regex, recursive = PHENIX_RE, False
    else:
        pattern = str(plate_row.get("pattern") or "")
        regex = check_pattern(pattern, f"plate {plate!r}, column 'pattern'")
        recursive = "/" in pattern
    if not folder.is_dir():
        if strict:
            raise InputError(folder, f"image folder of plate {plate!r} does not exist "
                                     f"(layout {layout!r})")
        return []
    token_to_name = {_token_key(c.token): c.name for c in chans}
    records: list[dict] = []
    skipped_tokens: set[str] = set()
    skipped_planes = 0
    for rel, path in _iter_files(folder, recursive):
        match = regex.fullmatch(rel)
        if match is None:
            continue
        groups = match.groupdict()
        if layout == "phenix" and (int(groups["plane"]) != 1 or int(groups["timepoint"]) != 1):
            skipped_planes += 1
            continue
        if groups.get("plate") is not None and groups["plate"] != plate:
            continue
        name = token_to_name.get(_token_key(groups["channel"] or ""))
        if name is None:
            skipped_tokens.add(str(groups["channel"]))
            continue
        try:
            records.append(_record(groups, name, path))
        except InputError as err:
            if strict and problems is not None:
                problems.append(str(err))
            elif strict:
                raise
    if skipped_tokens:
        log.info("plate %s: skipped files with channel token(s) %s not in the channels config",
                 plate, sorted(skipped_tokens))
    if skipped_planes:
        log.warning("plate %s: skipped %d Phenix file(s) of plane > 1 or time point > 1 "
                    "(only p01/sk1 is used)", plate, skipped_planes)
    return records


def _iter_files(folder: Path, recursive: bool) -> Iterator[tuple[str, str]]:
    """(name relative to ``folder`` with '/' separators, path) of image files, sorted."""
    if not recursive:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries
                           if e.name.lower().endswith(_SUFFIX_TUPLE) and e.is_file())
        prefix = os.path.join(folder, "")
        for name in names:
            yield name, prefix + name
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(_SUFFIX_TUPLE):
                full = os.path.join(dirpath, name)
                yield Path(os.path.relpath(full, folder)).as_posix(), full


def _record(groups: Mapping[str, str | None], channel: str, path: str) -> dict:
    """One image-table row from regex groups; raises InputError naming ``path`` if the well or
    site text does not parse."""
    if groups.get("well") is not None:
        well = normalize_well(groups["well"], source=path)
    else:
        well = well_from_row_col(groups.get("row"), groups.get("col"), source=path)
    site_text = (groups.get("site") or "").strip()
    if not site_text.isdigit():
        raise InputError(path, f"site {site_text!r} is not a whole number")
    return _row_for(well, int(site_text), channel, path)


def well_from_row_col(row: object, col: object, source: str | os.PathLike | None = None) -> str:
    """('C' or '03', '3') -> 'C03': the row as letters or a 1-based number, the column 1-based."""
    row_text, col_text = str(row or "").strip(), str(col or "").strip()
    if row_text.isdigit() and int(row_text) >= 1:
        row_number = int(row_text)
    elif row_text.isalpha() and len(row_text) <= 2:
        row_number = row_index(row_text)
    else:
        raise InputError(source, f"row {row_text!r} is neither letters (C) nor a 1-based "
                                 "number (03)")
    if not col_text.isdigit() or int(col_text) < 1:
        raise InputError(source, f"column {col_text!r} is not a 1-based number")
    return well_name(row_number, int(col_text))


def _row_for(well: str, site: int, channel: str, path: str) -> dict:
    letters = well.rstrip("0123456789")
    return {"well": well, "row": row_index(letters), "col": int(well[len(letters):]),
            "site": site, "channel": channel, "path": str(path)}


def _loaddata_records(plate_row: Mapping, chans: list[Channel], *, strict: bool,
                      problems: list[str] | None = None) -> list[dict]:
    csv_path, plate = Path(str(plate_row["path"])), str(plate_row["plate"])
    if not csv_path.is_file():
        if strict:
            raise InputError(csv_path, f"LoadData CSV of plate {plate!r} does not exist")
        return []
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for malformed CSV
        if not strict:
            return []
        raise InputError(csv_path, f"cannot read LoadData CSV ({type(exc).__name__}: {exc})") from exc
    try:
        return _loaddata_rows(table, csv_path, plate, chans, problems if strict else None)
    except InputError:
        if strict:
            raise
        return []


def _loaddata_rows(table: pd.DataFrame, csv_path: Path, plate: str,
                   chans: list[Channel], problems: list[str] | None = None) -> list[dict]:
    """Image-table rows of the CSV lines of ``plate``. A line that does not parse raises
    InputError, or with a ``problems`` list is appended there and skipped."""
    cols = set(table.columns)
    site_col = next((c for c in ("Metadata_Site", "Metadata_Field") if c in cols), None)
    missing = [] if "Metadata_Plate" in cols else ["Metadata_Plate"]
    if "Metadata_Well" not in cols and not {"Metadata_Row", "Metadata_Col"} <= cols:
        missing.append("Metadata_Well (or Metadata_Row + Metadata_Col)")
    if site_col is None:
        missing.append("Metadata_Site")
    for c in chans:
        missing += [f"{kind}_Orig{c.token}" for kind in ("FileName", "PathName")
                    if f"{kind}_Orig{c.token}" not in cols]
    if missing:
        offered = sorted(c[len("FileName_Orig"):] for c in cols if c.startswith("FileName_Orig"))
        raise InputError(csv_path, f"LoadData CSV lacks column(s) {missing}; channel tokens in "
                                   f"this CSV: {offered}")
    plates = table["Metadata_Plate"].str.strip()
    mine = table[plates == plate]
    if mine.empty and plates.nunique() == 1:
        log.warning("%s: Metadata_Plate is %r, not %r; using all rows for plate %s",
                    csv_path, plates.iloc[0], plate, plate)
        mine = table
    base = csv_path.parent
    records: list[dict] = []
    for line, row in zip(mine.index + 2, mine.to_dict("records")):
        try:
            records += _loaddata_line(row, f"{csv_path}, line {line}", site_col, base, chans)
        except InputError as err:
            if problems is None:
                raise
            problems.append(str(err))
    return records


def _loaddata_line(row: Mapping[str, str], where: str, site_col: str, base: Path,
                   chans: list[Channel]) -> list[dict]:
    if "Metadata_Well" in row and str(row["Metadata_Well"]).strip():
        well = normalize_well(row["Metadata_Well"], source=where)
    else:
        well = well_from_row_col(row.get("Metadata_Row"), row.get("Metadata_Col"), where)
    site_text = str(row[site_col]).strip()
    if not site_text.isdigit():
        raise InputError(where, f"{site_col} {site_text!r} is not a whole number")
    records = []
    for c in chans:
        file_name = str(row[f"FileName_Orig{c.token}"]).strip()
        if not file_name:
            continue  # reported as a missing channel of this site
        folder = str(row[f"PathName_Orig{c.token}"]).strip()
        if folder.lower().startswith(REMOTE_PREFIXES) or file_name.lower().startswith(REMOTE_PREFIXES):
            raise InputError(where, f"remote path {folder or file_name!r} is not supported; "
                                    "download the images and point PathName_* at them")
        path = os.path.normpath(os.path.join(base, folder, file_name))
        records.append(_row_for(well, int(site_text), c.name, path))
    return records


def sites_table(images: pd.DataFrame, channels: Sequence[Mapping] | Sequence[Channel],
                source: str | os.PathLike, problems: list[str] | None = None) -> pd.DataFrame:
    """Pivot an image table to one row per site with a ``path_<channel>`` column per channel.

    Raises InputError naming ``source`` for duplicate plate/well/site/channel files and for
    sites that lack a channel (listing what is there). With a ``problems`` list, those go there
    as ``"<source>: <problem>"`` lines instead, and the table keeps the first of duplicate files
    and drops incomplete sites, so the rest of the plate can still be checked.
    """
    chans = _as_channels(channels)
    key = ["well", "site", "channel"]
    dupes = images[images.duplicated(key, keep=False)]
    if not dupes.empty:
        lines = [f"well {w} site {s} channel {c}: {', '.join(g['path'])}"
                 for (w, s, c), g in dupes.groupby(key, sort=False)]
        error = InputError(source, f"{len(lines)} duplicate well/site/channel image(s): "
                                   + _preview(lines))
        if problems is None:
            raise error
        problems.append(str(error))
        images = images.drop_duplicates(key, keep="first")
    wide = images.pivot(index=["well", "row", "col", "site"], columns="channel", values="path")
    names = [c.name for c in chans]
    wide = wide.reindex(columns=names)
    incomplete = wide[wide.isna().any(axis=1)]
    if not incomplete.empty:
        lines = []
        for (well, _, _, site), paths in incomplete.iterrows():
            lacking = [n for n in names if pd.isna(paths[n])]
            present = [os.path.basename(p) for p in paths.dropna()]
            lines.append(f"well {well} site {site} lacks channel(s) {lacking} (has {present})")
        error = InputError(source, f"{len(lines)} site(s) missing a channel: " + _preview(lines))
        if problems is None:
            raise error
        problems.append(str(error))
        wide = wide.dropna()
    wide = wide.reset_index().sort_values(["row", "col", "site"], kind="stable")
    wide.columns = ["well", "row", "col", "site"] + [f"path_{n}" for n in names]
    return wide.reset_index(drop=True)


def _preview(lines: Iterable[str], limit: int = 10) -> str:
    lines = list(lines)
    more = f"; ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more

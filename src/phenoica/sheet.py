"""The plate sheet (one row per plate) and plate maps (one row per well): reading and validation.

:func:`read_plate_sheet` runs when the Snakefile is loaded, so a bad sheet stops
``snakemake -n`` before any job is scheduled. Every problem is reported with the sheet file, the
row (and its line in the file), the column and the allowed values; all problems of a sheet are
reported at once.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .errors import ConfigError, InputError
from .identifiers import normalize_well
from .io.layouts import Channel, check_pattern, parse_channels, well_from_row_col
from .io.tables import read_table
from .logs import get_logger

log = get_logger(__name__)

PLATES_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "plates.schema.yaml"
SHEET_COLUMNS = ["plate", "batch", "layout", "path", "platemap", "pattern"]
REQUIRED_SHEET_COLUMNS = ["plate", "batch", "layout", "path", "platemap"]
_MAX_REPORTED = 20

# Plate-map column names after normalisation (Metadata_ prefix dropped, lower case), in order of
# preference. JUMP platemaps use well_position / broad_sample / pert_iname / control_type.
WELL_COLUMNS = ("well", "well_position", "well_name", "wellname")
PERTURBATION_COLUMNS = ("perturbation", "pert_iname", "treatment", "compound", "broad_sample",
                        "jcp2022")
CONTROL_FLAG_COLUMNS = ("is_control", "control")
RESERVED_PLATEMAP_COLUMNS = {"batch", "site", "site_id", "qc_pass", "qc_flagged", "n_sites"}
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


@functools.lru_cache(maxsize=4)
def load_plate_schema(schema_path: str | None = None) -> dict:
    """The plate-sheet JSON schema (YAML file); by default ``workflow/schemas/plates.schema.yaml``."""
    from .config import load_schema

    path = Path(schema_path) if schema_path else PLATES_SCHEMA_PATH
    if not path.is_file():
        raise ConfigError(f"{path}: plate-sheet schema not found (pass schema_path=...)")
    return load_schema(path)


def read_plate_sheet(path: str | os.PathLike, *, channels: Sequence[Mapping],
                     check_files: bool = True, schema_path: str | None = None) -> pd.DataFrame:
    """Read and validate the plate sheet (TSV, CSV or Parquet).

    Checks every row against the JSON schema (columns, identifiers, known layouts, ``pattern``
    when ``layout`` is ``pattern``), unique plates, the pattern regexes and their named groups,
    the ``channels`` config, and (``check_files``) that each ``path`` and ``platemap`` exists
    and that LoadData CSVs carry the configured channel columns. Turn ``check_files`` off for
    plates that the workflow itself produces (the simulated demo).

    Returns
    -------
    pandas.DataFrame
        Columns ``plate, batch, layout, path, platemap, pattern`` (empty string when unused),
        then any extra columns; all strings; indexed by plate.

    Raises
    ------
    ConfigError
        Schema, identifier, layout, duplicate-plate, regex or channels problems.
    InputError
        A file that does not exist or cannot be read.
    """
    sheet_path = Path(path)
    chans = parse_channels(channels)
    if not sheet_path.is_file():
        raise InputError(sheet_path, "plate sheet not found")
    try:
        sheet = read_table(sheet_path, dtype=str, keep_default_na=False) \
            if sheet_path.suffix.lower() != ".parquet" else read_table(sheet_path).astype(str)
    except Exception as exc:  # pandas raises several types for malformed tables
        raise InputError(sheet_path, f"cannot read plate sheet ({type(exc).__name__}: {exc})") from exc
    sheet.columns = [str(c).strip() for c in sheet.columns]
    missing = [c for c in REQUIRED_SHEET_COLUMNS if c not in sheet.columns]
    if missing:
        raise ConfigError(f"{sheet_path}: missing column(s) {missing}; the plate sheet needs "
                          f"{', '.join(REQUIRED_SHEET_COLUMNS)} (and pattern for layout 'pattern'); "
                          f"found {list(sheet.columns)}")
    if sheet.empty:
        raise ConfigError(f"{sheet_path}: the plate sheet has no plates")
    if "pattern" not in sheet.columns:
        sheet["pattern"] = ""
    sheet = sheet.apply(lambda col: col.str.strip())
    sheet = sheet[SHEET_COLUMNS + [c for c in sheet.columns if c not in SHEET_COLUMNS]]

    problems: list[str] = []
    for i, row in enumerate(sheet.to_dict("records")):
        where = f"row {i + 1} (line {i + 2}, plate {row['plate']!r})"
        problems += [f"{where}, {p}" for p in _row_problems(row, schema_path)]
    dupes = sheet["plate"][sheet["plate"].duplicated(keep=False)]
    for plate in dict.fromkeys(dupes):
        lines = [str(i + 2) for i in range(len(sheet)) if sheet["plate"].iloc[i] == plate]
        problems.append(f"plate {plate!r} appears more than once (lines {', '.join(lines)}); "
                        "plates must be unique")
    if problems:
        raise ConfigError(_report(sheet_path, problems))

    if check_files:
        missing_files: list[str] = []
        for i, row in enumerate(sheet.to_dict("records")):
            where = f"row {i + 1} (line {i + 2}, plate {row['plate']!r})"
            missing_files += [f"{where}, {p}" for p in _file_problems(row, chans)]
        if missing_files:
            raise InputError(sheet_path, _report(None, missing_files))
    sheet.index = pd.Index(sheet["plate"].to_numpy(), name=None)
    return sheet


def check_plate_row(plate_row: Mapping, *, channels: Sequence[Mapping] | Sequence[Channel],
                    check_files: bool = True, source: str = "plate sheet row",
                    schema_path: str | None = None) -> dict:
    """Validate one plate-sheet row (as :func:`read_plate_sheet` does) and return it as a dict
    of stripped strings with ``pattern`` filled in. Used by ingest, which may be called
    without the sheet."""
    row = {str(k): ("" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v).strip())
           for k, v in plate_row.items()}
    row.setdefault("pattern", "")
    chans = channels if channels and all(isinstance(c, Channel) for c in channels) \
        else parse_channels(channels)  # type: ignore[arg-type]
    problems = _row_problems(row, schema_path)
    if problems:
        raise ConfigError(_report(source, problems))
    if check_files:
        problems = _file_problems(row, chans)  # type: ignore[arg-type]
        if problems:
            raise InputError(source, _report(None, problems))
    return row


def _row_problems(row: Mapping[str, str], schema_path: str | None) -> list[str]:
    import jsonschema

    schema = load_plate_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(dict(row)), key=lambda e: list(e.absolute_path)):
        problems.append(_describe(error, row))
    if not problems and row.get("layout") == "pattern":
        try:
            check_pattern(row["pattern"], "column 'pattern'")
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _describe(error, row: Mapping[str, str]) -> str:
    """A schema violation as 'column X: what is wrong (allowed values)'."""
    column = error.absolute_path[-1] if error.absolute_path else None
    value = row.get(column) if column is not None else None
    where = f"column {column!r}" if column is not None else "row"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{where}: {value!r} is not one of the allowed values: {allowed}"
    if error.validator == "pattern":
        return (f"{where}: {value!r} is not a valid identifier (must match {error.validator_value}:"
                " letters, digits, '_', '.', '-', starting with a letter or digit; no path "
                "separators or spaces)")
    if error.validator == "minLength":
        extra = " (required when layout is 'pattern')" if column == "pattern" else ""
        return f"{where}: must not be empty{extra}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"


def _file_problems(row: Mapping[str, str], chans: list[Channel]) -> list[str]:
    problems = []
    path = Path(row["path"])
    if row["layout"] == "loaddata":
        if not path.is_file():
            problems.append(f"column 'path': LoadData CSV {str(path)!r} does not exist")
        else:
            problems += _loaddata_header_problems(path, chans)
    elif not path.is_dir():
        problems.append(f"column 'path': image folder {str(path)!r} does not exist")
    if not Path(row["platemap"]).is_file():
        problems.append(f"column 'platemap': plate map {row['platemap']!r} does not exist")
    return problems


def _loaddata_header_problems(path: Path, chans: list[Channel]) -> list[str]:
    try:
        header = set(pd.read_csv(path, nrows=0).columns)
    except Exception as exc:  # malformed CSV
        return [f"column 'path': cannot read LoadData CSV {str(path)!r} ({type(exc).__name__}: {exc})"]
    needed = [f"{kind}_Orig{c.token}" for c in chans for kind in ("FileName", "PathName")]
    lacking = [c for c in needed if c not in header]
    if lacking:
        offered = sorted(c[len("FileName_Orig"):] for c in header if c.startswith("FileName_Orig"))
        return [f"column 'path': LoadData CSV {str(path)!r} lacks {lacking} for the configured "
                f"channel tokens; tokens in the CSV: {offered}"]
    return []


def _report(source: str | os.PathLike | None, problems: list[str]) -> str:
    shown = problems[:_MAX_REPORTED]
    more = [f"... and {len(problems) - _MAX_REPORTED} more"] if len(problems) > _MAX_REPORTED else []
    head = f"{source}: " if source else ""
    return f"{head}{len(problems)} problem(s):\n  " + "\n  ".join(shown + more)


# --------------------------------------------------------------------------- plate maps


def normalize_column_name(name: object) -> str:
    """'Metadata_Well' -> 'well', 'Metadata_MOA' -> 'moa', 'Dose (uM)' -> 'dose_um'."""
    text = re.sub(r"^metadata_", "", str(name).strip(), flags=re.IGNORECASE).lower()
    text = re.sub(r"[^a-z0-9_.-]+", "_", text).strip("_")
    return text or "column"


def parse_bool(value: object, source: str, column: str) -> bool:
    """true/false, t/f, yes/no, y/n, 1/0 (any case) -> bool; anything else raises InputError."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(source, f"column {column!r}: {value!r} is not a boolean "
                             "(use true/false, yes/no or 1/0)")


def read_platemap(path: str | os.PathLike, *, plate: str | None = None,
                  control_values: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a plate map (CSV, TSV or Parquet) and normalise it.

    Columns are recognised by name without a ``Metadata_`` prefix, in any case (JUMP names
    work); extra columns keep their names (``Metadata_*`` ones lose the prefix and are
    lower-cased, as in :func:`phenoica.profiles.load_profiles`). The well
    comes from ``well``/``well_position`` (or ``row`` + ``col``), the perturbation from
    ``perturbation`` (else ``pert_iname``, ``treatment``, ``compound``, ``broad_sample``,
    ``jcp2022``), the control flag from ``is_control``/``control`` (booleans), else from
    ``control_type == 'negcon'`` (JUMP), else from ``perturbation in control_values``. A
    ``plate`` column lets one map describe several plates: rows of ``plate`` are kept.
    Other columns are carried as extras (numeric when every value is a number).

    Returns
    -------
    pandas.DataFrame
        ``well`` (``A01``), ``perturbation`` (str), ``is_control`` (bool), then the extras.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(src, "plate map not found")
    try:
        raw = read_table(src, dtype=str, keep_default_na=False) \
            if src.suffix.lower() != ".parquet" else read_table(src)
    except Exception as exc:  # malformed table
        raise InputError(src, f"cannot read plate map ({type(exc).__name__}: {exc})") from exc
    if raw.empty:
        raise InputError(src, "plate map has no rows")
    raw = raw.astype(object).where(raw.notna(), "").map(lambda v: str(v).strip())
    names = [normalize_column_name(c) for c in raw.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(src, f"columns {dupes} appear twice after dropping 'Metadata_' and "
                              f"lower-casing (columns: {list(raw.columns)})")
    # roles (well, perturbation, ...) are found by normalised name; extras keep the names the
    # user gave (JUMP Metadata_* names lose the prefix and are lower-cased, like profiles)
    given = {n: (n if re.match(r"(?i)metadata_", str(c).strip()) else str(c).strip().replace("/", "_"))
             for n, c in zip(names, raw.columns)}
    raw.columns = names
    lines = pd.Series(raw.index + 2, index=raw.index)  # header is line 1

    if "plate" in raw.columns:
        plates = raw["plate"]
        if plate is not None:
            raw = raw[plates == str(plate)]
            if raw.empty:
                raise InputError(src, f"no rows for plate {plate!r}; plates in this map: "
                                      f"{sorted(set(plates))[:20]}")
        elif plates.nunique() > 1:
            raise InputError(src, f"plate map covers {plates.nunique()} plates; say which one "
                                  "(plate=...)")
        raw = raw.drop(columns="plate")

    out = pd.DataFrame(index=raw.index)
    well_col = next((c for c in WELL_COLUMNS if c in raw.columns), None)
    used = set()
    if well_col is not None:
        out["well"] = [normalize_well(w, source=f"{src}, line {ln}")
                       for w, ln in zip(raw[well_col], lines[raw.index])]
        used.add(well_col)
    elif {"row", "col"} <= set(raw.columns):
        out["well"] = [well_from_row_col(r, c, f"{src}, line {ln}")
                       for r, c, ln in zip(raw["row"], raw["col"], lines[raw.index])]
    else:
        raise InputError(src, f"no well column; expected one of {list(WELL_COLUMNS)} (or "
                              f"Metadata_Well, or row + col); found {list(raw.columns)}")
    used |= {"row", "col"} & set(raw.columns)  # recomputed from the well by ingest

    pert_col = next((c for c in PERTURBATION_COLUMNS if c in raw.columns), None)
    if pert_col is None:
        raise InputError(src, f"no perturbation column; expected one of "
                              f"{list(PERTURBATION_COLUMNS)}; found {list(raw.columns)}")
    empty = raw[pert_col] == ""
    if empty.any():
        raise InputError(src, f"column {pert_col!r} is empty on line(s) "
                              f"{lines[raw.index[empty]].tolist()[:20]}")
    out["perturbation"] = raw[pert_col].to_numpy()
    used.add(pert_col)

    out["is_control"] = _control_flags(raw, out["perturbation"], src, lines, control_values, used)

    dup = out["well"][out["well"].duplicated(keep=False)]
    if not dup.empty:
        raise InputError(src, f"well(s) {sorted(set(dup))[:20]} appear more than once; one row "
                              "per well")
    for col in raw.columns:
        if col in used:
            continue
        if col in RESERVED_PLATEMAP_COLUMNS or col.startswith("path_") or col in out.columns:
            raise InputError(src, f"column {col!r} is reserved (ingest sets it); rename it")
        out[given[col]] = _maybe_numeric(raw[col])
    return out.reset_index(drop=True)


def _control_flags(raw: pd.DataFrame, perturbation: pd.Series, src: Path, lines: pd.Series,
                   control_values: Sequence[str] | None, used: set[str]) -> list[bool]:
    flag_col = next((c for c in CONTROL_FLAG_COLUMNS if c in raw.columns), None)
    if flag_col is not None:
        used.add(flag_col)
        return [parse_bool(v, f"{src}, line {ln}", flag_col)
                for v, ln in zip(raw[flag_col], lines[raw.index])]
    if "control_type" in raw.columns:
        return (raw["control_type"].str.lower() == "negcon").tolist()
    if control_values:
        wanted = {str(v) for v in control_values}
        return perturbation.isin(wanted).tolist()
    raise InputError(src, "no control flag: add a boolean is_control column (or JUMP "
                          "Metadata_control_type with 'negcon'), or list the control "
                          "perturbations in the config key ingest.control_values (e.g. "
                          f"ingest.control_values: [DMSO]); found columns {list(raw.columns)}")


def _maybe_numeric(values: pd.Series) -> pd.Series:
    """Numbers stay numbers (empty cells -> NaN) when every non-empty value is numeric."""
    filled = values[values != ""]
    converted = pd.to_numeric(filled, errors="coerce")
    if len(filled) and converted.notna().all():
        return pd.to_numeric(values.replace("", float("nan")))
    return values.astype(str)

"""Checks of the config against the data it names, made while Snakemake builds the DAG.

The schema checks a config's keys and values; these check what the values refer to: the columns
of the plate maps or of a profiles table (biology label, dose, control and batch columns, the
columns a method or a figure reads), the channel tokens of the image file names, the number of
batches the held-out-batch benchmarks split, and the wells each post-processing fit gets. They
read the plate sheet, the plate maps and the header of a profiles table, never an image's pixels,
so that ``snakemake -n`` stops before any job runs, with the config key, the file and what was
found.

Each check is made for the rules that need it (:class:`DataChecks`, called from input functions in
``workflow/rules/common.smk``), so ``snakemake embed`` on a sheet of one batch still runs, while
``snakemake`` (whose default target includes the benchmarks) stops before embedding anything.
Light imports only: the Snakefile imports this module at every start.
"""

from __future__ import annotations

import bz2
import csv
import fnmatch
import functools
import gzip
import lzma
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .sheet import CONTROL_FLAG_COLUMNS, PERTURBATION_COLUMNS, WELL_COLUMNS, normalize_column_name, parse_bool

#: obs columns of the wells AnnData besides the plate-map columns (ingest_plate writes plate, batch,
#: well, row, col, the plate map's roles and the QC flags; collect_wells adds n_sites)
WELL_OBS_COLUMNS = ("plate", "batch", "well", "row", "col", "perturbation", "is_control", "qc_flagged", "qc_pass",
                    "n_sites")
#: obs columns a profiles table always gives (phenoica.profiles.CONTRACT_COLUMNS)
PROFILE_OBS_COLUMNS = ("plate", "well", "batch", "perturbation", "is_control")
#: post-processing algorithms that correct each batch with that batch's own control wells
PER_BATCH_CONTROL_METHODS = ("centerscale", "tvn", "tvn_ica")
#: their default ``min_controls`` (phenoica.postprocess.methods; a standard deviation needs two)
DEFAULT_MIN_CONTROLS = 2
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_SHOWN = 8  # files named in one message


# --------------------------------------------------------------------------- reading tables


def _text_format(path: Path) -> tuple[Any, str] | None:
    """(opener, delimiter) of a CSV/TSV file as phenoica.io.tables.read_table reads it, or None
    for Parquet and compressions the standard library cannot open."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".parquet":
        return None
    opener = open
    if suffixes and suffixes[-1] in _OPENERS:
        opener = _OPENERS[suffixes[-1]]
        suffixes = suffixes[:-1]
    elif suffixes and suffixes[-1] == ".zst":
        return None
    core = suffixes[-1] if suffixes else ""
    return opener, ("\t" if core in {".tsv", ".tab", ".txt"} else ",")


def read_header(path: str | os.PathLike) -> list[str]:
    """Column names of a CSV/TSV (optionally compressed) or Parquet table; reads the first line
    (or the Parquet schema) only."""
    p = Path(path)
    fmt = _text_format(p)
    try:
        if fmt is None:
            if p.suffix.lower() == ".parquet":
                import pyarrow.parquet as pq

                return [n for n in pq.read_schema(p).names if not n.startswith("__index_level_")]
            from .io.tables import read_table

            return [str(c) for c in read_table(p, nrows=0).columns]
        opener, sep = fmt
        with opener(p, "rt", encoding="utf-8-sig", newline="") as handle:
            return [c.strip() for c in next(csv.reader(handle, delimiter=sep), [])]
    except (OSError, ValueError, csv.Error) as exc:
        raise ConfigError(f"{p}: cannot read the table's header ({type(exc).__name__}: {exc})") from exc


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    fmt = _text_format(path)
    if fmt is None:
        from .io.tables import read_table

        table = read_table(path, dtype=str, keep_default_na=False) if path.suffix.lower() != ".parquet" \
            else read_table(path).astype(str)
        return [str(c).strip() for c in table.columns], table.to_numpy().tolist()
    opener, sep = fmt
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter=sep))
    if not rows:
        return [], []
    return [c.strip() for c in rows[0]], [r for r in rows[1:] if any(v.strip() for v in r)]


# --------------------------------------------------------------------------- plate maps


def platemap_obs_columns(header: Sequence[str]) -> set[str]:
    """The obs columns of the wells AnnData when the plate maps have these columns: the plate
    map's roles under their contract names, the other columns under the names
    phenoica.sheet.read_platemap gives them (``Metadata_MOA`` -> ``moa``, ``MOA`` stays)."""
    names = [normalize_column_name(c) for c in header]
    present = set(names)
    roles = {next((c for c in WELL_COLUMNS if c in present), None),
             next((c for c in PERTURBATION_COLUMNS if c in present), None),
             next((c for c in CONTROL_FLAG_COLUMNS if c in present), None), "row", "col", "plate"}
    out = set(WELL_OBS_COLUMNS)
    for raw, name in zip(header, names):
        if name in roles:
            continue
        out.add(name if re.match(r"(?i)metadata_", raw.strip()) else raw.strip().replace("/", "_"))
    return out


def control_problem(header: Sequence[str], path: str, control_values: Sequence[str]) -> str | None:
    """Why the control wells of a plate map with this header cannot be told apart, or None."""
    names = {normalize_column_name(c) for c in header}
    if names & set(CONTROL_FLAG_COLUMNS) or "control_type" in names or control_values:
        return None
    return (f"config key ingest.control_values: plate map {path} has no control column (is_control "
            "or control, true/false; or JUMP Metadata_control_type with 'negcon') and "
            f"ingest.control_values is empty; columns found: {list(header)}. Add the column, or "
            "list the perturbation names of the control wells in ingest.control_values")


@functools.cache
def _platemap_counts(path: str, stamp: tuple[int, int], control_values: tuple[str, ...]
                     ) -> dict[str | None, tuple[int, int]]:
    """{plate (None when the map has no plate column): (wells, control wells)} of one plate map,
    with the control flags read as phenoica.sheet.read_platemap reads them. ``stamp`` (mtime,
    size) renews the cache when the file changes."""
    header, rows = _read_rows(Path(path))
    names = [normalize_column_name(c) for c in header]
    index = {name: i for i, name in reversed(list(enumerate(names)))}
    flag = next((c for c in CONTROL_FLAG_COLUMNS if c in index), None)
    pert = next((c for c in PERTURBATION_COLUMNS if c in index), None)
    wanted = {str(v) for v in control_values}
    counts: dict[str | None, list[int]] = {}
    for line, row in enumerate(rows, start=2):
        def cell(column: str, row=row) -> str:
            i = index[column]
            return row[i].strip() if i < len(row) else ""

        if flag is not None:
            control = parse_bool(cell(flag), f"{path}, line {line}", flag)
        elif "control_type" in index:
            control = cell("control_type").lower() == "negcon"
        else:
            control = pert is not None and cell(pert) in wanted
        plate = cell("plate") if "plate" in index else None
        entry = counts.setdefault(plate, [0, 0])
        entry[0] += 1
        entry[1] += int(control)
    return {plate: (n, c) for plate, (n, c) in counts.items()}


def platemap_counts(path: str | os.PathLike, plate: str, control_values: Sequence[str]
                    ) -> tuple[int, int] | None:
    """(wells, control wells) of ``plate`` in its plate map; None when the map does not exist
    yet (the demo's simulated plates)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    counts = _platemap_counts(str(path), (stat.st_mtime_ns, stat.st_size), tuple(control_values))
    return counts.get(plate, counts.get(None, (0, 0)))


# --------------------------------------------------------------------------- the checks


def _files(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def column_problems(keys: Mapping[str, str | None], columns: Mapping[str, set[str]], *,
                    where: str) -> list[str]:
    """Problems of config keys naming obs columns (``{"labels.biology": "moa"}``) that some
    files do not give. ``columns``: obs columns each file gives (every file must give the
    column: the wells table keeps only the columns all plates share); ``where`` describes the
    files, e.g. "the plate maps of config/plates.tsv"."""
    problems = []
    for key, column in keys.items():
        if column is None or not columns:
            continue
        lacking = [path for path, cols in columns.items() if column not in cols]
        if not lacking:
            continue
        hint = " (null = the perturbation)" if key.endswith(("biology", ".label")) else ""
        if len(lacking) == len(columns):
            first = lacking[0]
            problems.append(f"config key {key}: column {column!r} is in none of {where}; "
                            f"{first} gives the columns {sorted(columns[first])}{hint}")
        else:
            problems.append(f"config key {key}: column {column!r} is missing from {len(lacking)} of "
                            f"the {len(columns)} {where.removeprefix('the ')}: {_files(lacking)} (the "
                            "wells table keeps only the columns that every plate has)")
    return problems


def _as_list(value) -> list:
    """A config value that is one item, a list of them, or null, as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("the config does not fit the data:\n  " + "\n  ".join(problems))


class DataChecks:
    """The dry-run checks of one workflow config against its plate sheet, plate maps or profiles
    table. Each method checks what one rule needs and returns nothing; the first call does the
    work, later calls (one per job of the rule) return at once.

    ``config``: the validated config; ``plates``: the plate sheet's rows (dicts with ``plate``,
    ``batch``, ``layout``, ``path``, ``platemap``, ...), empty for source ``profiles``.
    """

    def __init__(self, config: Mapping[str, Any], plates: Sequence[Mapping[str, str]]):
        self.config = config
        self.source = config["source"]
        self.plates = list(plates)
        self.sheet = config.get("plates")
        self._done: set = set()
        self._headers: dict[str, list[str]] = {}  # plate map -> header, read once

    def _header(self, path: str) -> list[str]:
        """The header of a plate map, read once (plates may share a map; ``columns`` and
        ``ingest`` both need it)."""
        if path not in self._headers:
            self._headers[path] = read_header(path)
        return self._headers[path]

    def _once(self, key) -> bool:
        if key in self._done:
            return False
        self._done.add(key)
        return True

    # --- what the data gives ---------------------------------------------------------------
    @functools.cached_property
    def columns(self) -> dict[str, set[str]]:
        """obs columns each plate map (or the profiles table) gives; {} while unknown (the
        demo's plate maps before the simulator wrote them)."""
        if self.source == "profiles":
            return {self.config["profiles"]["path"]: self.profile_columns()}
        out = {}
        for path in dict.fromkeys(str(row["platemap"]) for row in self.plates):
            if not os.path.isfile(path):
                return {}
            out[path] = platemap_obs_columns(self._header(path))
        return out

    @property
    def where(self) -> str:
        if self.source == "profiles":
            return f"the profiles table (config key profiles.path) {self.config['profiles']['path']}"
        return f"the plate maps of the plate sheet {self.sheet}"

    def profile_columns(self) -> set[str]:
        """obs columns of the profiles table, from its header; checks the columns the
        ``profiles`` section names (ConfigError naming the key, the file and what it has)."""
        profiles = self.config["profiles"]
        path = profiles["path"]
        if not path:
            raise ConfigError("config key profiles.path: with source 'profiles' name the table of "
                              "per-well profiles (CSV, CSV.GZ or Parquet)")
        if not os.path.isfile(path):
            raise ConfigError(f"config key profiles.path: {path} does not exist")
        header = read_header(path)
        present = set(header)
        problems = []
        for key in ("batch_col", "perturbation_col", "control_col", "well_col"):
            if profiles[key] is not None and profiles[key] not in present:
                problems.append(f"config key profiles.{key}: column {profiles[key]!r} is not in {path}")
        plate_cols = _as_list(profiles["plate_col"])
        missing = [c for c in plate_cols if c not in present]
        if missing:
            problems.append(f"config key profiles.plate_col: column(s) {missing} are not in {path}")
        missing = [c for c in (profiles["label_cols"] or []) if c not in present]
        if missing:
            problems.append(f"config key profiles.label_cols: column(s) {missing} are not in {path}")
        feature_cols = profiles["feature_cols"]
        if isinstance(feature_cols, str):  # one glob pattern
            features = {c for c in header if fnmatch.fnmatchcase(c, feature_cols)}
            if not features:
                problems.append(f"config key profiles.feature_cols: no column of {path} matches the "
                                f"pattern {feature_cols!r}")
        else:
            features = set(feature_cols or [])
            missing = [c for c in (feature_cols or []) if c not in present]
            if missing:
                problems.append(f"config key profiles.feature_cols: column(s) {missing} are not in {path}")
        if problems:
            meta = [c for c in header if c.startswith("Metadata_")]
            _raise([*problems, f"(the Metadata_ columns of {path}: {meta})"])
        roles = {profiles[k] for k in ("batch_col", "perturbation_col", "well_col")}
        if len(plate_cols) == 1:  # several plate columns stay obs columns beside the joined plate
            roles |= set(plate_cols)
        # without feature_cols every numeric column is a feature, which the header cannot tell:
        # every column may become an obs column
        return set(PROFILE_OBS_COLUMNS) | {normalize_column_name(c) for c in header
                                           if c not in roles and c not in features}

    def plate_wells(self) -> list[tuple[str, str, int, int]] | None:
        """(plate, batch, wells, control wells) per plate from the plate maps; None while a
        plate map does not exist yet. Worked out once (every method's postprocess and benchmark
        check reads it)."""
        return self._plate_wells

    @functools.cached_property
    def _plate_wells(self) -> list[tuple[str, str, int, int]] | None:
        control_values = self.config["ingest"]["control_values"]
        out = []
        for row in self.plates:
            counts = platemap_counts(row["platemap"], str(row["plate"]), control_values)
            if counts is None:
                return None
            out.append((str(row["plate"]), str(row["batch"]), *counts))
        return out

    # --- per rule ----------------------------------------------------------------------------
    def ingest(self, row: Mapping[str, str], tokens: set[str] | None = None) -> None:
        """One plate before ingest: its plate map says which wells are controls, and its image
        file names carry every configured channel token. ``tokens``: the channel tokens of the
        plate's file names when the caller has listed them already
        (``phenoica.io.layouts.list_image_paths(..., tokens=...)``, as the Snakefile's input
        function does); None lists them here."""
        if not self._once(("ingest", row["plate"])) or self.source == "profiles":
            return
        path = str(row["platemap"])
        if os.path.isfile(path):
            problem = control_problem(self._header(path), path, self.config["ingest"]["control_values"])
            _raise([problem] if problem else [])
        if self.source == "plates":
            self.channel_tokens(row, tokens)

    def channel_tokens(self, row: Mapping[str, str], found: set[str] | None = None) -> None:
        """Every configured channel token is among ``found``, the tokens of the plate's file
        names (None: listed here)."""
        from .io.layouts import list_image_paths, plate_folder

        channels = self.config["channels"]
        if found is None:
            found = set()
            list_image_paths(row, channels, tokens=found)
        if not found:  # no image yet, or none that parses: ingest reports it with the file names
            return
        key = {str(int(t)) if t.strip().isdigit() else t.strip(): c["name"] for t, c in
               ((str(c["token"]), c) for c in channels)}
        missing = [f"{token!r} ({name})" for token, name in key.items() if token not in found]
        if missing:
            _raise([f"config key channels: no image file of plate {row['plate']} (plate sheet "
                    f"{self.sheet}, folder {plate_folder(row)}, layout {row['layout']}) carries the "
                    f"channel token(s) {', '.join(missing)}; its file names carry the tokens "
                    f"{sorted(found, key=lambda t: (len(t), t))}. A channel's token is the part of "
                    "the file name that names it (rxrx: <well>_s<site>_w<token>.tif; phenix: "
                    "...-ch<token>sk1...; pattern: the channel group)"])

    def named_columns(self, keys: Mapping[str, str | None]) -> None:
        """obs columns that config keys name are columns of every plate map (or of the
        profiles table)."""
        keys = {k: v for k, v in keys.items() if v is not None}
        if keys and self._once(("columns", tuple(sorted(keys.items())))):
            _raise(column_problems(keys, self.columns, where=self.where))

    def scores(self) -> None:
        """Separation scores read the biology label."""
        self.named_columns({"labels.biology": self.config["labels"]["biology"]})

    def figures(self) -> None:
        """The report's figures are coloured by the biology label and report.color."""
        keys = {"labels.biology": self.config["labels"]["biology"]}
        for i, column in enumerate(self.config["report"]["color"] or []):
            keys[f"report.color[{i}]"] = column
        self.named_columns(keys)

    def postprocess(self, method: str) -> None:
        """One post-processing output as the workflow fits it: the columns its parameters name,
        the batches of postprocess.train_batches, and enough wells (and control wells per batch)
        in the plate maps for its fit."""
        if not self._once(("postprocess", method)):
            return
        post = self.config["postprocess"]
        self._method_columns(method)
        if self.source == "profiles":
            return  # the table's rows are not read in the dry run
        batches = sorted({str(row["batch"]) for row in self.plates})
        train_batches = [str(b) for b in post["train_batches"] or []]
        if post["fit_on"] == "train_batches":
            unknown = sorted(set(train_batches) - set(batches))
            if unknown or not train_batches:
                _raise(["config key postprocess.train_batches: fit_on is 'train_batches' but "
                        + (f"batch(es) {unknown} are not" if unknown else "no batch is listed")
                        + f" in the plate sheet {self.sheet} (its batches: {batches})"])
        wells = self.plate_wells()
        if wells is None:
            return
        fit = _fit_wells(wells, post["fit_on"], train_batches)
        _raise(self._fit_problems(method, fit, f"fit_on {post['fit_on']!r} gives", wells))

    def benchmark(self, method: str) -> None:
        """One method's held-out-batch benchmark: at least 2 batches, the label columns the
        tasks read, and enough wells for the method's fit without each held-out batch."""
        bench, labels = self.config["benchmark"], self.config["labels"]
        keys = {"labels.biology": labels["biology"], "labels.dose": labels.get("dose")}
        for key in ("label", "dose", "auroc_by", "classify_by"):
            if bench.get(key) is not None:
                keys[f"benchmark.{key}"] = bench[key]
        self.named_columns(keys)
        self._method_columns(method)
        if self.source == "profiles" or not self._once(("benchmark", method)):
            return  # a profiles table's batches are in its rows, which the dry run does not read
        batches = sorted({str(row["batch"]) for row in self.plates})
        if len(batches) < 2:
            plates = [str(row["plate"]) for row in self.plates]
            _raise([f"config key plates: held-out-batch benchmarks (rule benchmark_generalization, "
                    f"part of the default target) need at least 2 batches; the plate sheet "
                    f"{self.sheet} has 1 ({batches[0]!r} in column batch, plates {_files(plates)}). "
                    "Add plates of another batch, or stop before the benchmarks: `snakemake embed`, "
                    f"or a method's {self.config['results']}/postprocess/<model>/<method>.h5ad"])
        wells = self.plate_wells()
        if wells is None or not _leave_one_batch_out(bench, len(batches)):
            return
        fit_on = self.config["postprocess"]["fit_on"]
        for batch in batches:  # in the benchmark, train_batches means all training wells
            rest = [w for w in wells if w[1] != batch]
            fit = _fit_wells(rest, "controls" if fit_on == "controls" else "all", [])
            _raise(self._fit_problems(method, fit, f"the held-out-batch benchmark without batch "
                                                   f"{batch!r} gives", rest))

    def _method_columns(self, method: str) -> None:
        spec = self.config["postprocess"]["methods"][method]
        self.named_columns({f"postprocess.methods.{method}.{k}": spec[k]
                            for k in ("batch_key", "control_key", "bio_key") if isinstance(spec.get(k), str)})

    def _fit_problems(self, method: str, fit: tuple[int, str, list[tuple[str, int]]], gives: str,
                      wells: list[tuple[str, str, int, int]]) -> list[str]:
        """A method fitted on ``fit`` (wells, what they are, per plate): enough wells for its
        components (n + 1 for n: a centred covariance of n wells has rank n - 1) and for a
        covariance, and control wells in every batch for the methods that need them."""
        spec = self.config["postprocess"]["methods"][method]
        algorithm, prefix = spec.get("method", method), f"postprocess.methods.{method}"
        have, what, per_plate = fit
        k = spec.get("n_components")
        explicit = isinstance(k, int) and not isinstance(k, bool)
        need = max(2, k + 1) if explicit else 2
        problems = []
        if have < need:
            ask = f"{k} components need" if explicit else "a covariance needs"
            problems.append(f"config key {prefix}{'.n_components' if explicit else ''}: {ask} at least "
                            f"{need} wells to fit on; {gives} at most {have} ({what} in the plate maps "
                            f"of {self.sheet}: {_files([f'{n} on {p}' for p, n in per_plate])}); "
                            + ("lower n_components (null = the numerical rank of the fitting set) or "
                               if explicit else "")
                            + "fit on more wells (postprocess.fit_on)")
        if algorithm in PER_BATCH_CONTROL_METHODS:
            least = int(spec.get("min_controls", DEFAULT_MIN_CONTROLS))
            per_batch: dict[str, int] = {}
            for _, batch, _, controls in wells:
                per_batch[batch] = per_batch.get(batch, 0) + controls
            short = {b: c for b, c in sorted(per_batch.items()) if c < least}
            if short:
                problems.append(f"config key {prefix}: method {algorithm!r} corrects every batch with "
                                f"its own control wells and needs at least {least} per batch "
                                f"(min_controls); the plate maps of {self.sheet} give "
                                + ", ".join(f"{c} in batch {b!r}" for b, c in short.items())
                                + " (column is_control, or ingest.control_values)")
        return problems


def _fit_wells(wells: Sequence[tuple[str, str, int, int]], fit_on: str, train_batches: Sequence[str]
               ) -> tuple[int, str, list[tuple[str, int]]]:
    """(wells a fit gets, what they are, (plate, wells) per plate) under ``fit_on``; the
    per-plate text is written only for a message (the benchmark check runs once per held-out
    batch over every plate)."""
    if fit_on == "controls":
        chosen = [(p, c) for p, _, _, c in wells]
        what = "control wells"
    elif fit_on == "train_batches":
        chosen = [(p, n) for p, b, n, _ in wells if b in train_batches]
        what = "wells of postprocess.train_batches"
    else:
        chosen = [(p, n) for p, _, n, _ in wells]
        what = "wells"
    return sum(n for _, n in chosen), what, chosen


def _leave_one_batch_out(bench: Mapping[str, Any], n_batches: int) -> bool:
    """Whether the benchmark splits leave-one-batch-out (its folds are then known here)."""
    split = bench.get("split", "auto")
    return split == "leave_one_batch_out" or (
        split == "auto" and n_batches <= int(bench.get("max_lobo_batches", n_batches)))

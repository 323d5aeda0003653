"""Plate sheet (schema, identifiers, layouts, regexes, files) and plate-map reading."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from helpers_data import FLY, PHENIX, REPO

from phenoica.errors import ConfigError, InputError
from phenoica.sheet import (
    PLATES_SCHEMA_PATH,
    check_plate_row,
    load_plate_schema,
    normalize_column_name,
    read_plate_sheet,
    read_platemap,
)

FLY_PATTERN = r"(?=(?P<row>01))(?P<col>01)_POS(?P<site>\d+)_(?P<channel>[DFR])\.TIF"
CHANNELS = [{"name": "DNA", "token": "5"}, {"name": "RNA", "token": "6"}]


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture
def platemap(tmp_path) -> Path:
    path = tmp_path / "map.csv"
    path.write_text("well,perturbation,is_control\nC03,DMSO,true\n")
    return path


def write_sheet(path: Path, rows: list[dict], sep="\t") -> Path:
    pd.DataFrame(rows).to_csv(path, sep=sep, index=False)
    return path


def good_rows(platemap: Path, tmp_path: Path) -> list[dict]:
    csv = tmp_path / "load_data.csv"
    cols = {f"{k}_Orig{c['token']}": "x" for c in CHANNELS for k in ("FileName", "PathName")}
    pd.DataFrame([{"Metadata_Plate": "P3", "Metadata_Well": "C03", "Metadata_Site": 1, **cols}]
                 ).to_csv(csv, index=False)
    return [
        {"plate": "P1", "batch": "B1", "layout": "phenix", "path": PHENIX, "platemap": str(platemap),
         "pattern": ""},
        {"plate": "P2.fly", "batch": "B-2", "layout": "pattern", "path": FLY,
         "platemap": str(platemap), "pattern": FLY_PATTERN},
        {"plate": "P3", "batch": "B1", "layout": "loaddata", "path": str(csv),
         "platemap": str(platemap), "pattern": ""},
    ]


def test_schema_file_is_the_one_shipped():
    schema = load_plate_schema()
    assert PLATES_SCHEMA_PATH == REPO / "workflow" / "schemas" / "plates.schema.yaml"
    assert schema["properties"]["layout"]["enum"] == ["rxrx", "phenix", "loaddata", "pattern"]


def test_read_plate_sheet_mixed_layouts(tmp_path, platemap):
    sheet = read_plate_sheet(write_sheet(tmp_path / "plates.tsv", good_rows(platemap, tmp_path)),
                             channels=CHANNELS)
    assert list(sheet.index) == ["P1", "P2.fly", "P3"]
    assert list(sheet.columns[:6]) == ["plate", "batch", "layout", "path", "platemap", "pattern"]
    assert sheet.loc["P2.fly", "pattern"] == FLY_PATTERN
    assert sheet.loc["P1", "pattern"] == ""


def test_sheet_without_pattern_column_and_as_csv(tmp_path, platemap):
    rows = [r for r in good_rows(platemap, tmp_path) if r["layout"] != "pattern"]
    for r in rows:
        del r["pattern"]
    sheet = read_plate_sheet(write_sheet(tmp_path / "plates.csv", rows, sep=","), channels=CHANNELS)
    assert (sheet["pattern"] == "").all() and len(sheet) == 2


@pytest.mark.parametrize("column, value, message", [
    ("layout", "zeiss", r"row 2 \(line 3, plate 'P2.fly'\), column 'layout': 'zeiss' is not one of "
                        r"the allowed values: rxrx, phenix, loaddata, pattern"),
    ("plate", "P/2", r"column 'plate': 'P/2' is not a valid identifier \(must match "),
    ("plate", "../up", r"column 'plate': '../up' is not a valid identifier"),
    ("batch", "week 1", r"column 'batch': 'week 1' is not a valid identifier"),
    ("pattern", "", r"column 'pattern': must not be empty \(required when layout is 'pattern'\)"),
    ("pattern", r"(?P<well>\w+)_(?P<channel>\w)\.TIF", r"lacks the named group\(s\) site"),
    ("pattern", r"(?P<well>\w+", r"invalid regular expression"),
    ("path", "", r"column 'path': must not be empty"),
])
def test_sheet_schema_violations_name_file_row_column(tmp_path, platemap, column, value, message):
    rows = good_rows(platemap, tmp_path)
    rows[1][column] = value
    path = write_sheet(tmp_path / "plates.tsv", rows)
    with pytest.raises(ConfigError, match=message) as info:
        read_plate_sheet(path, channels=CHANNELS)
    assert str(info.value).startswith(f"{path}: ")


def test_sheet_reports_every_problem_at_once(tmp_path, platemap):
    rows = good_rows(platemap, tmp_path)
    rows[0]["layout"] = "nikon"
    rows[2]["plate"] = "P1"  # duplicate of row 1
    rows[2]["batch"] = "a/b"
    with pytest.raises(ConfigError) as info:
        read_plate_sheet(write_sheet(tmp_path / "plates.tsv", rows), channels=CHANNELS)
    text = str(info.value)
    assert "3 problem(s)" in text
    assert "'nikon' is not one of the allowed values" in text
    assert "'a/b' is not a valid identifier" in text
    assert "plate 'P1' appears more than once (lines 2, 4)" in text


def test_sheet_missing_columns_and_empty(tmp_path):
    path = write_sheet(tmp_path / "plates.tsv", [{"plate": "P1", "layout": "rxrx", "path": "x"}])
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['batch', 'platemap'\]"):
        read_plate_sheet(path, channels=CHANNELS)
    empty = tmp_path / "empty.tsv"
    empty.write_text("plate\tbatch\tlayout\tpath\tplatemap\n")
    with pytest.raises(ConfigError, match="no plates"):
        read_plate_sheet(empty, channels=CHANNELS)
    with pytest.raises(InputError, match="plate sheet not found"):
        read_plate_sheet(tmp_path / "absent.tsv", channels=CHANNELS)


def test_sheet_missing_files_and_switch(tmp_path, platemap):
    rows = good_rows(platemap, tmp_path)
    rows[0]["path"] = str(tmp_path / "not_yet")
    rows[1]["platemap"] = str(tmp_path / "nomap.csv")
    path = write_sheet(tmp_path / "plates.tsv", rows)
    with pytest.raises(InputError) as info:
        read_plate_sheet(path, channels=CHANNELS)
    text = str(info.value)
    assert text.startswith(f"{path}: 2 problem(s)")
    assert "image folder" in text and "not_yet" in text and "nomap.csv' does not exist" in text
    # folders the workflow creates (the simulated demo) are not required at load time
    assert len(read_plate_sheet(path, channels=CHANNELS, check_files=False)) == 3


def test_sheet_checks_loaddata_channel_columns(tmp_path, platemap):
    rows = good_rows(platemap, tmp_path)
    path = write_sheet(tmp_path / "plates.tsv", rows)
    with pytest.raises(InputError, match=r"lacks \['FileName_OrigER', 'PathName_OrigER'\] for the "
                                         r"configured channel tokens; tokens in the CSV: \['5', '6'\]"):
        read_plate_sheet(path, channels=CHANNELS + [{"name": "ER", "token": "ER"}])


def test_sheet_checks_channels_config(tmp_path, platemap):
    path = write_sheet(tmp_path / "plates.tsv", good_rows(platemap, tmp_path))
    with pytest.raises(ConfigError, match=r"channels\[1\]\.name: missing"):
        read_plate_sheet(path, channels=[{"name": "DNA", "token": "5"}, {"token": "6"}])


def test_check_plate_row(platemap):
    row = check_plate_row({"plate": "P1", "batch": "B1", "layout": "phenix", "path": PHENIX,
                           "platemap": str(platemap), "pattern": float("nan")}, channels=CHANNELS)
    assert row["pattern"] == ""
    with pytest.raises(ConfigError, match="plate sheet row: 1 problem"):
        check_plate_row({"plate": "P1", "batch": "B1", "layout": "pattern", "path": FLY,
                         "platemap": str(platemap)}, channels=CHANNELS)


def test_bad_sheet_fails_snakemake_dry_run(tmp_path, platemap):
    """The sheet is read when the Snakefile loads, so `snakemake -n` stops before scheduling."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(textwrap.dedent("""
        from phenoica.sheet import read_plate_sheet
        SHEET = read_plate_sheet(config["sheet"], channels=[{"name": "DNA", "token": "5"}])
        rule all:
            input: expand("out/{plate}.txt", plate=SHEET.index)
        rule make:
            output: "out/{plate}.txt"
            shell: "touch {output}"
    """))
    rows = good_rows(platemap, tmp_path)[:2]
    rows[1]["layout"] = "zeiss"
    bad = write_sheet(tmp_path / "bad.tsv", rows)
    failed = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(snakefile),
         "--config", f"sheet={bad}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "row 2 (line 3, plate 'P2.fly'), column 'layout': 'zeiss' is not one of the allowed " \
           "values" in output
    assert "Job stats" not in output and "rule make" not in output  # nothing was scheduled


# ------------------------------------------------------------------------- plate maps


def test_read_platemap_basic_csv_and_tsv(tmp_path):
    csv = tmp_path / "map.csv"
    csv.write_text("Well,Perturbation,is_control,dose,MOA\n"
                   "a1,DMSO,TRUE,,none\nB2,taxol,false,0.5,tubulin\nc012,taxol,0,1,tubulin\n")
    pm = read_platemap(csv)
    assert pm.columns.tolist() == ["well", "perturbation", "is_control", "dose", "MOA"]
    assert pm["well"].tolist() == ["A01", "B02", "C12"]
    assert pm["is_control"].tolist() == [True, False, False]
    assert pm["dose"].isna().tolist() == [True, False, False]
    assert pm["dose"].dtype.kind == "f" and pm["MOA"].tolist()[1] == "tubulin"
    tsv = tmp_path / "map.tsv"
    pm.to_csv(tsv, sep="\t", index=False)
    pd.testing.assert_frame_equal(read_platemap(tsv), pm)


def test_read_platemap_jump_style(tmp_path):
    path = tmp_path / "jump.csv"
    path.write_text("Metadata_Plate,Metadata_well_position,Metadata_broad_sample,"
                    "Metadata_control_type,Metadata_Gene\n"
                    "BR1,A01,DMSO,negcon,\nBR1,A02,BRD-1,trt,TP53\nBR1,A03,BRD-2,poscon_orf,\n"
                    "BR2,A01,DMSO,negcon,\n")
    pm = read_platemap(path, plate="BR1")
    assert pm.columns.tolist() == ["well", "perturbation", "is_control", "control_type", "gene"]
    assert pm["is_control"].tolist() == [True, False, False]  # only negcon is a negative control
    with pytest.raises(InputError, match="no rows for plate 'BR9'"):
        read_platemap(path, plate="BR9")
    with pytest.raises(InputError, match="covers 2 plates"):
        read_platemap(path)


def test_read_platemap_control_values_and_row_col(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("row,col,treatment\n1,1,DMSO\nB,3,drug\n")
    pm = read_platemap(path, control_values=["DMSO"])
    assert pm["well"].tolist() == ["A01", "B03"] and pm["is_control"].tolist() == [True, False]
    with pytest.raises(InputError, match="no control flag"):
        read_platemap(path)


@pytest.mark.parametrize("text, message", [
    ("well,perturbation,is_control\nA01,DMSO,maybe\n", r"line 2: column 'is_control': 'maybe' is "
                                                       r"not a boolean"),
    ("well,perturbation,is_control\nA01,DMSO,1\na1,x,0\n", r"well\(s\) \['A01'\] appear more than once"),
    ("well,perturbation,is_control\nA01,,1\n", r"column 'perturbation' is empty on line\(s\) \[2\]"),
    ("well,perturbation,is_control\nZZZ1,DMSO,1\n", r"line 2: well 'ZZZ1' is not a well name"),
    ("perturbation,is_control\nDMSO,1\n", r"no well column"),
    ("well,is_control\nA01,1\n", r"no perturbation column"),
    ("well,perturbation,is_control,site\nA01,x,1,2\n", r"column 'site' is reserved"),
    ("well,perturbation,is_control,Metadata_Well\nA01,x,1,A01\n", r"appear twice"),
    ("well,perturbation,is_control\n", r"plate map has no rows"),
])
def test_read_platemap_errors(tmp_path, text, message):
    path = tmp_path / "map.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        read_platemap(path)
    assert str(info.value).startswith(str(path))


def test_normalize_column_name():
    assert normalize_column_name("Metadata_MOA") == "moa"
    assert normalize_column_name("Dose (uM)") == "dose_um"
    assert normalize_column_name("metadata_pert_iname") == "pert_iname"

"""Layouts: file naming -> (well, site, channel, path) on the real images in tests/data and small
synthetic TIFF/PNG plates written in tmp_path. No pixels are read by the layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers_data import FLY, PHENIX, REPO

from phenoica.errors import ConfigError, InputError
from phenoica.ingest import plate_image_files
from phenoica.io.layouts import (
    Channel,
    check_pattern,
    list_plate_images,
    parse_channels,
    plate_folder,
    sites_table,
)

PHENIX_CHANNELS = [{"name": n, "token": t} for n, t in
                   [("ER", "2"), ("AGP", "3"), ("Mito", "4"), ("DNA", "5"), ("RNA", "6")]]
FLY_CHANNELS = [{"name": "DNA", "token": "D"}, {"name": "green", "token": "F"},
                {"name": "red", "token": "R"}]
# examplefly has no well: the leading "01" is read twice (lookahead) as row 1 and column 1, so
# every field belongs to well A01; the site is the POS number (2, 76, 218).
FLY_PATTERN = r"(?=(?P<row>01))(?P<col>01)_POS(?P<site>\d+)_(?P<channel>[DFR])\.TIF"
RXRX_CHANNELS = [{"name": f"c{t}", "token": str(t)} for t in (1, 2, 3)]


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def write_rxrx_plate(folder: Path, wells=("A01", "B02"), sites=(1, 2), tokens=(1, 2, 3),
                     ext="tif", shape=(16, 16)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for well in wells:
        for site in sites:
            for token in tokens:
                img = rng.integers(0, 4000, shape, dtype=np.uint16)
                path = folder / f"{well}_s{site}_w{token}.{ext}"
                if ext == "png":
                    from PIL import Image

                    Image.fromarray(img).save(path)
                else:
                    tifffile.imwrite(path, img)
    return folder


def test_parse_channels_reports_key_paths():
    assert parse_channels([{"name": "DNA", "token": 1}]) == [Channel("DNA", "1")]
    with pytest.raises(ConfigError, match=r"channels\[1\]\.token: missing"):
        parse_channels([{"name": "DNA", "token": "1"}, {"name": "ER"}])
    with pytest.raises(ConfigError, match=r"duplicate channel token"):
        parse_channels([{"name": "DNA", "token": "1"}, {"name": "ER", "token": "01"}])
    with pytest.raises(ConfigError, match=r"duplicate channel name"):
        parse_channels([{"name": "DNA", "token": "1"}, {"name": "DNA", "token": "2"}])
    with pytest.raises(ConfigError, match=r"channels\[0\]\.name: 'D/NA'"):
        parse_channels([{"name": "D/NA", "token": "1"}])
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_channels([])


def test_check_pattern_requires_named_groups():
    assert check_pattern(FLY_PATTERN).groupindex.keys() >= {"row", "col", "site", "channel"}
    with pytest.raises(ConfigError, match=r"lacks the named group\(s\) well \(or row \+ col\), site"):
        check_pattern(r"(?P<channel>\w)\.tif")
    with pytest.raises(ConfigError, match="lacks the named group"):
        check_pattern(r"(?P<row>[A-H])_(?P<site>\d)_(?P<channel>\w)\.tif")  # row without col
    with pytest.raises(ConfigError, match="invalid regular expression"):
        check_pattern(r"(?P<well>[A-H")


def test_phenix_real_folder():
    row = {"plate": "BR00143976", "layout": "phenix", "path": PHENIX}
    table = list_plate_images(row, PHENIX_CHANNELS)
    # brightfield (ch1) is not configured, so 5 of the 6 files are used, in channel order
    assert table["channel"].tolist() == ["ER", "AGP", "Mito", "DNA", "RNA"]
    assert set(table["well"]) == {"C03"} and set(table["site"]) == {3}
    assert (table["row"] == 3).all() and (table["col"] == 3).all()
    assert table["path"].iloc[3] == os.path.join(PHENIX, "r03c03f03p01-ch5sk1fk1fl1.tiff")
    sites = sites_table(table, PHENIX_CHANNELS, PHENIX)
    assert len(sites) == 1
    assert list(sites.columns) == ["well", "row", "col", "site", "path_ER", "path_AGP",
                                   "path_Mito", "path_DNA", "path_RNA"]


def test_phenix_skips_other_planes_and_uses_images_subfolder(tmp_path):
    images = tmp_path / "export" / "Images"
    images.mkdir(parents=True)
    src = REPO / PHENIX
    for f in src.iterdir():  # symlinks: real file names, nothing copied
        (images / f.name).symlink_to(f)
        (images / f.name.replace("p01-", "p02-")).symlink_to(f)
    (images / "Index.idx.xml").write_text("<xml/>")
    row = {"plate": "P", "layout": "phenix", "path": str(tmp_path / "export")}
    assert plate_folder(row) == images
    table = list_plate_images(row, PHENIX_CHANNELS)
    assert len(table) == 5 and all("p01-" in p for p in table["path"])


def test_pattern_examplefly_real_folder():
    row = {"plate": "fly", "layout": "pattern", "path": FLY, "pattern": FLY_PATTERN}
    table = list_plate_images(row, FLY_CHANNELS)
    assert len(table) == 9
    assert set(table["well"]) == {"A01"}
    assert sorted(set(table["site"])) == [2, 76, 218]
    sites = sites_table(table, FLY_CHANNELS, FLY)
    assert sites["site"].tolist() == [2, 76, 218]
    assert sites.loc[1, "path_red"] == os.path.join(FLY, "01_POS076_R.TIF")


def test_pattern_well_group_plate_group_and_recursive(tmp_path):
    root = tmp_path / "imgs"
    for plate in ("PA", "PB"):
        sub = root / f"run_{plate}"
        sub.mkdir(parents=True)
        for well in ("B3", "c12"):
            for ch in ("dapi", "gfp"):
                tifffile.imwrite(sub / f"{plate}-{well}-f1-{ch}.tif", np.zeros((4, 4), np.uint8))
    channels = [{"name": "DNA", "token": "dapi"}, {"name": "GFP", "token": "gfp"}]
    pattern = r"run_\w+/(?P<plate>P[AB])-(?P<well>[A-Za-z]\d+)-f(?P<site>\d)-(?P<channel>\w+)\.tif"
    row = {"plate": "PB", "layout": "pattern", "path": str(root), "pattern": pattern}
    table = list_plate_images(row, channels)
    assert len(table) == 4 and all("PB-" in p for p in table["path"])
    assert sorted(set(table["well"])) == ["B03", "C12"]


def test_pattern_unparsable_site_is_an_error_naming_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "A01_sX_D.tif", np.zeros((4, 4), np.uint8))
    row = {"plate": "p", "layout": "pattern", "path": str(tmp_path),
           "pattern": r"(?P<well>[A-H]\d\d)_s(?P<site>\w)_(?P<channel>D)\.tif"}
    with pytest.raises(InputError, match=r"A01_sX_D\.tif: site 'X' is not a whole number"):
        list_plate_images(row, [{"name": "DNA", "token": "D"}])
    assert list_plate_images(row, [{"name": "DNA", "token": "D"}], strict=False).empty


def test_rxrx_synthetic_tiff_and_png(tmp_path):
    write_rxrx_plate(tmp_path / "root" / "P1")
    row = {"plate": "P1", "layout": "rxrx", "path": str(tmp_path / "root")}
    table = list_plate_images(row, RXRX_CHANNELS)
    assert len(table) == 2 * 2 * 3
    assert table[["well", "site", "channel"]].head(3).values.tolist() == [
        ["A01", 1, "c1"], ["A01", 1, "c2"], ["A01", 1, "c3"]]
    # RxRx1-style: the sheet points at the plate folder itself (named differently)
    write_rxrx_plate(tmp_path / "Plate1", ext="png", tokens=(1, 2, 3, 4))
    row = {"plate": "HEPG2-01_1", "layout": "rxrx", "path": str(tmp_path / "Plate1")}
    table = list_plate_images(row, RXRX_CHANNELS)  # token 4 is not configured
    assert len(table) == 12 and table["path"].str.endswith(".png").all()


def test_rxrx_on_real_phenix_pixels(tmp_path):
    """The real Phenix site under rxrx names (symlinks in tmp_path; nothing is copied)."""
    plate_dir = tmp_path / "P1"
    plate_dir.mkdir()
    for token in range(2, 7):
        src = REPO / PHENIX / f"r03c03f03p01-ch{token}sk1fk1fl1.tiff"
        (plate_dir / f"C03_s3_w{token}.tiff").symlink_to(src)
    row = {"plate": "P1", "layout": "rxrx", "path": str(tmp_path)}
    table = list_plate_images(row, PHENIX_CHANNELS)
    assert len(table) == 5 and set(table["well"]) == {"C03"}


def loaddata_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def phenix_loaddata_rows(plate="BR00143976", pathname=None, channels=PHENIX_CHANNELS):
    row = {"Metadata_Plate": plate, "Metadata_Well": "C03", "Metadata_Site": 3}
    for c in channels:
        row[f"FileName_Orig{c['name']}"] = f"r03c03f03p01-ch{c['token']}sk1fk1fl1.tiff"
        row[f"PathName_Orig{c['name']}"] = pathname or str((REPO / PHENIX).resolve())
    return row


# LoadData tokens are the channel names of FileName_Orig<Ch>
LOADDATA_CHANNELS = [{"name": c["name"], "token": c["name"]} for c in PHENIX_CHANNELS]


def test_loaddata_absolute_and_relative_paths(tmp_path):
    csv = loaddata_csv(tmp_path / "load_data.csv",
                       [phenix_loaddata_rows(), phenix_loaddata_rows(plate="OTHER")])
    row = {"plate": "BR00143976", "layout": "loaddata", "path": str(csv)}
    table = list_plate_images(row, LOADDATA_CHANNELS)
    assert len(table) == 5 and set(table["site"]) == {3}
    assert all(Path(p).is_file() for p in table["path"])
    # relative PathName is relative to the CSV's folder
    rel = os.path.relpath(REPO / PHENIX, tmp_path)
    csv2 = loaddata_csv(tmp_path / "rel.csv", [phenix_loaddata_rows(pathname=rel)])
    table2 = list_plate_images({**row, "path": str(csv2)}, LOADDATA_CHANNELS)
    assert [Path(p).resolve() for p in table2["path"]] == [Path(p).resolve() for p in table["path"]]


def test_loaddata_errors(tmp_path):
    rows = [phenix_loaddata_rows()]
    del rows[0]["FileName_OrigER"]
    csv = loaddata_csv(tmp_path / "bad.csv", rows)
    row = {"plate": "BR00143976", "layout": "loaddata", "path": str(csv)}
    with pytest.raises(InputError, match=r"bad\.csv: LoadData CSV lacks column\(s\) \['FileName_OrigER'\]"):
        list_plate_images(row, LOADDATA_CHANNELS)
    remote = loaddata_csv(tmp_path / "s3.csv", [phenix_loaddata_rows(pathname="s3://bucket/images")])
    with pytest.raises(InputError, match="remote path 's3://bucket/images' is not supported"):
        list_plate_images({**row, "path": str(remote)}, LOADDATA_CHANNELS)
    assert list_plate_images({**row, "path": str(tmp_path / "absent.csv")}, LOADDATA_CHANNELS,
                             strict=False).empty


def test_sites_table_duplicates_and_missing_channels(tmp_path):
    folder = write_rxrx_plate(tmp_path / "P1", wells=("A01",), sites=(1,))
    tifffile.imwrite(folder / "A01_s1_w2.tiff", np.zeros((16, 16), np.uint16))  # same site, twice
    row = {"plate": "P1", "layout": "rxrx", "path": str(tmp_path)}
    table = list_plate_images(row, RXRX_CHANNELS)
    with pytest.raises(InputError, match=r"1 duplicate well/site/channel image\(s\): well A01 site 1 "
                                         r"channel c2: .*A01_s1_w2\.tif, .*A01_s1_w2\.tiff"):
        sites_table(table, RXRX_CHANNELS, folder)
    (folder / "A01_s1_w2.tiff").unlink()
    (folder / "A01_s1_w3.tif").unlink()
    table = list_plate_images(row, RXRX_CHANNELS)
    with pytest.raises(InputError, match=r"well A01 site 1 lacks channel\(s\) \['c3'\]"):
        sites_table(table, RXRX_CHANNELS, folder)


def test_unknown_layout():
    with pytest.raises(ConfigError, match="'zeiss' is not one of the allowed values: rxrx, phenix, "
                                          "loaddata, pattern"):
        list_plate_images({"plate": "P", "layout": "zeiss", "path": "."}, RXRX_CHANNELS)


def test_plate_image_files_lists_without_reading(tmp_path):
    assert plate_image_files({"plate": "P9", "layout": "rxrx", "path": str(tmp_path / "later")},
                             RXRX_CHANNELS) == []
    folder = write_rxrx_plate(tmp_path / "P1")
    (folder / "notes.txt").write_text("not an image")
    (folder / "A01_s1_w1.tif").write_bytes(b"corrupt, but listing does not read pixels")
    files = plate_image_files({"plate": "P1", "layout": "rxrx", "path": str(tmp_path)}, RXRX_CHANNELS)
    assert len(files) == 12 and str(folder / "A01_s1_w1.tif") in files
    fly = plate_image_files({"plate": "f", "layout": "pattern", "path": FLY, "pattern": FLY_PATTERN},
                            FLY_CHANNELS)
    assert len(fly) == 9


def test_fast_listing_matches_the_parsed_table(tmp_path):
    """plate_image_files (DAG-time listing) returns exactly the files ingest parses."""
    write_rxrx_plate(tmp_path / "P1")
    (tmp_path / "P1" / "A01_s1_w9.tif").write_bytes(b"")  # token not configured
    csv = loaddata_csv(tmp_path / "ld.csv", [phenix_loaddata_rows()])
    rows = [
        ({"plate": "P1", "layout": "rxrx", "path": str(tmp_path)}, RXRX_CHANNELS),
        ({"plate": "P", "layout": "phenix", "path": PHENIX}, PHENIX_CHANNELS),
        ({"plate": "BR00143976", "layout": "loaddata", "path": str(csv)}, LOADDATA_CHANNELS),
        ({"plate": "f", "layout": "pattern", "path": FLY, "pattern": FLY_PATTERN}, FLY_CHANNELS),
    ]
    for row, channels in rows:
        parsed = sorted(list_plate_images(row, channels)["path"])
        assert plate_image_files(row, channels) == parsed, row["layout"]
        assert parsed


def test_listing_gives_every_channel_token_of_the_file_names(tmp_path):
    """The DAG-time listing also collects the tokens of the file names, configured or not (the
    channels check of phenoica.preflight reads them from the same scan); none for LoadData."""
    write_rxrx_plate(tmp_path / "P1")
    (tmp_path / "P1" / "A01_s1_w09.tif").write_bytes(b"")  # token not configured
    tokens: set[str] = set()
    files = plate_image_files({"plate": "P1", "layout": "rxrx", "path": str(tmp_path)}, RXRX_CHANNELS,
                              tokens=tokens)
    assert tokens == {"1", "2", "3", "9"} and len(files) == 12
    fly: set[str] = set()
    plate_image_files({"plate": "f", "layout": "pattern", "path": FLY, "pattern": FLY_PATTERN},
                      FLY_CHANNELS[:1], tokens=fly)
    assert fly == {"D", "F", "R"}
    csv = loaddata_csv(tmp_path / "ld.csv", [phenix_loaddata_rows()])
    none: set[str] = set()
    assert plate_image_files({"plate": "BR00143976", "layout": "loaddata", "path": str(csv)},
                             LOADDATA_CHANNELS, tokens=none)
    assert none == set()


def test_loaddata_row_col_and_field_columns(tmp_path):
    row = phenix_loaddata_rows()
    del row["Metadata_Well"], row["Metadata_Site"]
    row.update(Metadata_Row=3, Metadata_Col=3, Metadata_Field=3)
    csv = loaddata_csv(tmp_path / "ld.csv", [row])
    table = list_plate_images({"plate": "BR00143976", "layout": "loaddata", "path": str(csv)},
                              LOADDATA_CHANNELS)
    assert set(table["well"]) == {"C03"} and set(table["site"]) == {3} and len(table) == 5
    row["Metadata_Row"] = "3x"
    bad = loaddata_csv(tmp_path / "bad.csv", [row])
    with pytest.raises(InputError, match=r"bad\.csv, line 2: row '3x' is neither letters"):
        list_plate_images({"plate": "BR00143976", "layout": "loaddata", "path": str(bad)},
                          LOADDATA_CHANNELS)

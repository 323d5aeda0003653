"""ingest_plate: every layout on the real images in tests/data, every validation case of issue #3,
QC flags, atomic outputs and untouched raw inputs."""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers_data import FLY, PHENIX, REPO
from scipy import ndimage

from phenoica.config import schema_defaults, schema_node
from phenoica.errors import ConfigError, InputError
from phenoica.ingest import focus_score, image_stats, ingest_plate
from phenoica.io import images as images_module
from phenoica.io.images import read_image
from phenoica.sheet import read_plate_sheet, read_platemap
from phenoica.workflow import run_rule

# examplefly has no well: the leading "01" is read twice (lookahead) as row 1 and column 1, so
# all three fields belong to well A01, and the site is the POS number (2, 76, 218).
FLY_PATTERN = r"(?=(?P<row>01))(?P<col>01)_POS(?P<site>\d+)_(?P<channel>[DFR])\.TIF"
PHENIX_CHANNELS = [{"name": n, "token": t} for n, t in
                   [("ER", "2"), ("AGP", "3"), ("Mito", "4"), ("DNA", "5"), ("RNA", "6")]]
CHANNELS = [{"name": f"c{t}", "token": str(t)} for t in (1, 2, 3)]
WELLS = ("A01", "A02", "B01")
SITES = (1, 2)


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.setenv("PHENOICA_PROGRESS", "0")
    monkeypatch.chdir(REPO)


def textured(seed: int, shape=(32, 32), dtype=np.uint16) -> np.ndarray:
    """Cell-like texture: smoothed noise blobs on an offset (sharp, so focus QC passes)."""
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random(shape), 1.0)
    img = 800 + 3000 * (blobs - blobs.min()) / (np.ptp(blobs) + 1e-9)
    return img.astype(dtype)


def write_plate(root: Path, plate="P1", wells=WELLS, sites=SITES, tokens=(1, 2, 3)) -> Path:
    folder = root / plate
    folder.mkdir(parents=True, exist_ok=True)
    for i, well in enumerate(wells):
        for site in sites:
            for token in tokens:
                tifffile.imwrite(folder / f"{well}_s{site}_w{token}.tif",
                                 textured(100 * i + 10 * site + token))
    return folder


def write_platemap(path: Path, wells=WELLS) -> Path:
    rows = [{"well": w, "perturbation": "DMSO" if i == 0 else f"drug{i}",
             "is_control": i == 0, "dose": 0.0 if i == 0 else 0.1 * i} for i, w in enumerate(wells)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def plate(tmp_path) -> dict:
    """A valid synthetic rxrx plate (3 wells x 2 sites x 3 channels, 32x32 uint16)."""
    write_plate(tmp_path / "raw")
    return {"plate": "P1", "batch": "B1", "layout": "rxrx", "path": str(tmp_path / "raw"),
            "platemap": str(write_platemap(tmp_path / "map.csv")), "pattern": ""}


# the ingest and qc sections at their defaults (what the workflow passes when the config sets none)
SETTINGS = {**schema_defaults("ingest"), **schema_defaults("qc")}


def ingest(row, channels=CHANNELS, **kwargs):
    ingest_plate(row, channels=channels, **{**SETTINGS, **kwargs})


def outputs(tmp_path: Path) -> dict:
    out = tmp_path / "results" / "plates" / "P1"
    return {"manifest_path": str(out / "manifest.parquet"), "qc_path": str(out / "qc.parquet")}


def sha256_tree(paths) -> dict:
    return {str(p): (hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mtime_ns)
            for p in paths}


def test_ingest_synthetic_plate_contract(tmp_path, plate):
    out = outputs(tmp_path)
    ingest(plate, **out)
    manifest = pd.read_parquet(out["manifest_path"])
    assert manifest.columns.tolist() == [
        "site_id", "plate", "batch", "well", "row", "col", "site", "path_c1", "path_c2",
        "path_c3", "perturbation", "is_control", "dose", "qc_flagged", "qc_pass"]
    assert manifest["site_id"].tolist() == [f"P1:{w}:{s}" for w in ("A01", "A02", "B01")
                                            for s in SITES]
    assert manifest[["row", "col"]].values.tolist()[-1] == [2, 1]
    assert manifest["site"].dtype == np.int64 and manifest["is_control"].dtype == bool
    assert manifest["is_control"].sum() == 2 and manifest["qc_pass"].all()
    assert set(manifest["batch"]) == {"B1"}
    qc = pd.read_parquet(out["qc_path"])
    assert len(qc) == 6 * 3 and qc["channel"].tolist()[:3] == ["c1", "c2", "c3"]
    first = read_image(manifest.loc[0, "path_c2"])
    stats = qc[(qc["site_id"] == "P1:A01:1") & (qc["channel"] == "c2")].iloc[0]
    assert stats["mean"] == pytest.approx(first.mean())
    assert stats["max"] == first.max() and stats["zero_fraction"] == 0
    assert stats["dtype"] == "uint16" and (stats["height"], stats["width"]) == (32, 32)
    assert not qc["flagged"].any()
    assert not list(Path(out["manifest_path"]).parent.glob("*.partial"))


PHENIX_PATTERN = r"r(?P<row>\d\d)c(?P<col>\d\d)f(?P<site>\d\d)p01-ch(?P<channel>\d)sk1fk1fl1\.tiff"


def write_mixed_sheet(folder: Path, phenix: str) -> Path:
    """A plate sheet with all four layouts on the real Phenix site (``phenix`` = its folder as
    the sheet should name it): phenix as is, rxrx names (symlinks in ``folder``), a LoadData
    CSV, and a pattern regex."""
    platemap = write_platemap(folder / "c03.csv", wells=("C03",))
    rxrx_root = folder / "rxrx_real"
    (rxrx_root / "RX").mkdir(parents=True)
    for c in PHENIX_CHANNELS:  # symlinks: nothing is copied
        (rxrx_root / "RX" / f"C03_s3_w{c['token']}.tiff").symlink_to(
            REPO / PHENIX / f"r03c03f03p01-ch{c['token']}sk1fk1fl1.tiff")
    loaddata = folder / "load_data.csv"
    pd.DataFrame([{"Metadata_Plate": "LD", "Metadata_Well": "C03", "Metadata_Site": 3,
                   **{f"FileName_Orig{c['token']}": f"r03c03f03p01-ch{c['token']}sk1fk1fl1.tiff"
                      for c in PHENIX_CHANNELS},
                   **{f"PathName_Orig{c['token']}": os.path.relpath(REPO / PHENIX, folder)
                      for c in PHENIX_CHANNELS}}]).to_csv(loaddata, index=False)
    rows = [
        {"plate": "PX", "batch": "B1", "layout": "phenix", "path": phenix, "pattern": ""},
        {"plate": "RX", "batch": "B1", "layout": "rxrx", "path": rxrx_root, "pattern": ""},
        {"plate": "LD", "batch": "B2", "layout": "loaddata", "path": loaddata, "pattern": ""},
        {"plate": "PT", "batch": "B2", "layout": "pattern", "path": phenix,
         "pattern": PHENIX_PATTERN},
    ]
    sheet = folder / "plates.tsv"
    pd.DataFrame(rows).assign(platemap=platemap).to_csv(sheet, sep="\t", index=False)
    return sheet


def test_mixed_layout_sheet_on_real_images(tmp_path):
    """One sheet with all four layouts, each on real files; every plate ingests."""
    parsed = read_plate_sheet(write_mixed_sheet(tmp_path, PHENIX), channels=PHENIX_CHANNELS)
    assert sorted(parsed["layout"]) == ["loaddata", "pattern", "phenix", "rxrx"]
    manifests = {}
    for name, row in parsed.iterrows():
        out = tmp_path / "results" / name
        ingest(row.to_dict(), channels=PHENIX_CHANNELS,
                     manifest_path=str(out / "manifest.parquet"), qc_path=str(out / "qc.parquet"))
        manifests[name] = pd.read_parquet(out / "manifest.parquet")
    for name, manifest in manifests.items():
        assert manifest["site_id"].tolist() == [f"{name}:C03:3"], name
        assert Path(manifest.loc[0, "path_DNA"]).resolve() == \
            (REPO / PHENIX / "r03c03f03p01-ch5sk1fk1fl1.tiff").resolve()
    qc = pd.read_parquet(tmp_path / "results" / "PX" / "qc.parquet")
    dna = tifffile.imread(REPO / PHENIX / "r03c03f03p01-ch5sk1fk1fl1.tiff")
    assert qc.set_index("channel").loc["DNA", "mean"] == pytest.approx(dna.mean())
    assert (qc["dtype"] == "uint16").all()
    assert (qc["height"] == dna.shape[0]).all() and (qc["width"] == dna.shape[1]).all()

    # pattern layout on the real examplefly fields (3 channels of uint8)
    fly_channels = [{"name": "DNA", "token": "D"}, {"name": "green", "token": "F"},
                    {"name": "red", "token": "R"}]
    fly_row = {"plate": "fly", "batch": "B3", "layout": "pattern", "path": FLY,
               "platemap": str(write_platemap(tmp_path / "a01.csv", wells=("A01",))),
               "pattern": FLY_PATTERN}
    out = tmp_path / "results" / "fly"
    ingest(fly_row, channels=fly_channels, manifest_path=str(out / "m.parquet"),
                 qc_path=str(out / "qc.parquet"))
    fly = pd.read_parquet(out / "m.parquet")
    assert fly["site"].tolist() == [2, 76, 218] and set(fly["well"]) == {"A01"}
    assert fly.loc[1, "path_green"] == os.path.join(FLY, "01_POS076_F.TIF")
    assert (pd.read_parquet(out / "qc.parquet")["dtype"] == "uint8").all()


def test_raw_inputs_unchanged(tmp_path):
    files = sorted((REPO / FLY).iterdir())
    before = sha256_tree(files)
    ingest({"plate": "fly", "batch": "B", "layout": "pattern", "path": FLY,
                  "platemap": str(write_platemap(tmp_path / "m.csv", wells=("A01",))),
                  "pattern": FLY_PATTERN},
                 channels=[{"name": "DNA", "token": "D"}, {"name": "F", "token": "F"},
                           {"name": "R", "token": "R"}],
                 manifest_path=str(tmp_path / "m.parquet"), qc_path=str(tmp_path / "q.parquet"))
    assert sha256_tree(files) == before


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def set_unknown_compression(path: Path) -> None:
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(60000)


def float_plate_with_nan(folder: Path) -> None:
    for f in folder.glob("*.tif"):
        tifffile.imwrite(f, read_image(f).astype(np.float32))
    img = read_image(folder / "A02_s2_w3.tif")
    img[3, 4] = np.nan
    tifffile.imwrite(folder / "A02_s2_w3.tif", img)


MUTATIONS: dict[str, tuple[Callable[[Path, dict], None], type, str]] = {
    "corrupt": (lambda f, r: (f / "A01_s1_w2.tif").write_bytes(b"II*\x00garbage" * 10),
                InputError, r"A01_s1_w2\.tif: corrupt or unreadable image"),
    "truncated": (lambda f, r: truncate(f / "A02_s1_w1.tif"),
                  InputError, r"A02_s1_w1\.tif: truncated TIFF: image data should end at byte"),
    "unsupported_compression": (lambda f, r: set_unknown_compression(f / "B01_s2_w3.tif"),
                                InputError, r"B01_s2_w3\.tif: unsupported TIFF compression code 60000"),
    "missing_channel": (lambda f, r: (f / "A02_s1_w2.tif").unlink(),
                        InputError, r"P1: 1 site\(s\) missing a channel: well A02 site 1 lacks "
                                    r"channel\(s\) \['c2'\]"),
    "shape_differs": (lambda f, r: tifffile.imwrite(f / "B01_s1_w1.tif", textured(1, (32, 40))),
                      InputError, r"B01_s1_w1\.tif: image shape 32x40 differs from 32x32"),
    "dtype_differs": (lambda f, r: tifffile.imwrite(f / "A02_s2_w2.tif",
                                                    textured(1, dtype=np.uint8)),
                      InputError, r"A02_s2_w2\.tif: image dtype uint8 differs from uint16"),
    "nan_pixels": (lambda f, r: float_plate_with_nan(f),
                   InputError, r"A02_s2_w3\.tif: float image has 1 NaN and 0 infinite pixel"),
    "duplicate_site_channel": (lambda f, r: tifffile.imwrite(f / "A01_s2_w1.tiff", textured(5)),
                               InputError, r"1 duplicate well/site/channel image\(s\): well A01 "
                                           r"site 2 channel c1"),
    "platemap_well_not_imaged": (lambda f, r: write_platemap(Path(r["platemap"]),
                                                             WELLS + ("H12",)),
                                 InputError, r"map\.csv: 1 plate-map well\(s\) have no images: "
                                             r"\['H12'\] \(set ingest\.allow_missing_wells: true"),
    "image_well_not_in_platemap": (lambda f, r: write_platemap(Path(r["platemap"]), WELLS[:2]),
                                   InputError, r"map\.csv: 1 imaged well\(s\) are missing from "
                                               r"the plate map: \['B01'\]"),
    "unknown_layout": (lambda f, r: r.update(layout="operetta"),
                       ConfigError, r"column 'layout': 'operetta' is not one of the allowed "
                                    r"values: rxrx, phenix, loaddata, pattern"),
    "regex_without_groups": (lambda f, r: r.update(layout="pattern", path=str(f),
                                                   pattern=r"(?P<well>\w\d\d)_s\d_w(?P<channel>\d)\.tif"),
                             ConfigError, r"lacks the named group\(s\) site"),
    "regex_matches_nothing": (lambda f, r: r.update(layout="pattern", path=str(f),
                                                    pattern=r"(?P<well>\w\d\d)-(?P<site>\d)-"
                                                            r"(?P<channel>\d)\.tiff"),
                              InputError, r"empty plate: regex .* matches none of the 18 file\(s\)"),
    "plate_with_separator": (lambda f, r: r.update(plate="P1/../x"),
                             ConfigError, r"column 'plate': 'P1/../x' is not a valid identifier"),
    "batch_not_identifier": (lambda f, r: r.update(batch="run 1"),
                             ConfigError, r"column 'batch': 'run 1' is not a valid identifier"),
    "empty_plate": (lambda f, r: [p.unlink() for p in f.iterdir()],
                    InputError, r"P1: empty plate: none of the 0 file\(s\) follow the 'rxrx' naming"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_validation_errors_write_nothing(tmp_path, plate, case):
    mutate, error, message = MUTATIONS[case]
    row = dict(plate)
    mutate(Path(plate["path"]) / "P1", row)
    out = outputs(tmp_path)
    with pytest.raises(error, match=message):
        ingest(row, **out)
    results = tmp_path / "results"
    assert not results.exists() or not any(p.is_file() for p in results.rglob("*"))


def test_allow_missing_wells_warns_and_ingests(tmp_path, plate, caplog):
    write_platemap(Path(plate["platemap"]), WELLS + ("H12",))
    out = outputs(tmp_path)
    with caplog.at_level(logging.WARNING, logger="phenoica"):
        ingest(plate, allow_missing_wells=True, **out)
    assert "1 plate-map well(s) have no images: ['H12']" in caplog.text
    assert "H12" not in set(pd.read_parquet(out["manifest_path"])["well"])


def test_failed_rerun_keeps_earlier_outputs(tmp_path, plate):
    out = outputs(tmp_path)
    ingest(plate, **out)
    before = {k: Path(v).read_bytes() for k, v in out.items()}
    truncate(Path(plate["path"]) / "P1" / "B01_s2_w2.tif")
    with pytest.raises(InputError, match="truncated"):
        ingest(plate, **out)
    assert {k: Path(v).read_bytes() for k, v in out.items()} == before
    assert sorted(p.name for p in Path(out["manifest_path"]).parent.iterdir()) == \
        ["manifest.parquet", "qc.parquet"]


def test_truncated_png_and_unreadable_files(tmp_path, monkeypatch):
    from PIL import Image

    png = tmp_path / "x.png"
    Image.fromarray(textured(0)).save(png)
    truncate(png, 0.6)
    with pytest.raises(InputError, match=r"x\.png: corrupt or unreadable image"):
        read_image(png)
    folder = tmp_path / "dir.tif"
    folder.mkdir()
    with pytest.raises(InputError, match=r"dir\.tif: cannot open image file \(IsADirectoryError"):
        read_image(folder)
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, textured(0))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    with pytest.raises(InputError, match="image file not found"):
        read_image(tmp_path / "absent.tif")
    with monkeypatch.context() as patched:  # root ignores file modes, so simulate EACCES
        patched.setattr(images_module, "open", denied, raising=False)
        with pytest.raises(InputError, match=r"good\.tif: cannot open image file \(PermissionError"):
            read_image(good)
    inf = np.ones((8, 8), np.float32)
    inf[0, 0] = np.inf
    tifffile.imwrite(tmp_path / "inf.tif", inf)
    with pytest.raises(InputError, match="0 NaN and 1 infinite"):
        read_image(tmp_path / "inf.tif")


def test_qc_flags_and_exclude_switch(tmp_path, plate):
    folder = Path(plate["path"]) / "P1"
    sat = textured(7)
    sat[:, :8] = np.iinfo(np.uint16).max  # 25% saturated pixels
    tifffile.imwrite(folder / "A01_s2_w1.tif", sat)
    tifffile.imwrite(folder / "A02_s1_w3.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(folder / "B01_s2_w2.tif",
                     ndimage.uniform_filter(textured(8).astype(np.float32), 9).astype(np.uint16))
    out = outputs(tmp_path)
    ingest(plate, **out)
    qc = pd.read_parquet(out["qc_path"]).set_index(["site_id", "channel"])
    assert qc.loc[("P1:A01:2", "c1"), "flags"] == "saturated"
    assert qc.loc[("P1:A01:2", "c1"), "saturated_fraction"] == pytest.approx(0.25)
    assert qc.loc[("P1:A02:1", "c3"), "flags"] == "blank;out_of_focus"
    assert qc.loc[("P1:B01:2", "c2"), "flags"] == "out_of_focus"
    assert qc["flagged"].sum() == 3
    manifest = pd.read_parquet(out["manifest_path"]).set_index("site_id")
    flagged_sites = ["P1:A01:2", "P1:A02:1", "P1:B01:2"]
    assert sorted(manifest.index[manifest["qc_flagged"]]) == flagged_sites
    assert manifest["qc_pass"].all()  # exclude_flagged is off by default: flags inform only

    ingest(plate, **out, exclude_flagged=True)
    manifest = pd.read_parquet(out["manifest_path"]).set_index("site_id")
    assert sorted(manifest.index[~manifest["qc_pass"]]) == flagged_sites
    with pytest.raises(InputError, match=r"all 6 sites failed QC"):
        ingest(plate, manifest_path=str(tmp_path / "m2.parquet"), qc_path=str(tmp_path / "q2.parquet"),
               exclude_flagged=True, min_focus_ratio=50.0)
    assert not (tmp_path / "m2.parquet").exists()


def test_image_stats_and_focus_score():
    img = textured(3)
    blurred = ndimage.uniform_filter(img.astype(np.float32), 7)
    assert focus_score(img) > 10 * focus_score(blurred)
    assert focus_score(img * 5) == pytest.approx(focus_score(img), rel=0.05)  # intensity-free
    assert focus_score(np.zeros((16, 16), np.uint16)) == 0.0
    stats = image_stats(np.array([[0, 4095], [4095, 100]], np.uint16), saturation_value=4095)
    assert stats["saturated_fraction"] == 0.5 and stats["zero_fraction"] == 0.25
    assert np.isnan(image_stats(np.ones((4, 4), np.float32))["saturated_fraction"])


def test_threads_give_identical_outputs(tmp_path, plate):
    one, two = tmp_path / "one", tmp_path / "two"
    ingest(plate, manifest_path=str(one / "m.parquet"),
                 qc_path=str(one / "q.parquet"))
    ingest(plate, manifest_path=str(two / "m.parquet"),
                 qc_path=str(two / "q.parquet"), threads=2)
    for name in ("m.parquet", "q.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(one / name), pd.read_parquet(two / name))


@pytest.mark.slow
def test_snakemake_ingest_on_a_mixed_sheet(tmp_path):
    """`snakemake --cores 2 ingest` through the repository's Snakefile (the lead's wiring) on a
    sheet mixing all four layouts; outputs land in tmp_path, raw files stay unchanged."""
    import subprocess
    import sys

    import yaml

    sheet = write_mixed_sheet(tmp_path, str((REPO / PHENIX).resolve()))
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(source="plates", plates=str(sheet), channels=PHENIX_CHANNELS)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    raw = sorted((REPO / PHENIX).iterdir())
    before = sha256_tree(raw)
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", "ingest"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for plate in ("PX", "RX", "LD", "PT"):
        manifest = pd.read_parquet(tmp_path / "results" / "plates" / plate / "manifest.parquet")
        assert manifest["site_id"].tolist() == [f"{plate}:C03:3"]
        assert (tmp_path / "results" / "plates" / plate / "qc.parquet").is_file()
    assert sha256_tree(raw) == before


def test_every_problem_of_a_plate_is_reported_at_once(tmp_path, plate):
    """Five different problems in one plate: one InputError, one line per problem, nothing
    written (the old code stopped at the first)."""
    folder = Path(plate["path"]) / "P1"
    (folder / "A01_s1_w2.tif").write_bytes(b"II*\x00garbage" * 10)
    truncate(folder / "A02_s1_w1.tif")
    (folder / "A02_s2_w2.tif").unlink()
    tifffile.imwrite(folder / "B01_s1_w1.tif", textured(1, (32, 40)))
    write_platemap(Path(plate["platemap"]), WELLS + ("H12",))
    out = outputs(tmp_path)
    with pytest.raises(InputError) as err:
        ingest(plate, **out)
    head, *lines = str(err.value).splitlines()
    assert head.endswith("plate P1: 5 problem(s), nothing written:"), head
    expected = [r"A01_s1_w2\.tif: corrupt or unreadable image",
                r"A02_s1_w1\.tif: truncated TIFF",
                r"well A02 site 2 lacks channel\(s\) \['c2'\]",
                r"B01_s1_w1\.tif: image shape 32x40 differs from 32x32",
                r"map\.csv: 1 plate-map well\(s\) have no images: \['H12'\]"]
    assert len(lines) == len(expected), lines
    for pattern in expected:
        assert sum(bool(re.search(pattern, line)) for line in lines) == 1, (pattern, lines)
    assert not Path(out["manifest_path"]).exists() and not Path(out["qc_path"]).exists()


def _schema_has_key(dotted: str) -> bool:
    """Whether ``dotted`` is a full config key path from the top of the schema (a free-form
    mapping such as ``model.overrides`` accepts any key below it)."""
    node = schema_node(dotted.split(".")[0])
    for part in dotted.split(".")[1:]:
        properties = node.get("properties")
        if properties is None:
            return node.get("type") == "object" and node.get("additionalProperties", True) is not False
        if part not in properties:
            return False
        node = properties[part]
    return True


def test_hints_name_the_full_config_key():
    """Every 'set <key>: <value>' and 'config key <key>' hint in the package names a key by its
    full path from the top of the config (the old ingest said 'set allow_missing_wells: true'
    for ingest.allow_missing_wells)."""
    key = r"([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*)"
    hint = re.compile(rf"\bset {key}(?::| to\b)|\bconfig key {key}")
    found = {}
    for path in sorted((REPO / "src" / "phenoica").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for match in hint.finditer(node.value):
                    found[match.group(1) or match.group(2)] = f"{path.relative_to(REPO)}:{node.lineno}"
    assert {"ingest.allow_missing_wells", "ingest.control_values", "qc.exclude_flagged"} <= set(found)
    bad = {key: where for key, where in found.items() if not _schema_has_key(key)}
    assert not bad, f"hints naming keys that are not full config paths: {bad}"


def test_missing_control_flag_names_the_config_key(tmp_path):
    platemap = tmp_path / "map.csv"
    pd.DataFrame({"well": ["A01", "A02"], "perturbation": ["DMSO", "drug"]}).to_csv(platemap, index=False)
    with pytest.raises(InputError, match=r"map\.csv: no control flag: .*config key "
                                         r"ingest\.control_values"):
        read_platemap(platemap)
    assert read_platemap(platemap, control_values=["DMSO"])["is_control"].tolist() == [True, False]


def _rule_job(log_path: Path) -> SimpleNamespace:
    return SimpleNamespace(log=[str(log_path)], rule="ingest_plate", threads=1)


def test_run_rule_shows_a_user_error_as_lines_and_keeps_the_traceback_aside(
        tmp_path, plate, capfd):
    """A user error: the log ends with one line per problem (what Snakemake's show-failed-logs
    prints), the chained traceback goes to <log>.traceback, the process exits 1 and prints no
    traceback."""
    folder = Path(plate["path"]) / "P1"
    (folder / "A01_s1_w2.tif").write_bytes(b"II*\x00garbage" * 10)
    (folder / "A02_s2_w2.tif").unlink()
    log_path = tmp_path / "logs" / "P1.log"
    log_path.parent.mkdir()
    with pytest.raises(SystemExit) as exited:
        run_rule(_rule_job(log_path), ingest, plate, **outputs(tmp_path))
    assert exited.value.code == 1
    console = capfd.readouterr()
    assert "Traceback" not in console.out + console.err
    text = log_path.read_text()
    assert "Traceback" not in text
    for line in ("A01_s1_w2.tif: corrupt or unreadable image", "well A02 site 2 lacks channel(s)"):
        assert text.count(line) == 1, text
    assert f"(Python traceback: {log_path}.traceback)" in text
    trace = Path(f"{log_path}.traceback").read_text()
    assert trace.startswith("Traceback") and "phenoica.errors.InputError" in trace

    # a fixed plate: the stale traceback file goes; without a log file errors propagate
    tifffile.imwrite(folder / "A01_s1_w2.tif", textured(3))
    tifffile.imwrite(folder / "A02_s2_w2.tif", textured(4))
    run_rule(_rule_job(log_path), ingest, plate, **outputs(tmp_path))
    assert not Path(f"{log_path}.traceback").exists()
    with pytest.raises(InputError):
        run_rule(SimpleNamespace(log=[], rule="x", threads=1), ingest, {**plate, "platemap": "no.csv"},
                 **outputs(tmp_path))


def test_run_rule_puts_the_traceback_of_a_bug_in_the_log_once(tmp_path, capfd):
    def broken():
        return {}["missing"]

    log_path = tmp_path / "bug.log"
    with pytest.raises(SystemExit):
        run_rule(_rule_job(log_path), broken)
    assert log_path.read_text().count("Traceback") == 1 and "KeyError: 'missing'" in log_path.read_text()
    assert "Traceback" not in "".join(capfd.readouterr())


@pytest.mark.slow
def test_snakemake_failed_revalidation_keeps_the_plate_and_shows_each_problem_once(tmp_path, plate):
    """`snakemake ingest` after two files of an ingested plate went bad: the run fails, the
    plate's earlier manifest and QC stay in place byte for byte, and the console shows each
    problem once and no Python traceback (that is in results/logs/ingest/P1.log.traceback)."""
    import subprocess
    import sys

    import yaml

    sheet = tmp_path / "plates.tsv"
    pd.DataFrame([plate]).to_csv(sheet, sep="\t", index=False)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(source="plates", plates=str(sheet), channels=CHANNELS)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "ingest"]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    published = [tmp_path / "results" / "plates" / "P1" / name for name in ("manifest.parquet", "qc.parquet")]
    before = {p: p.read_bytes() for p in published}

    folder = Path(plate["path"]) / "P1"
    (folder / "A01_s1_w2.tif").write_bytes(b"II*\x00garbage" * 10)
    (folder / "A02_s2_w2.tif").unlink()
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    console = second.stdout + second.stderr
    assert second.returncode != 0
    assert {p: p.read_bytes() for p in published} == before, "the earlier manifest/QC were lost"
    for problem in ("A01_s1_w2.tif: corrupt or unreadable image", "well A02 site 2 lacks channel(s)"):
        assert console.count(problem) == 1, console[-5000:]
    assert "Traceback" not in console, console[-5000:]
    assert "InputError" in (tmp_path / "results" / "logs" / "ingest" / "P1.log.traceback").read_text()

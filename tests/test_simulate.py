"""Tests of the plate simulator (phenoica.simulate): tiny plates, seconds in total."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from phenoica.errors import ConfigError, InputError
from phenoica.io.images import read_image
from phenoica.simulate import (
    CHANNELS,
    CONTROL_NAME,
    DEFAULT_PARAMS,
    FACTOR_NAMES,
    SimulateParamsError,
    design_screen,
    plate_layout,
    plate_wells,
    related_pairs,
    simulate_plate,
    write_design,
)
from phenoica.simulate import plates as plates_module

TINY = {
    "image_size": 48,
    "n_sites": 1,
    "n_rows": 2,
    "n_cols": 4,
    "n_control_wells": 2,
    "mechanism_sizes": [2, 2],
    "n_null": 1,
    "cells_per_site": 6.0,
    "nucleus_radius": 3.5,
    "cell_radius": 7.5,
    "puncta_per_cell": 8.0,
}
EFFECTS = [f"effect_{f}" for f in FACTOR_NAMES]


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("PHENOICA_PROGRESS", "0")


def run_plate(root: Path, plate: str, batch: str, params: dict | None = None, seed: int = 0) -> dict:
    paths = {
        "images_root": root / "images",
        "platemap_path": root / "platemaps" / f"{plate}.csv",
        "truth_path": root / "truth" / f"{plate}.tsv",
    }
    simulate_plate(plate, batch, params=TINY if params is None else params, seed=seed, **paths)
    return paths


def plate_bytes(root: Path, plate: str) -> dict[str, bytes]:
    folder = root / "images" / plate
    out = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    out["platemap"] = (root / "platemaps" / f"{plate}.csv").read_bytes()
    out["truth"] = (root / "truth" / f"{plate}.tsv").read_bytes()
    return out


def channel_means(root: Path, plate: str, wells: list[str], n_sites: int) -> np.ndarray:
    """Mean pixel value per channel over the given wells' sites."""
    return np.array([
        np.mean([read_image(root / "images" / plate / f"{w}_s{s}_w{c['token']}.tif").mean()
                 for w in wells for s in range(1, n_sites + 1)])
        for c in CHANNELS
    ])


# --- files -----------------------------------------------------------------------------

def test_plate_files_naming_dtype_and_tables(tmp_path):
    run_plate(tmp_path, "P1", "B1")
    wells = plate_wells(TINY)["well"].tolist()
    assert wells == ["A01", "A02", "A03", "A04", "B01", "B02", "B03", "B04"]
    expected = {f"{w}_s1_w{t}.tif" for w in wells for t in "12345"}
    assert {p.name for p in (tmp_path / "images" / "P1").iterdir()} == expected
    # nothing temporary left beside the plate folder
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["P1"]

    image = read_image(tmp_path / "images" / "P1" / "B03_s1_w1.tif")
    assert image.dtype == np.uint16 and image.shape == (48, 48)
    assert image.max() > image.min()

    platemap = pd.read_csv(tmp_path / "platemaps" / "P1.csv")
    assert list(platemap.columns) == ["well", "perturbation", "is_control", "mechanism", "dose_uM"]
    assert platemap["well"].tolist() == wells
    assert platemap["is_control"].dtype == bool
    assert (platemap["perturbation"] == CONTROL_NAME).sum() == 2
    assert not any(c.startswith(("effect_", "bio_", "strength")) for c in platemap.columns)

    truth = pd.read_csv(tmp_path / "truth" / "P1.tsv", sep="\t")
    assert list(truth.columns[:4]) == ["site_id", "plate", "well", "site"]
    assert truth["site_id"].tolist() == [f"P1:{w}:1" for w in wells]
    assert [c for c in truth.columns if c.startswith("bio_")] == [f"bio_{f}" for f in FACTOR_NAMES]
    batch_cols = [c for c in truth.columns if c.startswith("batch_")]
    assert {"batch_blur_sigma", "batch_gain_dna", "batch_offset_mito",
            "batch_edge_multiplier"} <= set(batch_cols)
    assert len(truth.columns) == 4 + len(FACTOR_NAMES) + len(batch_cols)
    assert np.isfinite(truth.drop(columns=["site_id", "plate", "well"]).to_numpy(float)).all()


def test_edge_wells_get_the_edge_effect(tmp_path):
    params = {**TINY, "n_rows": 3, "n_cols": 3, "n_control_wells": 3}
    run_plate(tmp_path, "P1", "B1", params)
    truth = pd.read_csv(tmp_path / "truth" / "P1.tsv", sep="\t").set_index("well")
    edge = plate_wells(params).set_index("well")["is_edge"]
    assert edge.sum() == 5 and not edge["B02"]  # row A and column 1 of a 96-well plate
    assert (truth.loc[edge[edge].index, "batch_edge_multiplier"] > 1.0).all()
    assert (truth.loc[edge[~edge].index, "batch_edge_multiplier"] == 1.0).all()


# --- determinism and independence ------------------------------------------------------

def test_same_parameters_and_seed_give_identical_bytes(tmp_path):
    run_plate(tmp_path / "a", "P1", "B1")
    run_plate(tmp_path / "b", "P1", "B1")
    run_plate(tmp_path / "c", "P1", "B1", seed=1)
    first, second, other_seed = (plate_bytes(tmp_path / d, "P1") for d in "abc")
    assert first == second
    assert first["A02_s1_w1.tif"] != other_seed["A02_s1_w1.tif"]


def test_a_plate_does_not_depend_on_other_plates_or_their_order(tmp_path):
    run_plate(tmp_path / "alone", "P1", "B1")
    for plate, batch in [("P2", "B2"), ("P1", "B1"), ("P0", "B1")]:
        run_plate(tmp_path / "many", plate, batch)
    assert plate_bytes(tmp_path / "alone", "P1") == plate_bytes(tmp_path / "many", "P1")
    # ... but it does depend on its own batch
    run_plate(tmp_path / "other_batch", "P1", "B2")
    assert (plate_bytes(tmp_path / "other_batch", "P1")["A01_s1_w2.tif"]
            != plate_bytes(tmp_path / "alone", "P1")["A01_s1_w2.tif"])


def test_rerun_replaces_an_existing_plate(tmp_path):
    run_plate(tmp_path, "P1", "B1")
    (tmp_path / "images" / "P1" / "stale.txt").write_text("from an old run")
    run_plate(tmp_path, "P1", "B1")
    assert not (tmp_path / "images" / "P1" / "stale.txt").exists()
    assert len(list((tmp_path / "images" / "P1").iterdir())) == 8 * 5


def test_crash_mid_plate_leaves_no_partial_plate(tmp_path, monkeypatch):
    real_write = plates_module._write_tiff
    calls = {"n": 0}

    def failing_write(path, image):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError("disk full")
        real_write(path, image)

    monkeypatch.setattr(plates_module, "_write_tiff", failing_write)
    with pytest.raises(OSError, match="disk full"):
        run_plate(tmp_path, "P1", "B1")
    assert calls["n"] == 7
    assert list((tmp_path / "images").iterdir()) == []
    assert not (tmp_path / "platemaps" / "P1.csv").exists()
    assert not (tmp_path / "truth" / "P1.tsv").exists()


def test_crash_on_rerun_keeps_the_earlier_plate(tmp_path, monkeypatch):
    run_plate(tmp_path, "P1", "B1")
    before = plate_bytes(tmp_path, "P1")

    def failing_write(path, image):
        raise OSError("disk full")

    monkeypatch.setattr(plates_module, "_write_tiff", failing_write)
    with pytest.raises(OSError):
        run_plate(tmp_path, "P1", "B1", params={**TINY, "image_size": 40})
    assert plate_bytes(tmp_path, "P1") == before
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["P1"]


# --- the design ------------------------------------------------------------------------

def test_design_controls_nulls_and_mechanisms():
    design = design_screen(DEFAULT_PARAMS, seed=3)
    assert list(design.columns[:5]) == ["perturbation", "is_control", "mechanism", "strength", "dose_uM"]
    assert list(design.columns[5:]) == EFFECTS
    n_treated = sum(DEFAULT_PARAMS["mechanism_sizes"]) + DEFAULT_PARAMS["n_null"]
    assert len(design) == n_treated + 1 and design["perturbation"].is_unique

    control = design[design["is_control"]]
    assert control["perturbation"].tolist() == [CONTROL_NAME]
    assert (control[EFFECTS].to_numpy() == 0).all()

    nulls = design[~design["is_control"] & (design["mechanism"] == "none")]
    assert len(nulls) == DEFAULT_PARAMS["n_null"]
    assert (nulls[EFFECTS].to_numpy() == 0).all() and (nulls["strength"] == 0).all()

    treated = design[design["mechanism"] != "none"]
    assert sorted(treated.groupby("mechanism").size().tolist()) == sorted(DEFAULT_PARAMS["mechanism_sizes"])
    lo, hi = DEFAULT_PARAMS["strength_range"]
    directions = {}
    for mechanism, group in treated.groupby("mechanism"):
        vectors = group[EFFECTS].to_numpy()
        norms = np.linalg.norm(vectors, axis=1)
        np.testing.assert_allclose(norms, group["strength"], rtol=1e-12)
        assert ((norms >= lo) & (norms <= hi)).all()
        assert len(set(np.round(norms, 9))) == len(group)  # same direction, different strengths
        unit = vectors / norms[:, None]
        np.testing.assert_allclose(unit, np.repeat(unit[:1], len(unit), axis=0), atol=1e-12)
        assert (unit[0] != 0).sum() == DEFAULT_PARAMS["factors_per_mechanism"]
        directions[mechanism] = unit[0]
    for a, b in itertools.combinations(directions.values(), 2):
        assert abs(a @ b) < 0.999  # different mechanisms point elsewhere


def test_design_depends_only_on_seed_and_design_params():
    base = design_screen(None, seed=5)
    pd.testing.assert_frame_equal(base, design_screen({"image_size": 64, "batch_effect_scale": 0.0}, seed=5))
    assert not design_screen(None, seed=6)[EFFECTS].equals(base[EFFECTS])


def test_related_pairs_and_write_design(tmp_path):
    design = design_screen(None, seed=0)
    pairs = related_pairs(design)
    assert list(pairs.columns) == ["perturbation_a", "perturbation_b", "relation"]
    assert len(pairs) == sum(k * (k - 1) // 2 for k in DEFAULT_PARAMS["mechanism_sizes"])
    mechanism = design.set_index("perturbation")["mechanism"]
    assert (pairs["perturbation_a"].map(mechanism) == pairs["relation"]).all()
    assert (pairs["perturbation_b"].map(mechanism) == pairs["relation"]).all()
    assert CONTROL_NAME not in set(pairs["perturbation_a"]) | set(pairs["perturbation_b"])

    write_design(design_path=tmp_path / "d" / "design.tsv", relations_path=tmp_path / "d" / "pairs.tsv")
    written = pd.read_csv(tmp_path / "d" / "design.tsv", sep="\t")
    np.testing.assert_allclose(written[EFFECTS].to_numpy(), design[EFFECTS].to_numpy())
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "d" / "pairs.tsv", sep="\t"), pairs)
    with pytest.raises(InputError, match="mechanism"):
        related_pairs(design.drop(columns=["mechanism"]))


def test_plate_layout_spreads_controls_and_balances_perturbations():
    layout = plate_layout("P1", None, seed=0)
    assert len(layout) == DEFAULT_PARAMS["n_rows"] * DEFAULT_PARAMS["n_cols"]
    controls = layout[layout["is_control"]]
    assert len(controls) == DEFAULT_PARAMS["n_control_wells"]
    assert controls["well"].str[0].nunique() == DEFAULT_PARAMS["n_rows"]  # every used row
    counts = layout.loc[~layout["is_control"], "perturbation"].value_counts()
    assert len(counts) == len(design_screen()) - 1 and counts.max() - counts.min() <= 1
    pd.testing.assert_frame_equal(layout, plate_layout("P1", None, seed=0))
    assert not layout["perturbation"].equals(plate_layout("P2", None, seed=0)["perturbation"])


# --- signal: batch and biology ---------------------------------------------------------

def test_batch_effects_dominate_plate_differences_and_scale_with_the_parameter(tmp_path):
    params = {**TINY, "image_size": 40, "n_control_wells": 6, "n_sites": 2, "cells_per_site": 8.0}

    def log_control_means(root: Path, scale: float, plates: list[str]) -> dict[tuple[str, str], np.ndarray]:
        out = {}
        for batch, plate in itertools.product(["B1", "B2", "B3"], plates):
            name = f"{batch}{plate}"
            run_plate(root, name, batch, {**params, "batch_effect_scale": scale})
            layout = pd.read_csv(root / "platemaps" / f"{name}.csv")
            wells = layout.loc[layout["is_control"], "well"].tolist()
            out[batch, plate] = np.log(channel_means(root, name, wells, n_sites=2))
        return out

    def spread_of_batch_means(means: dict) -> float:
        batches = sorted({b for b, _ in means})
        batch_means = [np.mean([v for (b, _), v in means.items() if b == batch], axis=0) for batch in batches]
        return float(np.std(np.stack(batch_means), axis=0).mean())

    means = log_control_means(tmp_path / "on", 1.0, ["x", "y"])
    between = spread_of_batch_means(means)
    within = float(np.mean([np.abs(means[b, "x"] - means[b, "y"]).mean() / 2 for b in ["B1", "B2", "B3"]]))
    assert between > 2.5 * within, (between, within)
    between_off = spread_of_batch_means(log_control_means(tmp_path / "off", 0.0, ["x"]))
    assert between > 4 * between_off, (between, between_off)


def _seed_with_nucleus_growth(params: dict) -> int:
    for seed in range(1000):
        design = design_screen(params, seed)
        if design["effect_nucleus_size"].iloc[1] > 0:
            return seed
    raise AssertionError("no design with a nucleus-size increase in 1000 seeds")


def _mean_nucleus_area(path: Path) -> tuple[float, int]:
    """Mean area of DNA-channel objects from a simple threshold (half-way to the bright end)."""
    dna = read_image(path).astype(float)
    background, bright = np.median(dna), np.percentile(dna, 99.5)
    labels, n = ndimage.label(dna > background + 0.4 * (bright - background))
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas >= 4]  # ignore noise specks
    return (float(areas.mean()) if len(areas) else 0.0), len(areas)


def test_nucleus_size_effect_is_visible_in_the_pixels(tmp_path):
    params = {**TINY, "image_size": 64, "n_sites": 2, "n_rows": 2, "n_cols": 6, "n_control_wells": 6,
              "mechanism_sizes": [1], "n_null": 0, "factors_per_mechanism": 1,
              "strength_range": [3.0, 3.0], "cells_per_site": 8.0}
    seed = _seed_with_nucleus_growth(params)
    design = design_screen(params, seed)
    assert design["effect_nucleus_size"].iloc[1] == pytest.approx(3.0)
    run_plate(tmp_path, "P1", "B1", params, seed=seed)

    layout = pd.read_csv(tmp_path / "platemaps" / "P1.csv")
    areas: dict[bool, list[float]] = {True: [], False: []}
    for well, is_control in zip(layout["well"], layout["is_control"]):
        for site in (1, 2):
            area, n_objects = _mean_nucleus_area(tmp_path / "images" / "P1" / f"{well}_s{site}_w1.tif")
            if n_objects:
                areas[bool(is_control)].append(area)
    control, treated = np.mean(areas[True]), np.mean(areas[False])
    assert treated > 1.3 * control, (control, treated)

    # the truth table agrees with the design
    truth = pd.read_csv(tmp_path / "truth" / "P1.tsv", sep="\t").merge(layout, on="well")
    by_group = truth.groupby("is_control")["bio_nucleus_size"].mean()
    assert by_group[False] - by_group[True] == pytest.approx(3.0, abs=0.6)


# --- bad input -------------------------------------------------------------------------

def test_unknown_parameter_lists_the_allowed_ones(tmp_path):
    with pytest.raises(SimulateParamsError) as info:
        run_plate(tmp_path, "P1", "B1", {"image_sise": 64})
    message = str(info.value)
    assert "image_sise" in message and "image_size" in message and "batch_effect_scale" in message
    assert isinstance(info.value, InputError) and isinstance(info.value, ConfigError)
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("bad, key", [
    ({"n_rows": 9}, "n_rows"),
    ({"image_size": 32.5}, "image_size"),
    ({"strength_range": [2.0, 1.0]}, "strength_range"),
    ({"mechanism_sizes": [2, 0]}, "mechanism_sizes"),
    ({"n_control_wells": 32}, "n_control_wells"),
    ({"cell_radius": 4.0}, "cell_radius"),
    ({"well_sd": -1.0}, "well_sd"),
    ({"plate_format": 48}, "plate_format"),
])
def test_bad_parameter_values_name_the_key(bad, key):
    with pytest.raises(InputError, match=f"simulate.{key}"):
        design_screen(bad)


def test_bad_identifiers_and_seed(tmp_path):
    with pytest.raises(InputError, match="plate"):
        run_plate(tmp_path, "../P1", "B1")
    with pytest.raises(InputError, match="batch"):
        run_plate(tmp_path, "P1", "B 1")
    with pytest.raises(InputError, match="seed"):
        design_screen(None, seed=-1)

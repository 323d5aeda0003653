"""Incremental reruns on the tiny demo: what `snakemake -n` plans after a data or config update.

Each test works on a copy of the session's completed reference run (tests/conftest.py), so the
job lists come from real outputs and real Snakemake metadata.
"""

from __future__ import annotations

import os
import shutil
import time

import pandas as pd
import pytest
from helpers_workflow import REPO, Job, Project, copy_project, make_project

pytestmark = pytest.mark.slow

PER_PLATE_RULES = {"simulate_plate", "ingest_plate", "publish_plate", "embed_plate"}
UPSTREAM_RULES = {"simulate_design", "simulate_plate", "ingest_plate", "publish_plate", "train_model",
                  "embed_plate"}


def keys(jobs) -> set[str]:
    return {repr(job) for job in jobs}


def find_job(jobs: list[Job], rule: str, **wildcards: str) -> Job:
    matches = [j for j in jobs if j.rule == rule and all(j.wildcards.get(k) == v
                                                          for k, v in wildcards.items())]
    assert len(matches) == 1, f"expected one {rule} {wildcards} job, got {matches}"
    return matches[0]


@pytest.fixture
def done(reference_run, tmp_path) -> Project:
    return copy_project(reference_run, tmp_path / "project")


def test_completed_run_has_nothing_to_do(done):
    assert done.dry_run() == []


def test_adding_a_plate_runs_that_plate_and_the_aggregates_only(done):
    # the aggregates: collecting the wells and everything after it
    aggregates = keys(done.dry_run("--forcerun", "collect_wells"))
    assert "collect_wells" in {j.split("[")[0] for j in aggregates}
    assert not any("plate=" in key for key in aggregates)

    demo_sheet = pd.read_csv(REPO / "config" / "plates.tsv", sep="\t", dtype=str,
                             keep_default_na=False)
    sheet = done.sheet()
    new = demo_sheet[demo_sheet["plate"] == "P02"]
    assert len(new) == 1 and "P02" not in set(sheet["plate"])
    done.write_sheet(pd.concat([sheet, new], ignore_index=True))

    jobs = done.dry_run()
    per_plate = [j for j in jobs if "plate" in j.wildcards]
    assert {j.wildcards["plate"] for j in per_plate} == {"P02"}, per_plate
    assert {j.rule for j in per_plate} >= {"ingest_plate", "embed_plate"}
    assert {j.rule for j in per_plate} <= PER_PLATE_RULES
    assert keys(j for j in jobs if "plate" not in j.wildcards) == aggregates
    assert "train_model" not in {j.rule for j in jobs}, "adding a plate must not retrain"


def test_changing_one_rules_parameters_reruns_it_and_its_descendants_only(done):
    methods = done.config()["postprocess"]["methods"]
    methods["pca_ica"]["n_components"] -= 1
    done.update_config({"postprocess": {"methods": methods}})

    jobs = done.dry_run()
    # the jobs that take this method's parameters (postprocess, and the benchmark that refits
    # the method per held-out fold) ...
    changed = [j for j in jobs if j.reason.startswith("Params have changed")]
    assert any(j.rule == "postprocess" for j in changed), jobs
    assert all(j.wildcards.get("method") == "pca_ica" for j in changed), changed
    # ... and what follows them; nothing upstream, nothing of the other methods
    outputs = [path for job in changed for path in job.output]
    assert keys(jobs) == keys(done.dry_run("--forcerun", *outputs))
    assert not {j.rule for j in jobs} & UPSTREAM_RULES
    assert all(j.wildcards.get("method") in (None, "pca_ica") for j in jobs), jobs


@pytest.fixture(scope="module")
def screen(reference_run, tmp_path_factory) -> Project:
    """A real-screen project (source: plates): the reference's simulated images and plate maps
    as raw data outside results/, embedded with the reference's trained checkpoint."""
    root = tmp_path_factory.mktemp("screen") / "project"
    project = make_project(root)
    simulated = reference_run.root / reference_run.config()["simulate"]["root"]
    # (without Snakemake's .snakemake_timestamp marker of the simulator's directory output)
    shutil.copytree(simulated / "images", root / "raw" / "images",
                    ignore=shutil.ignore_patterns(".snakemake_timestamp"))
    shutil.copytree(simulated / "platemaps", root / "raw" / "platemaps")
    model = reference_run.config()["model"]["id"]
    shutil.copytree(reference_run.root / "results" / "models" / model, root / "models" / model)
    sheet = project.sheet()
    sheet["path"] = "raw/images"
    sheet["platemap"] = [f"raw/platemaps/{plate}.csv" for plate in sheet["plate"]]
    project.write_sheet(sheet)
    project.update_config({"source": "plates", "model": {"checkpoint": f"models/{model}/seed0"}})
    project.run(*screen_targets(project))
    return project


def screen_targets(project: Project) -> list[str]:
    """Per-plate embeddings and the wells table (no benchmarks: a real screen has no truth)."""
    jobs = project.dry_run("--forceall", "--until", "collect_wells")
    return find_job(jobs, "collect_wells").output


def test_updating_one_raw_image_reruns_that_plate_only(screen):
    """A re-exported image (new content, newer mtime) reruns its plate. A bare `touch` does not:
    Snakemake >= 8 keeps checksums of small inputs and ignores a newer mtime with the same
    content."""
    import tifffile

    targets = screen_targets(screen)
    assert screen.dry_run(*targets) == []
    ingest = find_job(screen.dry_run("--forceall", *targets), "ingest_plate", plate="P01")
    image = screen.root / next(p for p in ingest.input if p.startswith("raw/images/P01/"))

    later = time.time() + 10  # clearly newer than every output, whatever the clock resolution
    os.utime(image, (later, later))
    assert screen.dry_run(*targets) == [], "same content, newer mtime: nothing to redo"

    pixels = tifffile.imread(image)
    pixels[0, 0] = pixels[0, 0] + 1 if pixels[0, 0] < pixels.max() else pixels[0, 0] - 1
    tifffile.imwrite(image, pixels)
    os.utime(image, (later + 1, later + 1))

    jobs = screen.dry_run(*targets)
    per_plate = [j for j in jobs if "plate" in j.wildcards]
    assert {j.wildcards["plate"] for j in per_plate} == {"P01"}, jobs
    assert {j.rule for j in per_plate} == {"ingest_plate", "publish_plate", "embed_plate"}
    assert {j.rule for j in jobs} - {j.rule for j in per_plate} == {"collect_wells"}
    assert "raw/images/P01" in find_job(jobs, "ingest_plate", plate="P01").reason

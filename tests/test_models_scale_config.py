"""config/examples/rxrx3_scale.yaml: valid against the schema, its model/train/embed sections
resolve; the DAG of a large plate sheet builds without reading images (dry run; the 2,000-plate
timing is tests/benchmarks/bench_dag.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from helpers_workflow import REPO, job_counts, make_project

from phenoica.config import load_config
from phenoica.embed import resolve_embed_config
from phenoica.models import get_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "examples" / "rxrx3_scale.yaml"


def test_rxrx3_scale_config_is_valid_and_resolves():
    config = load_config(CONFIG)
    channels = [c["name"] for c in config["channels"]]
    assert len(channels) == 6
    spec = get_spec(config["model"]["name"], **config["model"]["overrides"])
    assert (spec.family, spec.patch_size, spec.embed_dim, spec.img_size) == ("camae", 16, 384, 256)
    train = config["train"]
    assert train["precision"] == "bf16" and train["nproc"] == "auto"
    embed = resolve_embed_config(config["embed"], spec)
    assert embed["crop_size"] == 256 and embed["layers"] == [6, 9, 12] and embed["per_channel"]
    assert config["resources"]["train_model"]["gpu"] > 1 and config["resources"]["embed_plate"]["gpu"] == 1


def test_dag_of_a_large_sheet_builds_without_reading_images(tmp_path):
    """300 simulated plates: the DAG lists every per-plate job (bench_dag.py times 2,000)."""
    plates = [f"S{i:04d}" for i in range(300)]
    project = make_project(tmp_path / "project", overrides={"train": {"plates": plates[:2]}})
    demo = pd.read_csv(REPO / "config" / "plates.tsv", sep="\t", dtype=str, keep_default_na=False)
    template = demo.iloc[0]
    root = project.config()["simulate"]["root"]
    project.write_sheet(pd.DataFrame({
        "plate": plates, "batch": [f"B{i % 10}" for i in range(300)], "layout": template["layout"],
        "path": f"{root}/images", "platemap": [f"{root}/platemaps/{p}.csv" for p in plates],
        "pattern": "",
    }))
    run = project.snakemake("-n", "--quiet", "rules")  # the job table only
    counts = job_counts(run.stdout)
    assert counts.get("embed_plate") == 300 and counts.get("ingest_plate") == 300, counts
    assert counts.get("train_model") == 1, counts

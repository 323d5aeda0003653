"""config/examples/rxrx3_scale.yaml: valid against the schema, its model/train/embed sections
resolve, and the DAG of a 2,000-plate screen builds (dry run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_models import make_plate_sheet
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


@pytest.mark.slow
def test_dag_of_2000_plates_builds(tmp_path):
    sheet = make_plate_sheet(tmp_path / "screen", n_plates=2000)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path / "run"), "--configfile", str(CONFIG), "--config", f"plates={sheet}"],
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout + result.stderr, flags=re.M))
    assert counts["ingest_plate"] == "2000" and counts["embed_plate"] == "2000"
    assert counts["train_model"] == "1" and counts["collect_wells"] == "1"

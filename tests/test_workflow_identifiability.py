"""The identifiability and synthetic-benchmark targets of the workflow: config sections (schema
defaults = code defaults), dry runs listing the expected jobs, and tiny end-to-end runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers_workflow import REPO, copy_project, make_project

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# Tiny sections: 2 seeds, a 2-value weight-decay sweep, a 1-epoch MAE on 2 plates (24 probe sites)
TINY_IDENT = {"seeds": [0, 1], "weight_decays": [0.05, 0.5], "sweep_seeds": [0, 1], "train": {},
              "n_pairs": 50, "max_probe_crops": 8}
TINY_SYNTH = {"datasets": ["shapes", "cells"], "seeds": [0], "n_train": 160, "n_eval": 100, "image_size": 16,
              "steps": 15, "batch_size": 32, "width": 8, "hidden": 32, "latent_dim": 6, "dci_estimator": "lasso"}


def _defaults(section: str) -> dict:
    from phenoica.config import validate_config

    return validate_config({}, SCHEMA)[section]


def test_demo_sections():
    schema = _defaults("identifiability")
    # the demo compares 3 seeds and sweeps 3 weight decays, one of them the main training's
    assert schema["seeds"] == [0, 1, 2] and len(schema["weight_decays"]) == 3
    assert _defaults("train")["weight_decay"] in schema["weight_decays"]
    assert schema["k"] == "stable" and "ica_components" not in schema


def test_full_example_is_valid_and_larger_than_the_demo():
    from phenoica.config import validate_config

    full = yaml.safe_load((REPO / "config" / "examples" / "identifiability_full.yaml").read_text())
    config = validate_config({**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), **full}, SCHEMA)
    ident, demo = config["identifiability"], _defaults("identifiability")
    assert ident["train"] == {}  # the full run shares seed train.seed with the main pipeline
    assert len(ident["seeds"]) >= len(demo["seeds"]) and len(ident["weight_decays"]) > len(demo["weight_decays"])
    # the example spells out every key of both sections
    assert set(full["identifiability"]) == set(demo) and set(full["synthetic"]) == set(_defaults("synthetic"))
    synth, small = config["synthetic"], _defaults("synthetic")
    assert synth["n_train"] > small["n_train"] and synth["steps"] > small["steps"] and len(synth["seeds"]) >= 5
    for rule in ("identifiability_train", "identifiability_embed"):
        assert config["resources"][rule]["gpu"] >= 1


def _jobs(project, *targets):
    return project.dry_run(*targets)


def test_dry_run_identifiability_shares_the_main_checkpoints(tmp_path):
    project = make_project(tmp_path / "p", overrides={"identifiability": TINY_IDENT})
    jobs = _jobs(project, "identifiability")
    counts = Counter(job.rule for job in jobs)
    # weight decay 0.05 is the main training's: seeds 0 and 1 come from train_model
    assert {(j.wildcards["model"], j.wildcards["seed"]) for j in jobs if j.rule == "train_model"} == {
        ("demo_mae", "0"), ("demo_mae", "1")}
    assert {(j.wildcards["wd"], j.wildcards["seed"]) for j in jobs if j.rule == "identifiability_train"} == {
        ("0.5", "0"), ("0.5", "1")}
    assert {(j.wildcards["wd"], j.wildcards["seed"]) for j in jobs if j.rule == "identifiability_embed"} == {
        ("0.05", "0"), ("0.05", "1"), ("0.5", "0"), ("0.5", "1")}
    assert counts["identifiability_alignment"] == counts["identifiability_isometry"] == 1
    assert counts["identifiability"] == 1 and counts["ingest_plate"] == 2
    # nothing of the main analysis runs
    assert not {"embed_plate", "collect_wells", "postprocess", "synthetic_train"} & set(counts)


def test_dry_run_identifiability_with_its_own_training(tmp_path):
    ident = {**TINY_IDENT, "train": {"epochs": 2}, "weight_decays": [0.0, 0.05, 0.5], "sweep_seeds": [0, 1],
             "seeds": [0, 1, 2]}
    project = make_project(tmp_path / "p", overrides={"identifiability": ident})
    jobs = _jobs(project, "identifiability")
    trained = {(j.wildcards["wd"], j.wildcards["seed"]) for j in jobs if j.rule == "identifiability_train"}
    # 3 seeds at the main weight decay + 2 sweep seeds at each of the other two
    assert trained == {("0.05", "0"), ("0.05", "1"), ("0.05", "2"), ("0", "0"), ("0", "1"), ("0.5", "0"),
                       ("0.5", "1")}
    assert "train_model" not in {j.rule for j in jobs}
    alignment = next(j for j in jobs if j.rule == "identifiability_alignment")
    assert sorted(alignment.input) == [f"results/identifiability/embeddings/demo_mae/wd0.05/seed{s}.h5ad"
                                       for s in (0, 1, 2)]


def test_dry_run_synthetic_benchmark(tmp_path):
    project = make_project(tmp_path / "p", overrides={"synthetic": TINY_SYNTH})
    jobs = _jobs(project, "synthetic_benchmark")
    counts = Counter(job.rule for job in jobs)
    # ae_ica reuses the ae's codes: 3 trainings and 4 scorings per dataset and seed
    assert counts == {"synthetic_dataset": 2, "synthetic_train": 6, "synthetic_score": 8,
                      "synthetic_collect": 1, "synthetic_benchmark": 1}
    assert {j.wildcards["arch"] for j in jobs if j.rule == "synthetic_train"} == {"ae", "beta_vae", "beta_tcvae"}


@pytest.mark.parametrize(("section", "target", "message"), [
    ({"identifiability": {"train": {"epochz": 2}}}, "identifiability", "epochz"),
    ({"identifiability": {"weight_decays": [0.5, 0.50]}}, "identifiability", "identifiability.weight_decays"),
    ({"identifiability": {"probe_plates": ["P99"]}}, "identifiability", "identifiability.probe_plates"),
    ({"synthetic": {"image_size": 24}}, "synthetic_benchmark", "synthetic.image_size"),
])
def test_bad_sections_stop_the_dry_run(tmp_path, section, target, message):
    project = make_project(tmp_path / "p", overrides=section)
    run = project.snakemake("-n", target, check=False)
    assert run.returncode != 0 and message in run.stdout + run.stderr


# --------------------------------------------------------------------------------------------
# real runs on tiny configs
# --------------------------------------------------------------------------------------------
def _table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t")
    assert tuple(table.columns) == columns, path
    assert len(table) > 0
    return table


@pytest.mark.slow
def test_identifiability_end_to_end(reference_run, tmp_path):
    import anndata as ad

    # on a copy of the session's reference run: its checkpoint is seed 0 at the main weight decay
    project = copy_project(reference_run, tmp_path / "p")
    project.update_config({"identifiability": TINY_IDENT})
    trainings = [j for j in project.dry_run("identifiability")
                 if j.rule in ("train_model", "identifiability_train")]
    assert len(trainings) == 3  # seed 1, and seeds 0 and 1 at the other weight decay
    project.run("identifiability")
    out = project.results() / "identifiability"
    alignment = _table(out / "alignment.tsv", ("layer", "seed_a", "seed_b", "map", "k", "metric", "value"))
    assert set(alignment["layer"]) == {1, 2, 3, 4, 5}  # every block of mae_vit_demo
    pairs = alignment[alignment["seed_a"] != alignment["seed_b"]]
    assert set(zip(pairs["seed_a"], pairs["seed_b"])) == {(0, 1)}
    assert (alignment["k"] >= 2).all()
    assert {"permutation", "rigid", "linear", "ica"} <= set(alignment["map"])
    assert np.isfinite(alignment["value"]).all()
    errors = alignment[alignment["metric"].isin(["mean_error", "sup_error"])]["value"]
    assert (errors >= 0).all() and (errors < 10).all()
    mcc = alignment[alignment["metric"].str.startswith("mcc")]["value"]
    assert ((mcc >= 0) & (mcc <= 1 + 1e-9)).all()
    assert (out / "alignment.png").stat().st_size > 1000
    summary = _table(out / "alignment_summary.tsv", ("layer", "k", "map", "metric", "value"))
    assert (summary["metric"] == "selected").sum() == 5  # one selected k per layer

    isometry = _table(out / "isometry.tsv", ("weight_decay", "seed", "bilipschitz_L", "rigid_bound", "ratio_median",
                                             "ratio_min", "ratio_max", "rigid_error", "rigid_sup_error", "n_probe"))
    assert sorted(zip(isometry["weight_decay"], isometry["seed"])) == [(0.05, 0), (0.05, 1), (0.5, 0), (0.5, 1)]
    assert np.isfinite(isometry.drop(columns=["weight_decay", "seed"]).to_numpy()).all()
    assert (isometry["bilipschitz_L"] > 0).all() and (isometry["rigid_error"] >= 0).all()
    assert (isometry["ratio_min"] <= isometry["ratio_median"]).all()
    assert (isometry["ratio_median"] <= isometry["ratio_max"]).all()
    assert (isometry["n_probe"] == 8).all()
    assert (out / "isometry.png").stat().st_size > 1000

    # the shared probe set: the same 24 sites (2 plates x 12 wells), every block, with provenance
    probe = ad.read_h5ad(out / "embeddings" / "demo_mae" / "wd0.05" / "seed1.h5ad")
    assert probe.n_obs == 24 and {f"X_layer{k}" for k in range(1, 6)} <= set(probe.obsm)
    assert "identifiability_probe" in probe.uns["phenoica"]["stages"]
    # seed 0 at the main weight decay is the main pipeline's checkpoint
    assert (project.results() / "models" / "demo_mae" / "seed0" / "model.safetensors").exists()
    assert not (out / "models" / "demo_mae" / "wd0.05").exists()


@pytest.mark.slow
def test_synthetic_benchmark_end_to_end(tmp_path):
    project = make_project(tmp_path / "p", overrides={"synthetic": TINY_SYNTH})
    project.run("synthetic_benchmark")
    out = project.results() / "synthetic"
    table = _table(out / "disentanglement.tsv", ("dataset", "model", "seed", "metric", "value"))
    assert set(table["dataset"]) == {"shapes", "cells"}
    assert set(table["model"]) == {"ae", "ae_ica", "beta_vae", "beta_tcvae"}
    metrics = {"InfoM", "InfoE", "InfoC", "MCC", "DCI_D", "DCI_C", "DCI_I", "recon_bce", "n_active"}
    assert metrics <= set(table["metric"])
    assert np.isfinite(table["value"]).all()
    bounded = table[table["metric"].isin(["InfoM", "InfoE", "InfoC", "MCC", "DCI_D", "DCI_C", "DCI_I"])]["value"]
    assert ((bounded >= -1e-9) & (bounded <= 1 + 1e-9)).all()
    assert (table[table["metric"] == "recon_bce"]["value"] > 0).all()
    # ae and ae_ica score the same codes: same reconstruction, one training job
    bce = table[table["metric"] == "recon_bce"].set_index(["dataset", "model"])["value"]
    assert bce[("shapes", "ae")] == bce[("shapes", "ae_ica")]
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert "mean" in set(summary["dataset"]) and "paper" in summary.columns
    assert (out / "disentanglement.png").stat().st_size > 1000

    # a scoring parameter rescores without retraining
    project.update_config({"synthetic": {"n_neighbors": 5}})
    rules = Counter(job.rule for job in project.dry_run("synthetic_benchmark"))
    assert rules == {"synthetic_score": 8, "synthetic_collect": 1, "synthetic_benchmark": 1}

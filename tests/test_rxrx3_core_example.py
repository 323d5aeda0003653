"""config/examples/rxrx3_core_profiles.yaml: published per-well OpenPhenom embeddings of a whole
screen (the RxRx3-core layout) through the downstream workflow. The example's table is not in the
repository (it is ~600 MB); the tests write a generated table of that layout
(:func:`phenoica.benchmarks.screen.rxrx3_core_table`) where the example expects it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers_workflow import REPO, Project, copy_workflow

EXAMPLE = "config/examples/rxrx3_core_profiles.yaml"
METHODS = ["base", "pca", "pca_ica", "pca_rand", "centerscale", "tvn"]


def example_project(tmp_path: Path, n_batches: int, overrides: dict | None = None,
                    **screen) -> tuple[Project, list[str]]:
    from phenoica.benchmarks.screen import rxrx3_core_table, synthetic_screen

    root = tmp_path / "project"
    copy_workflow(root)
    config = yaml.safe_load((REPO / EXAMPLE).read_text())
    X, obs, _ = synthetic_screen(n_batches=n_batches, **screen)
    table = root / config["profiles"]["path"]
    table.parent.mkdir(parents=True)
    rxrx3_core_table(X, obs).to_parquet(table)
    for section, values in (overrides or {}).items():
        config[section] = {**config.get(section, {}), **values}
    (root / "config" / "test_example.yaml").write_text(yaml.safe_dump(config))
    return Project(root), ["--configfile", "config/test_example.yaml"]


def test_dry_run_plans_every_method(tmp_path):
    config = yaml.safe_load((REPO / EXAMPLE).read_text())
    assert config["source"] == "profiles" and list(config["postprocess"]["methods"]) == METHODS
    project, args = example_project(tmp_path, 2, plates_per_batch=1, wells_per_plate=40,
                                    n_perturbations=6)
    by_rule: dict[str, list[str]] = {}
    for job in project.dry_run(*args):
        by_rule.setdefault(job.rule, []).append(job.wildcards.get("method", ""))
    for rule in ("postprocess", "score_separation", "benchmark_generalization"):
        assert sorted(by_rule[rule]) == sorted(METHODS), rule
    assert len(by_rule["collect_profiles"]) == 1
    # a ComBat with covariates cannot be benchmarked: the dry run stops, saying why
    config = yaml.safe_load((project.root / args[1]).read_text())
    config["postprocess"]["methods"]["combat_cov"] = {"method": "combat",
                                                      "covariates": ["perturbation"]}
    (project.root / "config" / "combat.yaml").write_text(yaml.safe_dump(config))
    run = project.snakemake("-n", "--configfile", "config/combat.yaml", check=False)
    assert run.returncode != 0
    assert "postprocess.methods.combat_cov.covariates" in run.stdout + run.stderr
    assert "hidden labels" in run.stdout + run.stderr


@pytest.mark.slow
def test_example_runs_end_to_end_on_a_20000_well_table(tmp_path):
    # 20,000 wells x 384 dims in the published layout: 4 experiments of 5 plates of 1,000 wells,
    # 400 perturbations. Cheaper than the example: base, PCA+ICA and TVN (the dry run above plans
    # all six), 2 folds of experiments, 40 of the 400 perturbations in the AUROC tasks (their
    # probes are most of the time), 200 permutations, a PCA preview instead of UMAPs.
    config = yaml.safe_load((REPO / EXAMPLE).read_text())
    methods = {m: config["postprocess"]["methods"][m] for m in ("base", "pca_ica", "tvn")}
    overrides = {"postprocess": {"methods": methods},
                 "benchmark": {"split": "kfold", "n_folds": 2, "retrieval_permutations": 200,
                               "auroc_max_perturbations": 40},
                 "report": {"embedding": "pca"}}
    project, args = example_project(tmp_path, 4, overrides, plates_per_batch=5,
                                    wells_per_plate=1000, n_perturbations=400)
    project.run(*args, timeout=3000)
    bench = pd.read_csv(project.results() / "benchmarks.tsv", sep="\t")
    pooled = bench[(bench["fold"] == "pooled") & bench["perturbation"].isna()]
    value = pooled.set_index(["method", "task", "metric"])["value"]
    for method in methods:
        for task in ("auroc", "auroc_cross", "auroc_pooled"):
            assert 0.5 < value[(method, task, "auroc_l2")] <= 1.0, (method, task)
        assert value[(method, "protocol", "auroc_perturbations_total")] == 400
        assert value[(method, "auroc", "n_perturbations")] == 40  # auroc_max_perturbations
        assert value[(method, "protocol", "n_classes_total")] == 400
    # uncorrected experiment offsets move the held-out wells away from the training controls:
    # auroc_cross leaves the within-batch auroc further for the raw embedding than after TVN
    per = bench[(bench["fold"] == "pooled") & bench["perturbation"].notna()
                & (bench["metric"] == "auroc_l2")].pivot_table(index=["method", "perturbation"],
                                                                columns="task", values="value")
    gap = (per["auroc_cross"] - per["auroc"]).abs().groupby(level="method").mean()
    assert gap["base"] > gap["tvn"]
    scores = pd.read_csv(project.results() / "scores.tsv", sep="\t")
    overall = scores[scores["component"] == "all"].pivot_table(index="method", columns="metric",
                                                                values="value")
    assert overall.loc["base", "n_components"] == 384 and overall.loc["pca_ica", "n_components"] == 128
    summary = (project.results() / "summary.txt").read_text()
    assert "20,000 wells" in summary or "20000 wells" in summary

"""config/examples/bbbc021.yaml: the whole downstream workflow (profiles -> post-processing ->
scores -> leave-one-week-out benchmarks -> report) on the real BBBC021 table, which the repository
holds in config/examples/data/bbbc021 (the example names it relative to the project root, so the
copy of ``config/`` in a temporary project carries it along).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers_data import BBBC021
from helpers_workflow import REPO, Project, copy_workflow

EXAMPLE = "config/examples/bbbc021.yaml"
METHODS = ["base", "pca", "pca_ica", "pca_rand", "pca_centerscale", "tvn", "tvn_ica", "combat",
           "harmony", "ica_clean"]
ROTATIONS = ("pca", "pca_ica", "pca_rand")
#: The end-to-end run: the three rotations and the raw features, 2 folds of weeks (the ten
#: methods are wired by the dry run below and run in-process by test_generalization_bbbc021.py).
E2E_METHODS = ["base", *ROTATIONS]


def example_project(tmp_path: Path, overrides: dict | None = None) -> tuple[Project, list[str]]:
    """A copy of the workflow at ``tmp_path/project`` (its ``config/`` holds the example's data)
    and the snakemake arguments that select the example. ``overrides`` replace whole sections'
    keys in a copy of the example (a second --configfile would merge the method list instead)."""
    root = tmp_path / "project"
    root.mkdir(parents=True)
    copy_workflow(root)
    results = yaml.safe_load((REPO / EXAMPLE).read_text())["results"]
    if not overrides:
        return Project(root, results), ["--configfile", EXAMPLE]
    config = yaml.safe_load((REPO / EXAMPLE).read_text())
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    (root / "config" / "test_example.yaml").write_text(yaml.safe_dump(config))
    return Project(root, results), ["--configfile", "config/test_example.yaml"]


def test_example_reads_only_the_bbbc021_table():
    config = yaml.safe_load((REPO / EXAMPLE).read_text())
    assert config["source"] == "profiles"
    assert config["profiles"]["path"] == BBBC021
    assert (REPO / config["profiles"]["path"]).is_file()
    assert list(config["postprocess"]["methods"]) == METHODS
    for name, params in config["postprocess"]["methods"].items():
        if name not in ("base", "combat"):
            assert params["n_components"] == 50 and params["standardize"] is True, name


def test_dry_run_plans_every_method(tmp_path):
    project, args = example_project(tmp_path)
    jobs = project.dry_run(*args)
    by_rule: dict[str, list[str]] = {}
    for job in jobs:
        by_rule.setdefault(job.rule, []).append(job.wildcards.get("method", ""))
    for rule in ("postprocess", "score_separation", "benchmark_generalization", "method_figures"):
        assert sorted(by_rule[rule]) == sorted(METHODS), rule
    assert len(by_rule["collect_profiles"]) == 1
    assert {"scores_report", "benchmark_report", "collect_results"} <= set(by_rule)
    assert not {"train_model", "embed_plate", "ingest_plate"} & set(by_rule)


def pooled(table: pd.DataFrame, method: str, task: str, metric: str) -> float:
    rows = table[(table["method"] == method) & (table["task"] == task) & (table["metric"] == metric)
                 & (table["fold"] == "pooled") & table["perturbation"].isna()]
    assert len(rows) == 1, (method, task, metric)
    return float(rows["value"].iloc[0])


@pytest.mark.slow
def test_example_runs_end_to_end(tmp_path):
    # cheaper than the example as shipped: 4 methods, 2 folds of weeks, fewer retrieval
    # permutations and a PCA preview instead of UMAPs; every task and rule still runs
    example = yaml.safe_load((REPO / EXAMPLE).read_text())
    methods = {name: example["postprocess"]["methods"][name] for name in E2E_METHODS}
    overrides = {"benchmark": {"retrieval_permutations": 100, "split": "kfold", "n_folds": 2},
                 "report": {"embedding": "pca"}, "postprocess": {"methods": methods}}
    project, args = example_project(tmp_path, overrides)
    project.run(*args, timeout=3000)

    scores = pd.read_csv(project.results() / "scores.tsv", sep="\t")
    assert sorted(set(scores["method"])) == sorted(E2E_METHODS)
    overall = scores[scores["component"] == "all"].pivot_table(index="method", columns="metric",
                                                                values="value")
    assert overall.loc["pca", "n_components"] == 50
    assert overall.loc["base", "n_components"] == 516  # CellProfiler features

    bench = pd.read_csv(project.results() / "benchmarks.tsv", sep="\t")
    assert sorted(set(bench["method"])) == sorted(E2E_METHODS)
    folds = set(bench.loc[bench["fold"] != "pooled", "fold"])
    assert folds == {"fold0", "fold1"}
    for method in E2E_METHODS:
        assert pooled(bench, method, "moa", "n_treatments") == 103  # every compound x dose but DMSO
        assert 0.0 <= pooled(bench, method, "moa", "nscb_accuracy") <= 1.0
    # whitened PCA, PCA+ICA and PCA+Rand differ by a rotation: rotation-invariant metrics tie
    for task, metric in (("classification", "accuracy_knn"), ("classification", "accuracy_linear"),
                         ("auroc", "auroc_l2"), ("retrieval_biology", "map")):
        values = [pooled(bench, m, task, metric) for m in ROTATIONS]
        # the L2 probes are fitted (batched L-BFGS) to a relative gradient of 1e-5, not exactly:
        # their AUROCs tie up to a few swapped ranks; the other metrics tie to rounding
        tol = 1e-3 if metric == "auroc_l2" else 1e-5
        assert max(values) - min(values) < tol, (task, metric, values)
    # ... and the held-out mechanism is found far above chance (12 classes)
    assert pooled(bench, "pca", "classification", "accuracy_knn") > 0.4

    project.snakemake(*args, "--report", f"{project.results_folder}/report.html")
    html = (project.results() / "report.html").read_text()
    for method in E2E_METHODS:
        assert f"{project.results_folder}/figures/cellprofiler/methods/{method}/umap.png" in html
    summary = (project.results() / "summary.txt").read_text()
    assert "423 wells" in summary and "10 batches" in summary

"""The Snakemake report on the tiny demo: the report jobs are part of a plain run (dry run), and
`snakemake --report` after a run builds one HTML file with every method's figures."""

from __future__ import annotations

import re

import pytest
from helpers_workflow import REPO, copy_project, make_project

REPORT_RULES = {"method_figures", "scores_report", "benchmark_report"}


def test_report_captions_exist():
    text = (REPO / "workflow" / "rules" / "report.smk").read_text()
    captions = re.findall(r'caption="\.\./report/([\w.]+)"', text)
    assert len(captions) >= 8
    for name in captions:
        assert (REPO / "workflow" / "report" / name).is_file(), name
    snakefile = (REPO / "Snakefile").read_text()
    assert 'report: "workflow/report/workflow.rst"' in snakefile
    assert (REPO / "workflow" / "report" / "workflow.rst").is_file()


def test_a_plain_run_plans_every_report_figure(tmp_path):
    project = make_project(tmp_path / "project")
    methods = list(project.config()["postprocess"]["methods"])
    jobs = project.dry_run()
    figures = [j for j in jobs if j.rule == "method_figures"]
    assert sorted(j.wildcards["method"] for j in figures) == sorted(methods)
    for job in figures:
        method = job.wildcards["method"]
        assert sorted(job.output) == sorted(
            f"results/figures/demo_mae/methods/{method}/{name}.png" for name in ("umap", "attribution"))
        assert sorted(job.input) == [f"results/postprocess/demo_mae/{method}.h5ad",
                                     f"results/scores/demo_mae/{method}.tsv"]
    (scores,) = [j for j in jobs if j.rule == "scores_report"]
    assert sorted(scores.input) == sorted(f"results/scores/demo_mae/{m}.tsv" for m in methods)
    assert sorted(scores.output) == ["results/figures/demo_mae/scores_overview.png",
                                     "results/figures/demo_mae/scores_table.html"]
    (bench,) = [j for j in jobs if j.rule == "benchmark_report"]
    assert sorted(bench.input) == sorted(f"results/benchmarks/demo_mae/{m}.tsv" for m in methods)
    assert sorted(bench.output) == ["results/figures/demo_mae/benchmarks",
                                    "results/figures/demo_mae/benchmarks_table.html"]
    (final,) = [j for j in jobs if j.rule == "all"]
    assert set(final.input) >= {*figures[0].output, *scores.output, *bench.output}


def test_a_bad_report_key_fails_the_dry_run(tmp_path):
    project = make_project(tmp_path / "project", overrides={"report": {"embedding": "tsne"}})
    run = project.snakemake("-n", check=False)
    assert run.returncode != 0
    assert "report.embedding" in run.stdout + run.stderr


@pytest.mark.slow
def test_report_of_a_tiny_run(reference_run, tmp_path):
    project = copy_project(reference_run, tmp_path / "project")
    methods = list(project.config()["postprocess"]["methods"])
    figures = project.results() / "figures" / "demo_mae"
    for method in methods:
        for name in ("umap", "attribution"):
            assert (figures / "methods" / method / f"{name}.png").stat().st_size > 5_000
    tasks = sorted(p.stem for p in (figures / "benchmarks").glob("*.png"))
    assert {"auroc", "classification"} <= set(tasks)

    project.snakemake("--report", "results/report.html")
    html = (project.results() / "report.html").read_text()
    assert len(html) > 100_000  # the figures are embedded
    for method in methods:
        assert f"results/figures/demo_mae/methods/{method}/umap.png" in html
        assert f"Component attribution of <tt class=\\\"docutils literal\\\">{method}</tt>" in html
    for category in ("1. Post-processing methods", "2. Separation scores",
                     "3. Held-out-batch benchmarks"):
        assert category in html
    for task in tasks:
        assert f"results/figures/demo_mae/benchmarks/{task}.png" in html
    assert "results/scores.tsv" in html and "results/figures/demo_mae/scores_table.html" in html

    # the report's own parameters rerun the figures only
    project.update_config({"report": {"max_wells": 12}})
    jobs = project.dry_run()
    changed = {j.rule for j in jobs if j.reason.startswith("Params have changed")}
    assert changed == {"method_figures"}, jobs
    assert {j.rule for j in jobs} == {"method_figures", "all"}

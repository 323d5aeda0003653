# The file users open (results/phenoica.h5ad), the summary tables, and the report figures
# (`snakemake --report results/report.html` after a run; captions in workflow/report/).

REPORT_ROOT = "<results>/figures/{model}"
# Every figure and table of the report: part of `rule all`, so a plain run makes the report whole.
REPORT_FIGURES = [
    *expand(
        f"{REPORT_ROOT}/methods/{{method}}/{{figure}}.png",
        model=MODEL,
        method=METHODS,
        figure=["umap", "attribution"],
    ),
    *expand(
        f"{REPORT_ROOT}/{{name}}",
        model=MODEL,
        name=[
            "scores_overview.png",
            "scores_table.html",
            "benchmarks",
            "benchmarks_table.html",
        ],
    ),
]


rule collect_results:
    input:
        wells=f"<results>/embeddings/{MODEL}/wells.h5ad",
        methods=expand(
            "<results>/postprocess/{model}/{method}.h5ad", model=MODEL, method=METHODS
        ),
        scores=expand(
            "<results>/scores/{model}/{method}.tsv", model=MODEL, method=METHODS
        ),
        benchmarks=expand(
            "<results>/benchmarks/{model}/{method}.tsv", model=MODEL, method=METHODS
        ),
        nulls=expand(
            "<results>/null/{model}/{method}.tsv", model=MODEL, method=NULL_METHODS
        ),
    output:
        adata="<results>/phenoica.h5ad",
        scores=report(
            "<results>/scores.tsv",
            caption="../report/scores_tsv.rst",
            category="2. Separation scores",
            labels={"item": "long table (TSV)"},
        ),
        benchmarks=report(
            "<results>/benchmarks.tsv",
            caption="../report/benchmarks_tsv.rst",
            category="3. Held-out-batch benchmarks",
            labels={"item": "long table (TSV)"},
        ),
        summary=report(
            "<results>/summary.txt",
            caption="../report/summary.rst",
            category="3. Held-out-batch benchmarks",
            labels={"item": "run summary (text)"},
        ),
        null=report(
            "<results>/null_rotations.tsv",
            caption="../report/null_rotations.rst",
            category="3. Held-out-batch benchmarks",
            labels={"item": "rotation null (TSV)"},
        ),
    log:
        "<logs>/collect_results.log",
    conda:
        "../../envs/core.yaml"
    params:
        methods=canonical(METHODS),
        rotation_null=canonical(config["rotation_null"]),
    script:
        "../scripts/collect_results.py"


rule method_figures:
    input:
        adata="<results>/postprocess/{model}/{method}.h5ad",
        scores="<results>/scores/{model}/{method}.tsv",
        checked=figure_checks,
    output:
        umap=report(
            f"{REPORT_ROOT}/methods/{{method}}/umap.png",
            caption="../report/umap.rst",
            category="1. Post-processing methods",
            subcategory="{method}",
            labels={"figure": "UMAP"},
        ),
        attribution=report(
            f"{REPORT_ROOT}/methods/{{method}}/attribution.png",
            caption="../report/attribution.rst",
            category="1. Post-processing methods",
            subcategory="{method}",
            labels={"figure": "component attribution"},
        ),
    log:
        "<logs>/report/{model}/{method}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("method_figures")
    resources:
        **rule_resources("method_figures"),
    params:
        report=canonical(config["report"]),
        labels=canonical(config["labels"]),
        seed=canonical(SEED),
    script:
        "../scripts/method_figures.py"


rule scores_report:
    input:
        scores=expand("<results>/scores/{{model}}/{method}.tsv", method=METHODS),
    output:
        overview=report(
            f"{REPORT_ROOT}/scores_overview.png",
            caption="../report/scores_overview.rst",
            category="2. Separation scores",
            labels={"item": "overview figure"},
        ),
        table=report(
            f"{REPORT_ROOT}/scores_table.html",
            caption="../report/scores_table.rst",
            category="2. Separation scores",
            labels={"item": "table"},
        ),
    log:
        "<logs>/report/{model}_scores.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("scores_report")
    resources:
        **rule_resources("scores_report"),
    params:
        methods=canonical(METHODS),
    script:
        "../scripts/scores_report.py"


rule benchmark_report:
    input:
        benchmarks=expand("<results>/benchmarks/{{model}}/{method}.tsv", method=METHODS),
    output:
        figures=report(
            directory(f"{REPORT_ROOT}/benchmarks"),
            patterns=["{task}.png"],
            caption="../report/benchmark_task.rst",
            category="3. Held-out-batch benchmarks",
            labels={"item": "figure: {task}"},
        ),
        table=report(
            f"{REPORT_ROOT}/benchmarks_table.html",
            caption="../report/benchmarks_table.rst",
            category="3. Held-out-batch benchmarks",
            labels={"item": "pooled table"},
        ),
    log:
        "<logs>/report/{model}_benchmarks.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("benchmark_report")
    resources:
        **rule_resources("benchmark_report"),
    params:
        methods=canonical(METHODS),
        tasks=canonical(config["benchmark"]["tasks"]),
    script:
        "../scripts/benchmark_report.py"

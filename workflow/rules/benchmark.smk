# Held-out-batch generalization benchmarks: every fit sees the training batches only.
from phenoica.benchmarks.checks import check_benchmark_methods

# a method the folds cannot run honestly (ComBat with covariates) stops the dry run
check_benchmark_methods({method: method_spec(method) for method in METHODS})


rule benchmark_generalization:
    input:
        wells="<results>/embeddings/{model}/wells.h5ad",
        relations=relations_inputs,
        checked=benchmark_checks,
    output:
        benchmarks="<results>/benchmarks/{model}/{method}.tsv",
    log:
        "<logs>/benchmark/{model}/{method}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("benchmark_generalization")
    resources:
        **rule_resources("benchmark_generalization"),
    params:
        algorithm=lambda wildcards: canonical(method_spec(wildcards.method)[0]),
        method_params=lambda wildcards: canonical(method_spec(wildcards.method)[1]),
        benchmark=canonical(config["benchmark"]),
        labels=canonical(config["labels"]),
        layer=canonical(config["postprocess"]["layer"]),
        fit_on=canonical(config["postprocess"]["fit_on"]),
    script:
        "../scripts/benchmark_generalization.py"

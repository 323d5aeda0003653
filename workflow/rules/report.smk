# The file users open (results/phenoica.h5ad), the summary tables, and the report figures.


rule collect_results:
    input:
        wells=f"results/embeddings/{MODEL}/wells.h5ad",
        methods=expand("results/postprocess/{model}/{method}.h5ad", model=MODEL, method=METHODS),
        scores=expand("results/scores/{model}/{method}.tsv", model=MODEL, method=METHODS),
        benchmarks=expand("results/benchmarks/{model}/{method}.tsv", model=MODEL, method=METHODS),
    output:
        adata="results/phenoica.h5ad",
        scores="results/scores.tsv",
        benchmarks="results/benchmarks.tsv",
        summary="results/summary.txt",
    params:
        methods=METHODS,
    log:
        "logs/collect_results.log",
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/collect_results.py"

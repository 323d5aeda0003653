# Batch-vs-biology separation scores per post-processing method.


rule score_separation:
    input:
        adata="<results>/postprocess/{model}/{method}.h5ad",
        checked=score_checks,
    output:
        scores="<results>/scores/{model}/{method}.tsv",
    log:
        "<logs>/score/{model}/{method}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("score_separation")
    resources:
        **rule_resources("score_separation"),
    params:
        scores=canonical(config["scores"]),
        labels=canonical(config["labels"]),
    script:
        "../scripts/score_separation.py"

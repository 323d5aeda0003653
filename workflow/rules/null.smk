# The rotation null: every PCA+Rand output rescored with many seeded rotations of its whitening.

NULL_METHODS = [m for m in METHODS if method_spec(m)[0] == "pca_rand"]


rule rotation_null:
    input:
        wells="<results>/embeddings/{model}/wells.h5ad",
        adata="<results>/postprocess/{model}/{method}.h5ad",
        relations=relations_inputs,
    output:
        null="<results>/null/{model}/{method}.tsv",
    log:
        "<logs>/null/{model}/{method}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("rotation_null")
    resources:
        **rule_resources("rotation_null"),
    params:
        method_params=lambda wildcards: canonical(method_spec(wildcards.method)[1]),
        rotation_null=canonical(config["rotation_null"]),
        scores=canonical(config["scores"]),
        labels=canonical(config["labels"]),
        benchmark=canonical(config["benchmark"]),
        layer=canonical(config["postprocess"]["layer"]),
        fit_on=canonical(config["postprocess"]["fit_on"]),
    script:
        "../scripts/rotation_null.py"

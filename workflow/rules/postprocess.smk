# Whitening, ICA and the baselines, fitted on the configured fitting set.
include: "postprocess_common.smk"


rule postprocess:
    input:
        wells="<results>/embeddings/{model}/wells.h5ad",
        checked=postprocess_checks,
        fitted=fitted_input,
    output:
        adata="<results>/postprocess/{model}/{method}.h5ad",
    log:
        "<logs>/postprocess/{model}/{method}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("postprocess")
    resources:
        **rule_resources("postprocess"),
    params:
        algorithm=lambda wildcards: canonical(method_spec(wildcards.method)[0]),
        method_params=lambda wildcards: canonical(method_spec(wildcards.method)[1]),
        fit_on=canonical(config["postprocess"]["fit_on"]),
        train_batches=canonical(config["postprocess"]["train_batches"]),
        layer=canonical(config["postprocess"]["layer"]),
    script:
        "../scripts/postprocess.py"

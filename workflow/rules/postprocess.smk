# Whitening, ICA and the baselines, fitted on the configured fitting set.
from phenoica.postprocess.frozen import check_fitted, fitted_files
from phenoica.postprocess.methods import check_fit_on

check_fit_on(config["postprocess"]["methods"], config["postprocess"]["fit_on"])
# Frozen transforms (postprocess.fitted): output name -> an earlier run's stored fit.
FITTED = fitted_files(config["postprocess"]["fitted"], config["postprocess"]["methods"])


def fitted_input(wildcards):
    """The stored fit applied instead of refitting (postprocess.fitted), checked in the dry run."""
    path = FITTED.get(wildcards.method)
    if path is None:
        return []
    check_fitted(
        {wildcards.method: path},
        {wildcards.method: method_spec(wildcards.method)[0]},
        {
            wildcards.method: f"{RESULTS}/postprocess/{wildcards.model}/{wildcards.method}.h5ad"
        },
    )
    return [path]


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

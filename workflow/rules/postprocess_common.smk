# Settings and input functions of the post-processing rules (postprocess.smk); functions only,
# so that the rule file holds rules only.
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

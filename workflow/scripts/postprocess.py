from phenoica.postprocess import run_postprocess
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, run_postprocess, smk.input.wells, out_path=smk.output.adata,
         method=smk.params.algorithm, params=dict(smk.params.method_params),
         fit_on=smk.params.fit_on, layer=smk.params.layer, train_batches=smk.params.train_batches,
         fitted=(list(smk.input.fitted) or [None])[0])

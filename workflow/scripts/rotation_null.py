from phenoica.nulls import run_rotation_null
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
null = dict(smk.params.rotation_null)
run_rule(smk, run_rotation_null, smk.input.wells, smk.input.adata, out_tsv=smk.output.null,
         method=smk.wildcards.method, method_params=dict(smk.params.method_params),
         n_rotations=null["n_rotations"], first_seed=null["first_seed"],
         scores=dict(smk.params.scores), labels=dict(smk.params.labels),
         benchmark=dict(smk.params.benchmark), layer=smk.params.layer, fit_on=smk.params.fit_on,
         relations_path=(list(smk.input.relations) or [None])[0])

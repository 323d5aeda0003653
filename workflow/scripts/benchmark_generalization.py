from phenoica.benchmarks.generalization import run_generalization
from phenoica.config import section_arguments
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, run_generalization, smk.input.wells, out_tsv=smk.output.benchmarks,
         method=smk.params.algorithm, method_params=dict(smk.params.method_params),
         relations_path=(list(smk.input.relations) or [None])[0], layer=smk.params.layer,
         name=smk.wildcards.method, fit_on=smk.params.fit_on, labels=dict(smk.params.labels),
         **section_arguments("benchmark", smk.params.benchmark))

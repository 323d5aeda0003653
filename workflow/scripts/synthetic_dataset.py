from phenoica.benchmarks.synthetic import make_synthetic_dataset
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, make_synthetic_dataset, dataset=smk.wildcards.dataset, out=smk.output.data,
         params=dict(smk.params.synthetic))

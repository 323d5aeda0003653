from phenoica.benchmarks.synthetic import make_synthetic_dataset
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, make_synthetic_dataset, smk.wildcards.dataset, smk.output.data, **dict(smk.params.synthetic))

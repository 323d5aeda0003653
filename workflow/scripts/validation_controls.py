from phenoica.validation import run_validation_controls
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, run_validation_controls, out_controls=smk.output.controls,
         out_checks=smk.output.checks, **dict(smk.params.validation))

from phenoica.benchmarks.synthetic import score_synthetic
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, score_synthetic, smk.input.latents, smk.wildcards.variant, smk.output.scores,
         **dict(smk.params.synthetic))

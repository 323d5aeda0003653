from phenoica.benchmarks.synthetic import score_synthetic
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, score_synthetic, latents=smk.input.latents, model=smk.wildcards.variant,
         out_tsv=smk.output.scores, params=dict(smk.params.synthetic))

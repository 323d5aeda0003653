from phenoica.benchmarks.synthetic import train_synthetic
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, train_synthetic, smk.input.data, smk.wildcards.arch, int(smk.wildcards.seed), smk.output.latents,
         smk.output.weights, **dict(smk.params.synthetic))

from phenoica.benchmarks.synthetic import train_synthetic
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, train_synthetic, dataset_path=smk.input.data, model=smk.wildcards.arch,
         seed=int(smk.wildcards.seed), out_latents=smk.output.latents, out_weights=smk.output.weights,
         params=dict(smk.params.synthetic))

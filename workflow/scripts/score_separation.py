from phenoica.metrics.separation import run_scores
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, run_scores, smk.input.adata, out_tsv=smk.output.scores, method=smk.wildcards.method,
         bio_key=smk.params.labels["biology"], **smk.params.scores)

from phenoica.report import run_method_report
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, run_method_report, smk.input.adata, scores_tsv=smk.input.scores,
         out_umap=smk.output.umap, out_attribution=smk.output.attribution,
         method=smk.wildcards.method, bio_key=smk.params.labels["biology"], seed=smk.params.seed,
         **smk.params.report)

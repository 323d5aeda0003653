from phenoica.benchmarks.identifiability import identifiability_alignment
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, identifiability_alignment, embeddings=list(smk.input.embeddings), seeds=list(smk.params.seeds),
         out_tsv=smk.output.table, out_summary=smk.output.summary, out_png=smk.output.figure,
         **dict(smk.params.settings))

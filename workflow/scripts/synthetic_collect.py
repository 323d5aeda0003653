from phenoica.benchmarks.synthetic import collect_synthetic
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, collect_synthetic, tables=list(smk.input.tables), out_tsv=smk.output.table,
         out_summary=smk.output.summary, out_png=smk.output.figure)

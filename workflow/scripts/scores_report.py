from phenoica.report import run_scores_report
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, run_scores_report, list(smk.input.scores), methods=list(smk.params.methods),
         out_png=smk.output.overview, out_html=smk.output.table)

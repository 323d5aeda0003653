from phenoica.report import run_benchmark_report
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, run_benchmark_report, list(smk.input.benchmarks), methods=list(smk.params.methods),
         out_dir=smk.output.figures, out_html=smk.output.table, tasks=list(smk.params.tasks))

from phenoica.collect import collect_results
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, collect_results, smk.input.wells,
         methods=dict(zip(smk.params.methods, smk.input.methods, strict=True)),
         score_paths=list(smk.input.scores), benchmark_paths=list(smk.input.benchmarks),
         null_paths=list(smk.input.nulls), out_h5ad=smk.output.adata, out_scores=smk.output.scores,
         out_benchmarks=smk.output.benchmarks, out_null=smk.output.null,
         out_summary=smk.output.summary,
         n_bootstrap=smk.params.rotation_null["n_bootstrap"],
         bootstrap_seed=smk.params.rotation_null["bootstrap_seed"])

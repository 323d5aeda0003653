from phenoica.benchmarks.probe import embed_probe_set
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, embed_probe_set, list(smk.input.manifests), out_h5ad=smk.output.probe,
         model=dict(smk.params.model), checkpoint=smk.params.checkpoint, embed=dict(smk.params.embed),
         channels=list(smk.params.channels), layers=smk.params.layers,
         exclude_flagged=smk.params.exclude_flagged)

from phenoica.embed import collect_wells
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, collect_wells, list(smk.input.sites), out_h5ad=smk.output.wells,
         truth_paths=list(smk.input.truth) or None, aggregate=smk.params.aggregate)

from phenoica.profiles import collect_profiles
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
options = {key: value for key, value in dict(smk.params.profiles).items() if key != "path"}
run_rule(smk, collect_profiles, smk.input.table, out_h5ad=smk.output.wells, **options)

from phenoica.config import section_arguments
from phenoica.profiles import collect_profiles
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
# params.profiles: the whole section; its path is this rule's input
run_rule(smk, collect_profiles, smk.input.table, out_h5ad=smk.output.wells,
         **section_arguments("profiles", smk.params.profiles))

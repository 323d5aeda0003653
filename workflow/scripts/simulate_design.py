from phenoica.simulate import write_design
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, write_design, design_path=smk.output.design, relations_path=smk.output.relations,
         params=smk.params.sim, seed=smk.params.seed)

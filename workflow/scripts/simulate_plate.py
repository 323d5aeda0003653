from pathlib import Path

from phenoica.simulate import simulate_plate
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, simulate_plate, plate=smk.wildcards.plate, batch=smk.params.batch,
         images_root=str(Path(smk.output.images).parent), platemap_path=smk.output.platemap,
         truth_path=smk.output.truth, params=smk.params.sim, seed=smk.params.seed)

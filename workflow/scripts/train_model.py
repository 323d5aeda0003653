from pathlib import Path

from phenoica.models import train_model
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
# params.train: the train section (without its workflow-only keys); the seed is the wildcard's
run_rule(smk, train_model, list(smk.input.manifests), out_dir=str(Path(smk.output.weights).parent),
         model=dict(smk.params.model), channels=list(smk.params.channels),
         **{**smk.params.train, "seed": int(smk.wildcards.seed)})

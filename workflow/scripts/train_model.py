from pathlib import Path

from phenoica.models import train_model
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, train_model, list(smk.input.manifests), out_dir=str(Path(smk.output.weights).parent),
         model=dict(smk.params.model), train=dict(smk.params.train),
         channels=list(smk.params.channels), seed=int(smk.wildcards.seed))

from phenoica.embed import embed_plate
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, embed_plate, smk.input.manifest, out_h5ad=smk.output.sites, model=dict(smk.params.model),
         checkpoint=smk.params.checkpoint, channels=list(smk.params.channels),
         exclude_flagged=smk.params.exclude_flagged, **smk.params.embed)

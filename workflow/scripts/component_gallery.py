from phenoica.gallery import run_component_gallery
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, run_component_gallery, smk.input.adata, smk.input.scores, smk.output.folder,
         smk.wildcards.method, smk.params.channels, smk.params.seed,
         list(smk.input.get("manifests", [])), smk.input.get("wells"), **smk.params.gallery)

from phenoica.benchmarks.identifiability import decoder_isometry
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, decoder_isometry, checkpoints=list(smk.params.checkpoints),
         weight_decays=list(smk.params.weight_decays), seeds=list(smk.params.seeds),
         embeddings=list(smk.input.embeddings), manifests=list(smk.input.manifests),
         channels=list(smk.params.channels), out_tsv=smk.output.table, out_png=smk.output.figure,
         **dict(smk.params.settings))

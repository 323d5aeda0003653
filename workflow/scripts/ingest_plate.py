from phenoica.ingest import ingest_plate
from phenoica.workflow import run_rule

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_rule(smk, ingest_plate, plate_row=dict(smk.params.row), channels=list(smk.params.channels),
         manifest_path=smk.output.manifest, qc_path=smk.output.qc, threads=smk.threads,
         **smk.params.ingest, **smk.params.qc)

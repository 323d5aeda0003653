# Raw plates -> one validated manifest (one row per site) and a QC table per plate.


rule ingest_plate:
    input:
        unpack(ingest_inputs),
    output:
        manifest="results/plates/{plate}/manifest.parquet",
        qc="results/plates/{plate}/qc.parquet",
    params:
        row=lambda wildcards: plate_row(wildcards.plate),
        channels=CHANNELS,
        qc=config["qc"],
        ingest=config["ingest"],
    threads: rule_threads("ingest_plate")
    resources:
        **rule_resources("ingest_plate"),
    log:
        "logs/ingest/{plate}.log",
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/ingest_plate.py"


rule ingest:
    input:
        expand("results/plates/{plate}/manifest.parquet", plate=PLATES),
        expand("results/plates/{plate}/qc.parquet", plate=PLATES),

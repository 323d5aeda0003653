# Raw plates -> one validated manifest (one row per site) and a QC table per plate.
# ingest_plate validates into results/plates/{plate}/validated/; publish_plate copies a plate
# that passed to results/plates/{plate}/. Snakemake deletes a job's outputs before running it,
# so a failed re-validation leaves the plate's earlier manifest and QC in place.


rule ingest_plate:
    input:
        unpack(ingest_inputs),
    output:
        manifest="<results>/plates/{plate}/validated/manifest.parquet",
        qc="<results>/plates/{plate}/validated/qc.parquet",
    log:
        "<logs>/ingest/{plate}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("ingest_plate")
    resources:
        **rule_resources("ingest_plate"),
    params:
        row=lambda wildcards: canonical(plate_row(wildcards.plate)),
        channels=canonical(CHANNELS),
        qc=canonical(config["qc"]),
        ingest=canonical(config["ingest"]),
    script:
        "../scripts/ingest_plate.py"


# A plain copy (each file under a temporary name, then renamed): milliseconds per plate on the
# submitting node, where a Python script would start an interpreter for every plate.
rule publish_plate:
    input:
        manifest="<results>/plates/{plate}/validated/manifest.parquet",
        qc="<results>/plates/{plate}/validated/qc.parquet",
    output:
        manifest="<results>/plates/{plate}/manifest.parquet",
        qc="<results>/plates/{plate}/qc.parquet",
    log:
        "<logs>/ingest/{plate}.publish.log",
    localrule: True
    conda:
        "../../envs/core.yaml"
    params:
        # temporary names as phenoica.io.atomic_path makes them (hidden, '.partial'), in the
        # results folder (params get no <results>: Snakemake fills it into file paths only)
        manifest=canonical(
            f"{RESULTS}/plates/{{plate}}/.manifest.parquet.publish.partial"
        ),
        qc=canonical(f"{RESULTS}/plates/{{plate}}/.qc.parquet.publish.partial"),
    shell:
        "(cp {input.manifest:q} {params.manifest:q}"
        " && mv {params.manifest:q} {output.manifest:q}"
        " && cp {input.qc:q} {params.qc:q}"
        " && mv {params.qc:q} {output.qc:q}) 2> {log:q}"


rule ingest:
    input:
        expand("<results>/plates/{plate}/manifest.parquet", plate=PLATES),
        expand("<results>/plates/{plate}/qc.parquet", plate=PLATES),

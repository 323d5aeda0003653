# Per-plate embedding (GPU rule on a cluster), then one well-level AnnData over all plates.
# A precomputed profiles table enters at the same point instead (source: profiles).

if SOURCE == "profiles":

    rule collect_profiles:
        input:
            table=config["profiles"]["path"],
        output:
            wells="<results>/embeddings/{model}/wells.h5ad",
        log:
            "<logs>/collect/{model}_profiles.log",
        conda:
            "../../envs/core.yaml"
        threads: rule_threads("collect_wells")
        resources:
            **rule_resources("collect_wells"),
        params:
            profiles=canonical(config["profiles"]),
        script:
            "../scripts/collect_profiles.py"

else:

    rule embed_plate:
        input:
            manifest="<results>/plates/{plate}/manifest.parquet",
            checkpoint=checkpoint_inputs,
        output:
            sites="<results>/embeddings/{model}/sites/{plate}.h5ad",
        log:
            "<logs>/embed/{model}/{plate}.log",
        conda:
            "../../envs/torch.yaml"
        threads: rule_threads("embed_plate")
        resources:
            **rule_resources("embed_plate"),
        params:
            model=canonical(config["model"]),
            checkpoint=lambda wildcards: canonical(checkpoint_path(wildcards)),
            embed=canonical(config["embed"]),
            channels=canonical(CHANNEL_NAMES),
            exclude_flagged=canonical(config["qc"]["exclude_flagged"]),
        script:
            "../scripts/embed_plate.py"

    rule collect_wells:
        input:
            sites=expand(
                "<results>/embeddings/{{model}}/sites/{plate}.h5ad", plate=PLATES
            ),
            truth=truth_inputs,
        output:
            wells="<results>/embeddings/{model}/wells.h5ad",
        log:
            "<logs>/collect/{model}_wells.log",
        conda:
            "../../envs/core.yaml"
        threads: rule_threads("collect_wells")
        resources:
            **rule_resources("collect_wells"),
        params:
            aggregate=canonical(config["embed"]["aggregate"]),
        script:
            "../scripts/collect_wells.py"


# Target `snakemake embed`: every plate embedded and the well-level table, nothing after them
# (no post-processing, scores or benchmarks).
rule embed:
    input:
        f"<results>/embeddings/{MODEL}/wells.h5ad",
        expand(
            "<results>/embeddings/{model}/sites/{plate}.h5ad",
            model=MODEL,
            plate=PLATES,
        ),

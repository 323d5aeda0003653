# Cross-seed identifiability of the MAE (target: snakemake identifiability).
#
# 1. The MAE is trained with every seed of identifiability.seeds, and with identifiability.sweep_seeds
#    at every weight decay of identifiability.weight_decays (the isometry knob). With no training
#    overrides (identifiability.train: {}) a checkpoint at the main weight decay is the main
#    pipeline's results/models/{model}/seed{seed}, so seed train.seed is shared with `rule all`;
#    otherwise they live under results/identifiability/models/{model}/wd{wd}/seed{seed}.
# 2. Every checkpoint embeds the same probe sites (the plates of identifiability.probe_plates) at
#    every layer.
# 3. alignment.tsv: per layer, subspace dimension k and seed pair, errors after the best
#    permutation / rigid / linear / ICA map, all in the same top-k principal subspace, and each
#    seed's ICA stability at k; alignment_summary.tsv: pair-averaged errors, the ICA efficiency
#    from them and the selected k per layer; isometry.tsv: per checkpoint of the sweep, its
#    decoder's bi-Lipschitz estimate and its rigid alignment error to the other seeds of its
#    weight decay.
include: "identifiability_common.smk"


rule identifiability_train:
    input:
        manifests=train_manifests,
    output:
        weights="<results>/identifiability/models/{model}/wd{wd}/seed{seed}/model.safetensors",
        model_config="<results>/identifiability/models/{model}/wd{wd}/seed{seed}/config.json",
        train_log="<results>/identifiability/models/{model}/wd{wd}/seed{seed}/train_log.tsv",
    log:
        "<logs>/identifiability/train/{model}_wd{wd}_seed{seed}.log",
    wildcard_constraints:
        wd="[0-9][0-9.e+-]*",
    conda:
        "../../envs/torch.yaml"
    threads: rule_threads("identifiability_train")
    resources:
        **rule_resources("identifiability_train"),
    params:
        model=canonical(config["model"]),
        train=lambda wildcards: canonical(
            {**IDENT_TRAIN, "weight_decay": float(wildcards.wd)}
        ),
        channels=canonical(CHANNEL_NAMES),
    script:
        "../scripts/train_model.py"


rule identifiability_embed:
    input:
        manifests=ident_probe_manifests,
        checkpoint=lambda wildcards: ident_checkpoint_files(
            wildcards.model, [(wildcards.wd, wildcards.seed)]
        ),
    output:
        probe="<results>/identifiability/embeddings/{model}/wd{wd}/seed{seed}.h5ad",
    log:
        "<logs>/identifiability/embed/{model}_wd{wd}_seed{seed}.log",
    wildcard_constraints:
        wd="[0-9][0-9.e+-]*",
    conda:
        "../../envs/torch.yaml"
    threads: rule_threads("identifiability_embed")
    resources:
        **rule_resources("identifiability_embed"),
    params:
        model=canonical(config["model"]),
        checkpoint=lambda wildcards: canonical(
            ident_model_dir(wildcards.model, wildcards.wd, wildcards.seed)
        ),
        embed=canonical(config["embed"]),
        layers=canonical(ident_embed_layers()),
        channels=canonical(CHANNEL_NAMES),
        exclude_flagged=canonical(config["qc"]["exclude_flagged"]),
    script:
        "../scripts/identifiability_embed.py"


rule identifiability_alignment:
    input:
        embeddings=[ident_embedding(MODEL, IDENT_WD, seed) for seed in IDENT_SEEDS],
    output:
        table="<results>/identifiability/alignment.tsv",
        summary="<results>/identifiability/alignment_summary.tsv",
        figure="<results>/identifiability/alignment.png",
    log:
        "<logs>/identifiability/alignment.log",
    conda:
        "../../envs/torch.yaml"
    threads: rule_threads("identifiability_alignment")
    resources:
        **rule_resources("identifiability_alignment"),
    params:
        seeds=canonical(IDENT_SEEDS),
        settings=canonical(IDENT_ALIGNMENT),
    script:
        "../scripts/identifiability_alignment.py"


rule identifiability_isometry:
    input:
        checkpoints=ident_checkpoint_files(MODEL, IDENT_SWEEP),
        embeddings=[ident_embedding(MODEL, wd, seed) for wd, seed in IDENT_SWEEP],
        manifests=ident_probe_manifests,
    output:
        table="<results>/identifiability/isometry.tsv",
        figure="<results>/identifiability/isometry.png",
    log:
        "<logs>/identifiability/isometry.log",
    conda:
        "../../envs/torch.yaml"
    threads: rule_threads("identifiability_isometry")
    resources:
        **rule_resources("identifiability_isometry"),
    params:
        checkpoints=canonical(
            [ident_model_dir(MODEL, wd, seed) for wd, seed in IDENT_SWEEP]
        ),
        weight_decays=canonical([float(wd) for wd, _ in IDENT_SWEEP]),
        seeds=canonical([seed for _, seed in IDENT_SWEEP]),
        channels=canonical(CHANNEL_NAMES),
        settings=canonical(IDENT_ISOMETRY),
    script:
        "../scripts/identifiability_isometry.py"


rule identifiability:
    input:
        "<results>/identifiability/alignment.tsv",
        "<results>/identifiability/alignment_summary.tsv",
        "<results>/identifiability/alignment.png",
        "<results>/identifiability/isometry.tsv",
        "<results>/identifiability/isometry.png",

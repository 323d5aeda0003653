# Train the MAE on tiles of every plate (skipped when model.checkpoint names a local checkpoint).


rule train_model:
    input:
        manifests=train_manifests,
    output:
        weights="<results>/models/{model}/seed{seed}/model.safetensors",
        model_config="<results>/models/{model}/seed{seed}/config.json",
        train_log="<results>/models/{model}/seed{seed}/train_log.tsv",
    log:
        "<logs>/train/{model}_seed{seed}.log",
    conda:
        "../../envs/torch.yaml"
    threads: rule_threads("train_model")
    resources:
        **rule_resources("train_model"),
    params:
        model=canonical(config["model"]),
        train=canonical(train_params()),
        channels=canonical(CHANNEL_NAMES),
    script:
        "../scripts/train_model.py"

# Synthetic disentanglement benchmark (target: snakemake synthetic_benchmark): rendered datasets
# with known independent factors; AE, AE+ICA, beta-VAE and beta-TCVAE with the same architecture,
# budget and seeds; InfoM/InfoE/InfoC, MCC and DCI of each (dataset, model, seed).
# AE+ICA scores the AE's codes after whitening + ICA fitted on its training codes, so it adds no
# training job. Each rule gets only the parameters it reads, so changing a scoring parameter
# rescores without retraining.
# Only light modules are imported here (see common.smk); the schema has checked the section.
from phenoica.benchmarks.synthetic_grid import MODELS as SYN_MODELS
from phenoica.benchmarks.synthetic_grid import TRAINED_MODELS as SYN_TRAINABLE
from phenoica.benchmarks.synthetic_grid import base_model
from phenoica.benchmarks.rule_keys import DATASET_KEYS, SCORE_KEYS, TRAIN_KEYS
from phenoica.config import schema_node

SYN = config["synthetic"]
SYN_DATASETS = schema_node("synthetic.datasets")["items"]["enum"]
SYN_DATA = {key: SYN[key] for key in DATASET_KEYS}
SYN_TRAIN = {key: SYN[key] for key in TRAIN_KEYS}
SYN_SCORE = {key: SYN[key] for key in SCORE_KEYS}


wildcard_constraints:
    dataset="|".join(SYN_DATASETS),
    arch="|".join(SYN_TRAINABLE),
    variant="|".join(SYN_MODELS),


rule synthetic_dataset:
    output:
        data="<results>/synthetic/data/{dataset}.npz",
    log:
        "<logs>/synthetic/data_{dataset}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("synthetic_dataset")
    resources:
        **rule_resources("synthetic_dataset"),
    params:
        synthetic=canonical(SYN_DATA),
    script:
        "../scripts/synthetic_dataset.py"


rule synthetic_train:
    input:
        data="<results>/synthetic/data/{dataset}.npz",
    output:
        latents="<results>/synthetic/latents/{dataset}/{arch}/seed{seed}.h5ad",
        weights="<results>/synthetic/models/{dataset}/{arch}/seed{seed}.safetensors",
    log:
        "<logs>/synthetic/train_{dataset}_{arch}_seed{seed}.log",
    conda:
        "../../envs/torch.yaml"
    threads: rule_threads("synthetic_train")
    resources:
        **rule_resources("synthetic_train"),
    params:
        synthetic=canonical(SYN_TRAIN),
    script:
        "../scripts/synthetic_train.py"


rule synthetic_score:
    input:
        latents=lambda wildcards: (
            f"<results>/synthetic/latents/{wildcards.dataset}/"
            f"{base_model(wildcards.variant)}/seed{wildcards.seed}.h5ad"
        ),
    output:
        scores="<results>/synthetic/scores/{dataset}/{variant}/seed{seed}.tsv",
    log:
        "<logs>/synthetic/score_{dataset}_{variant}_seed{seed}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("synthetic_score")
    resources:
        **rule_resources("synthetic_score"),
    params:
        synthetic=canonical(SYN_SCORE),
    script:
        "../scripts/synthetic_score.py"


rule synthetic_collect:
    input:
        tables=expand(
            "<results>/synthetic/scores/{dataset}/{variant}/seed{seed}.tsv",
            dataset=SYN["datasets"],
            variant=SYN["models"],
            seed=SYN["seeds"],
        ),
    output:
        table="<results>/synthetic/disentanglement.tsv",
        summary="<results>/synthetic/summary.tsv",
        figure="<results>/synthetic/disentanglement.png",
    log:
        "<logs>/synthetic/collect.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("synthetic_collect")
    resources:
        **rule_resources("synthetic_collect"),
    script:
        "../scripts/synthetic_collect.py"


rule synthetic_benchmark:
    input:
        "<results>/synthetic/disentanglement.tsv",
        "<results>/synthetic/summary.tsv",
        "<results>/synthetic/disentanglement.png",

# Cross-seed identifiability of the MAE (target: snakemake identifiability).
#
# 1. The MAE is trained with every seed of identifiability.seeds, and with identifiability.sweep_seeds
#    at every weight decay of identifiability.weight_decays (the isometry knob). With no training
#    overrides (identifiability.train: {}) a checkpoint at the main weight decay is the main
#    pipeline's results/models/{model}/seed{seed}, so seed train.seed is shared with `rule all`;
#    otherwise they live under results/identifiability/models/{model}/wd{wd}/seed{seed}.
# 2. Every checkpoint embeds the same probe sites (the plates of identifiability.probe_plates) at
#    every layer.
# 3. alignment.tsv: per layer and seed pair, errors after the best permutation / rigid / linear /
#    ICA map; isometry.tsv: per checkpoint of the sweep, its decoder's bi-Lipschitz estimate and
#    its rigid alignment error to the other seeds of its weight decay.
from phenoica.benchmarks.identifiability import DEFAULT_PARAMS as IDENT_DEFAULTS
from phenoica.benchmarks.identifiability import identifiability_params
from phenoica.errors import ConfigError
from phenoica.models.train import resolve_train_config

IDENT = config["identifiability"]
# the analysis parameters (phenoica.benchmarks.identifiability.DEFAULT_PARAMS), checked now
IDENT_PARAMS = {key: IDENT[key] for key in IDENT_DEFAULTS}
identifiability_params(IDENT_PARAMS)


def wd_label(weight_decay):
    """A weight decay as it appears in paths (0.05 -> "0.05", 1e-05 -> "1e-05")."""
    return f"{float(weight_decay):g}"


def _ident_train():
    overrides = dict(IDENT["train"])
    for key in ("plates", "seed", "weight_decay"):
        if key in overrides:
            raise ConfigError(f"config key identifiability.train.{key}: not an override here (the "
                              "training plates are train.plates, the seeds identifiability.seeds and "
                              "the weight decays identifiability.weight_decays)")
    merged = {**train_params(), **overrides}
    resolve_train_config(merged)  # unknown keys or bad values stop the dry run
    return merged


IDENT_TRAIN = _ident_train()
IDENT_SHARES_MAIN = IDENT_TRAIN == train_params()
IDENT_WD = wd_label(IDENT_TRAIN["weight_decay"])
IDENT_SEEDS = [int(seed) for seed in IDENT["seeds"]]
IDENT_SWEEP_SEEDS = [int(seed) for seed in (IDENT["sweep_seeds"] or IDENT["seeds"])]
IDENT_WDS = [wd_label(wd) for wd in IDENT["weight_decays"]]
if len(set(IDENT_WDS)) != len(IDENT_WDS):
    raise ConfigError(f"config key identifiability.weight_decays: repeated values {IDENT['weight_decays']}")
# (weight decay, seed) of every checkpoint in the sweep
IDENT_SWEEP = [(wd, seed) for wd in IDENT_WDS for seed in IDENT_SWEEP_SEEDS]


def ident_model_dir(model, wd, seed):
    """Checkpoint folder of one (weight decay, seed): the main model's when training is shared."""
    if IDENT_SHARES_MAIN and wd == IDENT_WD:
        return f"results/models/{model}/seed{seed}"
    return f"results/identifiability/models/{model}/wd{wd}/seed{seed}"


def ident_checkpoint_files(model, pairs):
    return [f"{ident_model_dir(model, wd, seed)}/{name}" for wd, seed in pairs
            for name in ("model.safetensors", "config.json")]


def ident_embedding(model, wd, seed):
    return f"results/identifiability/embeddings/{model}/wd{wd}/seed{seed}.h5ad"


def ident_probe_manifests(wildcards):
    if SOURCE == "profiles":
        raise ConfigError("config key source: identifiability trains and embeds an MAE on images; "
                          "source 'profiles' has none")
    plates = IDENT["probe_plates"] or PLATES
    unknown = sorted(set(plates) - set(PLATES))
    if unknown:
        raise ConfigError(f"config key identifiability.probe_plates: plates not in {config['plates']}: {unknown}")
    return expand("results/plates/{plate}/manifest.parquet", plate=plates)


def ident_embed_layers():
    """Blocks every probe embedding holds: all of them unless identifiability.layers names some."""
    if IDENT["layers"] is None:
        return "all"
    return sorted(set(IDENT["layers"]) | ({IDENT["layer"]} if IDENT["layer"] else set()))


rule identifiability_train:
    input:
        manifests=train_manifests,
    output:
        weights="results/identifiability/models/{model}/wd{wd}/seed{seed}/model.safetensors",
        model_config="results/identifiability/models/{model}/wd{wd}/seed{seed}/config.json",
        train_log="results/identifiability/models/{model}/wd{wd}/seed{seed}/train_log.tsv",
    wildcard_constraints:
        wd="[0-9][0-9.e+-]*",
    params:
        model=config["model"],
        train=lambda wildcards: {**IDENT_TRAIN, "weight_decay": float(wildcards.wd)},
        channels=CHANNEL_NAMES,
    threads: rule_threads("identifiability_train")
    resources:
        **rule_resources("identifiability_train"),
    log:
        "logs/identifiability/train/{model}_wd{wd}_seed{seed}.log",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/train_model.py"


rule identifiability_embed:
    input:
        manifests=ident_probe_manifests,
        checkpoint=lambda wildcards: ident_checkpoint_files(wildcards.model, [(wildcards.wd, wildcards.seed)]),
    output:
        probe="results/identifiability/embeddings/{model}/wd{wd}/seed{seed}.h5ad",
    wildcard_constraints:
        wd="[0-9][0-9.e+-]*",
    params:
        model=config["model"],
        checkpoint=lambda wildcards: ident_model_dir(wildcards.model, wildcards.wd, wildcards.seed),
        embed=config["embed"],
        layers=ident_embed_layers(),
        channels=CHANNEL_NAMES,
        exclude_flagged=config["qc"]["exclude_flagged"],
    threads: rule_threads("identifiability_embed")
    resources:
        **rule_resources("identifiability_embed"),
    log:
        "logs/identifiability/embed/{model}_wd{wd}_seed{seed}.log",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/identifiability_embed.py"


rule identifiability_alignment:
    input:
        embeddings=[ident_embedding(MODEL, IDENT_WD, seed) for seed in IDENT_SEEDS],
    output:
        table="results/identifiability/alignment.tsv",
        figure="results/identifiability/alignment.png",
    params:
        seeds=IDENT_SEEDS,
        params=IDENT_PARAMS,
    threads: rule_threads("identifiability_alignment")
    resources:
        **rule_resources("identifiability_alignment"),
    log:
        "logs/identifiability/alignment.log",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/identifiability_alignment.py"


rule identifiability_isometry:
    input:
        checkpoints=ident_checkpoint_files(MODEL, IDENT_SWEEP),
        embeddings=[ident_embedding(MODEL, wd, seed) for wd, seed in IDENT_SWEEP],
        manifests=ident_probe_manifests,
    output:
        table="results/identifiability/isometry.tsv",
        figure="results/identifiability/isometry.png",
    params:
        checkpoints=[ident_model_dir(MODEL, wd, seed) for wd, seed in IDENT_SWEEP],
        weight_decays=[float(wd) for wd, _ in IDENT_SWEEP],
        seeds=[seed for _, seed in IDENT_SWEEP],
        channels=CHANNEL_NAMES,
        params=IDENT_PARAMS,
    threads: rule_threads("identifiability_isometry")
    resources:
        **rule_resources("identifiability_isometry"),
    log:
        "logs/identifiability/isometry.log",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/identifiability_isometry.py"


rule identifiability:
    input:
        "results/identifiability/alignment.tsv",
        "results/identifiability/alignment.png",
        "results/identifiability/isometry.tsv",
        "results/identifiability/isometry.png",

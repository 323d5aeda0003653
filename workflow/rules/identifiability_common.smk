# Settings and input functions of the identifiability rules (identifiability.smk); functions
# only, so that the rule file holds rules only. The config schema has checked every setting;
# only light modules are imported here (see common.smk).
from phenoica.benchmarks.rule_keys import ALIGNMENT_KEYS, ISOMETRY_KEYS
from phenoica.config import check_section
from phenoica.errors import ConfigError

IDENT = config["identifiability"]
# the analysis settings each rule reads (checked by the schema); canonical() sorts them
IDENT_ALIGNMENT = {key: IDENT[key] for key in ALIGNMENT_KEYS}
IDENT_ISOMETRY = {key: IDENT[key] for key in ISOMETRY_KEYS}


def wd_label(weight_decay):
    """A weight decay as it appears in paths (0.05 -> "0.05", 1e-05 -> "1e-05")."""
    return f"{float(weight_decay):g}"


def _ident_train():
    overrides = dict(IDENT["train"])
    for key in ("plates", "seed", "weight_decay"):
        if key in overrides:
            raise ConfigError(
                f"config key identifiability.train.{key}: not an override here (the "
                "training plates are train.plates, the seeds identifiability.seeds and "
                "the weight decays identifiability.weight_decays)"
            )
    merged = {**train_params(), **overrides}
    # unknown keys or bad values stop the dry run
    check_section(overrides, "train", key="identifiability.train")
    return merged


IDENT_TRAIN = _ident_train()
IDENT_SHARES_MAIN = IDENT_TRAIN == train_params()
IDENT_WD = wd_label(IDENT_TRAIN["weight_decay"])
IDENT_SEEDS = [int(seed) for seed in IDENT["seeds"]]
IDENT_SWEEP_SEEDS = [int(seed) for seed in (IDENT["sweep_seeds"] or IDENT["seeds"])]
IDENT_WDS = [wd_label(wd) for wd in IDENT["weight_decays"]]
if len(set(IDENT_WDS)) != len(IDENT_WDS):
    raise ConfigError(
        f"config key identifiability.weight_decays: repeated values {IDENT['weight_decays']}"
    )
# (weight decay, seed) of every checkpoint in the sweep
IDENT_SWEEP = [(wd, seed) for wd in IDENT_WDS for seed in IDENT_SWEEP_SEEDS]


def ident_model_dir(model, wd, seed):
    """Checkpoint folder of one (weight decay, seed): the main model's when training is shared."""
    if IDENT_SHARES_MAIN and wd == IDENT_WD:
        return f"{RESULTS}/models/{model}/seed{seed}"
    return f"{RESULTS}/identifiability/models/{model}/wd{wd}/seed{seed}"


def ident_checkpoint_files(model, pairs):
    return [
        f"{ident_model_dir(model, wd, seed)}/{name}"
        for wd, seed in pairs
        for name in ("model.safetensors", "config.json")
    ]


def ident_embedding(model, wd, seed):
    return f"<results>/identifiability/embeddings/{model}/wd{wd}/seed{seed}.h5ad"


def ident_probe_manifests(wildcards):
    if SOURCE == "profiles":
        raise ConfigError(
            "config key source: identifiability trains and embeds an MAE on images; "
            "source 'profiles' has none"
        )
    return plate_manifests(IDENT["probe_plates"], "identifiability.probe_plates")


def ident_embed_layers():
    """Blocks every probe embedding holds: all of them unless identifiability.layers names some."""
    if IDENT["layers"] is None:
        return "all"
    return sorted(
        set(IDENT["layers"]) | ({IDENT["layer"]} if IDENT["layer"] else set())
    )

# Shared settings and input functions. Functions only; rules live in the other files.
# Imports here run on every Snakemake start (each dry run, each cluster job): only light modules
# (no torch, anndata, scipy; tests/test_startup.py checks it).
import os

from phenoica.config import canonical, section_arguments, validate_config
from phenoica.identifiers import IDENTIFIER_PATTERN as IDENTIFIER
from phenoica.identifiers import METHOD_NAME_PATTERN as METHOD_NAME
from phenoica.io.layouts import parse_channels
from phenoica.preflight import DataChecks
from phenoica.workflow import check_results_folder, results_data

# the schema next to these rules, wherever the Snakefile that includes them lives
validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

# Every output of this config goes under RESULTS (config key results), every log under LOGS: the
# rules' paths start with <results>/ and <logs>/ (Snakemake pathvars, set in the Snakefile), and
# Python code that builds a path for params uses RESULTS. A folder that holds the outputs of other
# data is refused (phenoica.workflow.check_results_folder).
RESULTS = os.path.normpath(config["results"])
LOGS = f"{RESULTS}/logs"
RESULTS_DATA = results_data(config)
check_results_folder(RESULTS, RESULTS_DATA)

SOURCE = config["source"]
SEED = config["seed"]
SIM_ROOT = config["simulate"]["root"]
CHANNELS = config["channels"]
CHANNEL_NAMES = [channel["name"] for channel in CHANNELS]
# parsed once (not once per plate by the input functions that list image files)
CHANNEL_SPECS = parse_channels(CHANNELS)
MODEL = config["model"]["id"]
# sorted: the methods are a set (their order in the config means nothing, so reordering them
# changes no job and no table)
METHODS = sorted(config["postprocess"]["methods"])


def _load_sheet():
    if SOURCE == "profiles":
        return None
    if not config["plates"]:
        from phenoica.errors import ConfigError

        raise ConfigError(
            f"config key plates: with source {SOURCE!r} name the plate sheet (TSV, one "
            "row per plate: plate, batch, layout, path, platemap; README 'Your own plates')"
        )
    from phenoica.sheet import read_plate_sheet

    # simulated plates are written by the workflow itself, so their files may not exist yet
    return read_plate_sheet(
        config["plates"], channels=CHANNELS, check_files=(SOURCE != "simulate")
    )


def _check_simulated_paths(sheet):
    """Simulated plates must point where the simulator writes, or ingest would read nothing."""
    from phenoica.errors import ConfigError

    for row in sheet.to_dict("records"):
        expected = {
            "layout": "rxrx",
            "path": f"{SIM_ROOT}/images",
            "platemap": f"{SIM_ROOT}/platemaps/{row['plate']}.csv",
        }
        for column, value in expected.items():
            if str(row[column]).rstrip("/") != value:
                raise ConfigError(
                    f"{config['plates']}: plate {row['plate']}: with source 'simulate' the "
                    f"{column!r} column must be {value!r} (got {row[column]!r})"
                )


SHEET = _load_sheet()
if SOURCE == "simulate":
    _check_simulated_paths(SHEET)
PLATES = [] if SHEET is None else list(SHEET["plate"])
PLATE_ROWS = (
    {} if SHEET is None else {row["plate"]: row for row in SHEET.to_dict("records")}
)


def plate_row(plate):
    return PLATE_ROWS[plate]


# What the config names in the data (plate-map and profile columns, channel tokens, batches, wells
# per fit) is checked while the DAG is built, for the rules that need it: each input function
# below returns no file and raises a ConfigError naming the key, the file and what was found.
CHECKS = DataChecks(config, list(PLATE_ROWS.values()))
if SOURCE == "profiles":
    CHECKS.columns  # the profiles table's header has every column the profiles section names


def postprocess_checks(wildcards):
    CHECKS.postprocess(wildcards.method)
    return []


def score_checks(wildcards):
    CHECKS.scores()
    return []


def benchmark_checks(wildcards):
    CHECKS.benchmark(wildcards.method)
    return []


def figure_checks(wildcards):
    CHECKS.figures()
    return []


def ingest_inputs(wildcards):
    """The plate map and every raw image of one plate, so touching one image reruns that plate.
    The folder is listed once: the same scan gives the channel tokens CHECKS.ingest checks.
    """
    row = plate_row(wildcards.plate)
    if SOURCE == "simulate":
        CHECKS.ingest(row)
        return {
            "platemap": f"{SIM_ROOT}/platemaps/{wildcards.plate}.csv",
            "images": f"{SIM_ROOT}/images/{wildcards.plate}",
        }
    from phenoica.ingest import plate_image_files

    tokens = set()
    images = plate_image_files(row, CHANNEL_SPECS, tokens=tokens)
    CHECKS.ingest(row, tokens)
    return {"platemap": row["platemap"], "images": images}


def plate_manifests(plates, key):
    """Manifests of ``plates`` (config key ``key``; empty or null = every plate of the sheet)."""
    from phenoica.errors import ConfigError

    plates = plates or PLATES
    unknown = sorted(set(plates) - set(PLATES))
    if unknown:
        raise ConfigError(
            f"config key {key}: plates not in {config['plates']}: {unknown}"
        )
    return expand("<results>/plates/{plate}/manifest.parquet", plate=plates)


def train_manifests(wildcards):
    """Manifests of the training plates (a fixed list, so new plates do not trigger retraining)."""
    return plate_manifests(config["train"]["plates"], "train.plates")


def train_params():
    """The train section as train_model takes it (without the workflow-only plate list)."""
    train = section_arguments("train", config["train"])
    train["exclude_flagged"] = (
        train["exclude_flagged"] or config["qc"]["exclude_flagged"]
    )
    return train


def checkpoint_inputs(wildcards):
    """Trained weights of this model (or nothing when a local checkpoint is configured)."""
    if config["model"]["checkpoint"]:
        return []
    folder = f"{RESULTS}/models/{wildcards.model}/seed{config['train']['seed']}"
    return [f"{folder}/model.safetensors", f"{folder}/config.json"]


def checkpoint_path(wildcards):
    if config["model"]["checkpoint"]:
        return config["model"]["checkpoint"]
    return f"{RESULTS}/models/{wildcards.model}/seed{config['train']['seed']}"


def truth_inputs(wildcards):
    if SOURCE != "simulate":
        return []
    return expand(f"{SIM_ROOT}/truth/{{plate}}.tsv", plate=PLATES)


def relations_inputs(wildcards):
    if SOURCE == "simulate":
        return [f"{SIM_ROOT}/relations.tsv"]
    path = config["benchmark"].get("relations")
    return [path] if path else []


def method_spec(method):
    """(algorithm, parameters) of a configured post-processing output name."""
    spec = dict(config["postprocess"]["methods"][method])
    return spec.pop("method", method), spec


# Resources of each job: defaults here, overridden by config["resources"][rule]. Memory grows with
# the attempt number, so a job retried after running out of memory asks for more.
DEFAULT_RESOURCES = {
    "simulate_plate": {"threads": 1, "mem_mb": 1000, "runtime": 10},
    "ingest_plate": {"threads": 1, "mem_mb": 2000, "runtime": 20},
    "train_model": {"threads": 2, "mem_mb": 4000, "runtime": 60},
    "embed_plate": {"threads": 2, "mem_mb": 4000, "runtime": 30},
    "collect_wells": {"threads": 1, "mem_mb": 4000, "runtime": 20},
    "postprocess": {"threads": 2, "mem_mb": 4000, "runtime": 30},
    "score_separation": {"threads": 2, "mem_mb": 4000, "runtime": 30},
    "benchmark_generalization": {"threads": 2, "mem_mb": 4000, "runtime": 60},
    "rotation_null": {"threads": 2, "mem_mb": 4000, "runtime": 60},
    "validation_controls": {"threads": 2, "mem_mb": 4000, "runtime": 30},
    "method_figures": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "scores_report": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "benchmark_report": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "component_gallery": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    # identifiability: train and embed are GPU rules on a cluster (resources: {rule: {gpu: 1}})
    "identifiability_train": {"threads": 2, "mem_mb": 4000, "runtime": 60},
    "identifiability_embed": {"threads": 2, "mem_mb": 4000, "runtime": 30},
    "identifiability_alignment": {"threads": 2, "mem_mb": 4000, "runtime": 60},
    "identifiability_isometry": {"threads": 2, "mem_mb": 4000, "runtime": 30},
    # synthetic benchmark: small CPU models, one thread per job so jobs run side by side
    "synthetic_dataset": {"threads": 1, "mem_mb": 2000, "runtime": 20},
    "synthetic_train": {"threads": 1, "mem_mb": 3000, "runtime": 60},
    "synthetic_score": {"threads": 1, "mem_mb": 3000, "runtime": 30},
    "synthetic_collect": {"threads": 1, "mem_mb": 2000, "runtime": 10},
}


def rule_threads(rule):
    spec = {**DEFAULT_RESOURCES.get(rule, {}), **config["resources"].get(rule, {})}
    return spec.get("threads", 1)


def rule_resources(rule):
    spec = {
        **DEFAULT_RESOURCES.get(rule, {"mem_mb": 2000, "runtime": 30}),
        **config["resources"].get(rule, {}),
    }
    base_mem = spec.get("mem_mb", 2000)
    resources = {
        "mem_mb": lambda wildcards, attempt: base_mem * attempt,
        "runtime": spec.get("runtime", 30),
    }
    for key in ("gpu", "cpus_per_gpu"):
        if spec.get(key):
            resources[key] = spec[key]
    return resources

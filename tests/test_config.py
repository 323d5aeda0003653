"""The config schema: defaults, and errors that name the key path and the allowed values."""

import re
from pathlib import Path

import pytest
import yaml

from phenoica.config import load_config, validate_config
from phenoica.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def test_demo_config_is_valid_and_gets_defaults():
    config = load_config(ROOT / "config" / "config.yaml", SCHEMA)
    assert config["source"] == "simulate"
    assert config["postprocess"]["fit_on"] == "all"
    assert config["embed"]["aggregate"] in {"mean", "median"}
    assert config["resources"] == {}


@pytest.mark.parametrize("example", sorted((ROOT / "config" / "examples").glob("*.yaml")))
def test_example_configs_are_complete_or_layers(example):
    """`snakemake --configfile <example>` reads the example alone (the demo's config/config.yaml
    only when no --configfile is given): an example that names its source is a complete config;
    one that does not (identifiability_full.yaml) is a layer, merged key by key over a complete
    config (`--configfile base.yaml layer.yaml`), and says so."""
    extra = yaml.safe_load(example.read_text())
    if "source" in extra:
        validate_config(extra, SCHEMA)
        return

    def merge(a, b):
        for key, value in b.items():
            if isinstance(value, dict) and isinstance(a.get(key), dict):
                merge(a[key], value)
            else:
                a[key] = value
        return a

    assert "--configfile config/config.yaml " + str(example.relative_to(ROOT)) in example.read_text()
    bases = [ROOT / "config" / "config.yaml", *(p for p in (ROOT / "config" / "examples").glob("*.yaml")
                                               if "source" in yaml.safe_load(p.read_text()))]
    for base in bases:
        validate_config(merge(yaml.safe_load(base.read_text()), extra), SCHEMA)


def test_enum_error_names_key_path_and_allowed_values():
    with pytest.raises(ConfigError) as info:
        validate_config({"postprocess": {"fit_on": "everything"}}, SCHEMA)
    message = str(info.value)
    assert "postprocess.fit_on" in message
    assert "'all'" in message and "'controls'" in message and "'train_batches'" in message


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as info:
        validate_config({"modle": {}}, SCHEMA)
    assert "modle" in str(info.value) and "allowed keys" in str(info.value)


def test_all_errors_reported_together():
    with pytest.raises(ConfigError) as info:
        validate_config({"seed": -1, "source": "images"}, SCHEMA)
    assert "seed" in str(info.value) and "source" in str(info.value)


def test_unreadable_config_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("source: [unclosed")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(bad, SCHEMA)


# --- one source of truth for defaults ----------------------------------------------------------
# The function(s) implementing a config section take its keys as keyword-only arguments WITHOUT
# defaults (the schema holds them) and no other keyword-only arguments; workflow-only keys
# (x-workflow-only in the schema: inputs, paths) are no arguments. A section may be spread over
# several functions (every key must reach one) and a function may implement several sections.
# Functions are named "module:function" so that collecting this file imports no torch.
SECTION_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "train": ("phenoica.models.train:train_model", "phenoica.models.train:run_training"),
    # embed_plate records every key (aggregate too); collect_wells aggregates sites to wells
    "embed": ("phenoica.embed:embed_plate", "phenoica.embed:embed_sites", "phenoica.embed:collect_wells"),
    "ingest": ("phenoica.ingest:ingest_plate",),
    "qc": ("phenoica.ingest:ingest_plate",),
    "report": ("phenoica.report:run_method_report",),
    "gallery": ("phenoica.gallery:run_component_gallery",),
    "scores": ("phenoica.metrics.separation:run_scores", "phenoica.metrics.separation:compute_scores"),
    "profiles": ("phenoica.profiles:collect_profiles", "phenoica.profiles:load_profiles"),
    "validation": ("phenoica.validation:run_validation_controls",),
    # run_generalization passes the section on to evaluate_method (**section)
    "benchmark": ("phenoica.benchmarks.generalization:evaluate_method",),
    "identifiability": ("phenoica.benchmarks.identifiability:alignment_table",
                        "phenoica.benchmarks.identifiability:summarize_alignment",
                        "phenoica.benchmarks.identifiability:isometry_table"),
    "synthetic": ("phenoica.benchmarks.synthetic:run_synthetic_benchmark",),
}
# Sections whose values reach the package in another form, and why.
OTHER_SECTIONS: dict[str, str] = {
    "simulate": "root: where the workflow writes (workflow-only); params: overrides of "
                "phenoica.simulate.DEFAULT_PARAMS, passed whole as params=",
    "model": "passed whole as model= (train_model, embed_plate, load_encoder); checkpoint picks the "
             "rule inputs",
    "labels": "routed by the workflow: biology -> bio_key of run_scores and run_method_report, and the "
              "benchmark's labels",
    "postprocess": "methods: per-method parameters (class defaults, METHOD_PARAM_DOCS); fit_on, layer "
                   "and train_batches: passed whole to run_postprocess (not converted yet); fitted: "
                   "one stored fit file per output, a rule input (fitted= of run_postprocess)",
    "resources": "read by the workflow (threads, memory, GPUs of each rule)",
    "rotation_null": "split by the workflow: n_rotations and first_seed -> run_rotation_null (one null "
                     "per PCA+Rand output), n_bootstrap and bootstrap_seed -> collect_results (the "
                     "summary's intervals)",
}


def _function(name: str):
    import importlib

    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _keyword_only(func) -> dict:
    import inspect

    return {name: param for name, param in inspect.signature(func).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY}


def _section_keys(section: str) -> set[str]:
    from phenoica.config import schema_node, workflow_keys

    return set(schema_node(section)["properties"]) - set(workflow_keys(section))


def test_every_config_section_is_accounted_for():
    from phenoica.config import SCHEMA_DIR, load_schema

    schema = load_schema(SCHEMA_DIR / "config.schema.yaml")
    sections = {name for name, spec in schema["properties"].items() if spec.get("type") == "object"}
    assert not set(SECTION_FUNCTIONS) & set(OTHER_SECTIONS)
    assert set(SECTION_FUNCTIONS) | set(OTHER_SECTIONS) == sections


@pytest.mark.parametrize("section", sorted(SECTION_FUNCTIONS))
def test_section_keys_are_the_keyword_only_arguments_of_its_functions(section):
    from phenoica.config import schema_defaults

    keys, reached = _section_keys(section), set()
    for name in SECTION_FUNCTIONS[section]:
        params = _keyword_only(_function(name))
        sections = [s for s, names in SECTION_FUNCTIONS.items() if name in names]
        allowed = set().union(*(_section_keys(s) for s in sections))
        extra = set(params) - allowed
        assert not extra, f"{name}: keyword-only arguments {sorted(extra)} are no key of {sections}"
        with_default = sorted(p for p, param in params.items() if param.default is not param.empty)
        assert not with_default, f"{name}: defaults of {with_default} belong in the schema"
        reached |= set(params) & keys
    assert reached == keys, f"keys of {section} no function takes: {sorted(keys - reached)}"
    assert set(schema_defaults(section)) == keys  # what callers outside the workflow pass


def test_workflow_only_keys_are_left_out_of_the_section_defaults():
    from phenoica.config import schema_defaults, section_arguments, workflow_keys

    assert workflow_keys("train") == ["plates"] and workflow_keys("profiles") == ["path"]
    assert "plates" not in schema_defaults("train") and "plates" in validate_config({}, SCHEMA)["train"]
    assert section_arguments("train", {"plates": ["P1"], "epochs": 2}) == {"epochs": 2}


@pytest.mark.parametrize(("section", "value", "key"), [
    # what the resolve_* functions used to check, now the schema's job alone
    ("train", {"epochz": 1}, "train"), ("train", {"batch_size": 0}, "train.batch_size"),
    ("train", {"lr": 0}, "train.lr"), ("train", {"precision": "fp16"}, "train.precision"),
    ("train", {"nproc": 0}, "train.nproc"), ("train", {"nproc": "all"}, "train.nproc"),
    ("train", {"normalization": "zscore"}, "train.normalization"),
    ("embed", {"stridee": 3}, "embed"), ("embed", {"stride": 0}, "embed.stride"),
    ("embed", {"pooling": "max"}, "embed.pooling"), ("embed", {"aggregate": "sum"}, "embed.aggregate"),
    ("embed", {"num_workers": -1}, "embed.num_workers"),
    ("qc", {"focus": 1}, "qc"), ("qc", {"max_zero_fraction": 1.5}, "qc.max_zero_fraction"),
    ("qc", {"saturation_value": 0}, "qc.saturation_value"), ("qc", {"exclude_flagged": "yes"}, "qc.exclude_flagged"),
    ("report", {"max_well": 50}, "report"), ("report", {"embedding": "tsne"}, "report.embedding"),
    ("report", {"max_wells": 5}, "report.max_wells"), ("report", {"color": "batch"}, "report.color"),
    ("report", {"color": []}, "report.color"),
    ("scores", {"knn": 3}, "scores"), ("scores", {"margin": 0.5}, "scores.margin"),
    ("identifiability", {"k": "many"}, "identifiability.k"),
    ("identifiability", {"linear_ridge": "gcv"}, "identifiability.linear_ridge"),
    ("synthetic", {"image_size": 24}, "synthetic.image_size"),
])
def test_the_schema_rejects_bad_section_values(section, value, key):
    with pytest.raises(ConfigError, match=rf"config key {re.escape(key)}[.:]"):
        validate_config({section: value}, SCHEMA)


def test_a_section_elsewhere_is_checked_against_the_schema():
    from phenoica.config import check_section

    check_section({"epochs": 3}, "train", key="identifiability.train")
    with pytest.raises(ConfigError, match=r"identifiability\.train: .*'epochz'"):
        check_section({"epochz": 3}, "train", key="identifiability.train")
    with pytest.raises(ConfigError, match=r"identifiability\.train\.epochs: 0"):
        check_section({"epochs": 0}, "train", key="identifiability.train")


def test_every_config_key_is_documented():
    from phenoica.config import SCHEMA_DIR, load_schema, undocumented_keys

    assert undocumented_keys(load_schema(SCHEMA_DIR / "config.schema.yaml")) == []


def test_config_readme_is_generated_from_the_schema():
    """config/README.md is `python -m phenoica.config config/README.md`; regenerate it after
    changing the schema, the simulator's parameters or a post-processing method."""
    from phenoica.config import config_reference

    readme = Path(__file__).resolve().parents[1] / "config" / "README.md"
    assert readme.read_text() == config_reference(), "config/README.md is out of date"


def test_config_reference_lists_every_key_and_method():
    from phenoica.config import SCHEMA_DIR, config_reference, load_schema
    from phenoica.postprocess.methods import METHOD_NAMES
    from phenoica.simulate.params import DEFAULT_PARAMS

    text = config_reference()
    schema = load_schema(SCHEMA_DIR / "config.schema.yaml")
    for name, spec in schema["properties"].items():
        assert f"`{name}" in text
        for key in spec.get("properties", {}):
            assert f"`{name}.{key}`" in text
    for key in DEFAULT_PARAMS:
        assert f"`simulate.params.{key}`" in text
    for method in METHOD_NAMES:
        assert f"| `{method}` |" in text


def test_schema_defaults_of_a_section_and_of_nested_objects():
    from phenoica.config import schema_defaults

    bench = schema_defaults("benchmark")
    assert bench["n_folds"] == 5 and bench["tasks"][0] == "auroc"
    assert schema_defaults("synthetic")["beta"] == {"beta_vae": 4.0, "beta_tcvae": 6.0}
    # a fresh copy every call: callers may change it
    bench["n_folds"] = 99
    assert schema_defaults("benchmark")["n_folds"] == 5
    with pytest.raises(ConfigError, match="no section"):
        schema_defaults("no_such_section")


def test_the_identifier_patterns_are_written_once():
    """phenoica.identifiers defines them; the schemas get them through $defs, the Snakefile
    through common.smk."""
    from phenoica.config import SCHEMA_DIR, load_schema
    from phenoica.identifiers import IDENTIFIER_PATTERN, METHOD_NAME_PATTERN
    from phenoica.sheet import load_plate_schema

    for pattern in (IDENTIFIER_PATTERN, METHOD_NAME_PATTERN):
        files = [ROOT / "Snakefile", *(ROOT / "src").rglob("*.py"), *(ROOT / "workflow").rglob("*")]
        written = sorted(str(path.relative_to(ROOT)) for path in files if path.is_file()
                         and path.suffix in {".py", ".smk", ".yaml", ""} and pattern in path.read_text())
        assert written == ["src/phenoica/identifiers.py"], pattern
    for schema in (load_schema(SCHEMA_DIR / "config.schema.yaml"), load_plate_schema()):
        assert schema["$defs"]["identifier"]["pattern"] == f"^{IDENTIFIER_PATTERN}$"
    with pytest.raises(ConfigError, match="model.id"):
        validate_config({"model": {"id": "demo/mae"}}, SCHEMA)
    with pytest.raises(ConfigError, match="channels.0.name"):
        validate_config({"channels": [{"name": "DNA ", "token": "1"}]}, SCHEMA)
    with pytest.raises(ConfigError, match="postprocess.methods"):
        validate_config({"postprocess": {"methods": {"pca.2": {"method": "pca"}}}}, SCHEMA)
    validate_config({"model": {"id": "mae-v1.2_b"}}, SCHEMA)

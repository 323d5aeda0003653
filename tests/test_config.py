"""The config schema: defaults, and errors that name the key path and the allowed values."""

import inspect
from pathlib import Path

import pytest
import yaml

from phenoica.benchmarks import identifiability, synthetic
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
def test_example_configs_are_valid_on_top_of_the_demo(example):
    # snakemake --configfile merges the example over config/config.yaml
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    extra = yaml.safe_load(example.read_text())

    def merge(a, b):
        for key, value in b.items():
            if isinstance(value, dict) and isinstance(a.get(key), dict):
                merge(a[key], value)
            else:
                a[key] = value
        return a

    validate_config(merge(base, extra), SCHEMA)


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


def _schema_defaults(section):
    return validate_config({}, SCHEMA)[section]


def test_schema_defaults_match_the_code_defaults():
    """The schema documents the defaults; the functions own them. They must agree."""
    from phenoica.benchmarks.generalization import DEFAULT_PARAMS as BENCHMARK
    from phenoica.embed import EMBED_DEFAULTS
    from phenoica.models.train import TRAIN_DEFAULTS

    train = _schema_defaults("train")
    assert {k: v for k, v in train.items() if k != "plates"} == {
        k: v for k, v in TRAIN_DEFAULTS.items() if k != "plates"}
    assert _schema_defaults("embed") == EMBED_DEFAULTS
    assert _schema_defaults("benchmark") == BENCHMARK


def test_score_keys_are_compute_scores_keywords():
    import inspect

    from phenoica.metrics.separation import compute_scores

    signature = inspect.signature(compute_scores).parameters
    for key, value in _schema_defaults("scores").items():
        assert key in signature, key
        assert signature[key].default == value, key


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


#: schema section -> (the functions taking its keys as keyword-only arguments without defaults,
#: the keys the workflow reads itself). Defaults live in the schema only.
SECTION_FUNCTIONS = {
    "identifiability": ((identifiability.alignment_table, identifiability.summarize_alignment,
                         identifiability.isometry_table),
                        {"seeds", "weight_decays", "sweep_seeds", "train", "probe_plates"}),
    "synthetic": ((synthetic.run_synthetic_benchmark,), set()),
}


@pytest.mark.parametrize("section", sorted(SECTION_FUNCTIONS))
def test_section_keys_are_the_keyword_only_arguments(section):
    from phenoica.config import SCHEMA_DIR, load_schema

    functions, workflow_keys = SECTION_FUNCTIONS[section]
    keys = set(load_schema(SCHEMA_DIR / "config.schema.yaml")["properties"][section]["properties"])
    arguments = set()
    for func in functions:
        for name, parameter in inspect.signature(func).parameters.items():
            if parameter.kind is parameter.KEYWORD_ONLY:
                assert parameter.default is parameter.empty, f"{func.__name__}({name}=...): defaults live in the schema"
                arguments.add(name)
    assert arguments == keys - workflow_keys

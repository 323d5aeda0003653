"""The config schema: defaults, and errors that name the key path and the allowed values."""

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

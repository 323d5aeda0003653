"""Workflow configuration: JSON-schema validation (with defaults) and clear error messages.

The schema lives in ``workflow/schemas/config.schema.yaml``; the Snakefile calls
:func:`validate_config` at load time so a bad key stops ``snakemake -n`` before any job runs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator, validators

from .errors import ConfigError

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"


def _with_defaults(validator_class):
    """A validator that fills ``default`` values into the instance while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultValidator = _with_defaults(Draft202012Validator)


def load_schema(path: str | os.PathLike) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def describe_error(error: jsonschema.ValidationError, what: str = "config") -> str:
    """One line a user can act on: where, what is wrong, and what is allowed."""
    allowed = ""
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "enum":
        allowed = f"; allowed values: {', '.join(map(repr, schema.get('enum', [])))}"
    elif error.validator == "additionalProperties" and "properties" in schema:
        allowed = f"; allowed keys: {', '.join(sorted(schema['properties']))}"
    elif error.validator == "type":
        allowed = f"; expected type: {schema.get('type')}"
    description = schema.get("description")
    hint = f" ({description})" if description and error.validator != "additionalProperties" else ""
    return f"{what} key {key_path(error)}: {error.message}{allowed}{hint}"


def validate_config(config: dict, schema: dict | str | os.PathLike | None = None,
                    *, what: str = "config") -> dict:
    """Validate ``config`` in place against the schema, filling defaults; return it.

    Raises ConfigError listing every violation with its key path and the allowed values.
    """
    if schema is None:
        schema = SCHEMA_DIR / "config.schema.yaml"
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    # fill defaults first (the default-filling validator stops at the first error otherwise)
    errors = sorted(_DefaultValidator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [describe_error(e, what) for e in errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return config


def load_config(path: str | os.PathLike, schema: dict | str | os.PathLike | None = None) -> dict:
    """Read a YAML config file and validate it (for use outside Snakemake)."""
    try:
        with open(path) as handle:
            config: Any = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    return validate_config(config, schema, what=str(path))

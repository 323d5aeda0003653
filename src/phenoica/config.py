"""Workflow configuration: JSON-schema validation (with defaults) and clear error messages.

The schema lives in ``workflow/schemas/config.schema.yaml``; the Snakefile calls
:func:`validate_config` at load time so a bad key stops ``snakemake -n`` before any job runs.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator, validators

from .errors import ConfigError
from .identifiers import IDENTIFIER_PATTERN, METHOD_NAME_PATTERN

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


#: Patterns the schemas share through ``$defs`` (``$ref: "#/$defs/identifier"``): written once,
#: in :mod:`phenoica.identifiers`, and filled into every schema :func:`load_schema` reads.
SHARED_PATTERNS = {"identifier": IDENTIFIER_PATTERN, "method_name": METHOD_NAME_PATTERN}
_SCHEMA_CACHE: dict[str, dict] = {}


def load_schema(path: str | os.PathLike) -> dict:
    """A JSON schema (YAML file) with the shared patterns of ``$defs`` filled in (a copy: the
    file is parsed once per process, with libyaml when PyYAML has it — every Snakemake start
    reads the config and plate-sheet schemas)."""
    key = os.path.realpath(path)
    if key not in _SCHEMA_CACHE:
        with open(path) as handle:
            schema = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        for name, spec in (schema.get("$defs") or {}).items():
            if name in SHARED_PATTERNS:
                spec["pattern"] = f"^{SHARED_PATTERNS[name]}$"
        _SCHEMA_CACHE[key] = schema
    return copy.deepcopy(_SCHEMA_CACHE[key])


def _config_schema() -> dict:
    key = os.path.realpath(SCHEMA_DIR / "config.schema.yaml")
    if key not in _SCHEMA_CACHE:
        load_schema(key)
    return _SCHEMA_CACHE[key]


def key_path(error: jsonschema.ValidationError, prefix: str = "") -> str:
    parts = [str(p) for p in error.absolute_path]
    if prefix:
        parts = [prefix, *parts]
    return ".".join(parts) if parts else "(top level)"


def describe_error(error: jsonschema.ValidationError, what: str = "config", prefix: str = "") -> str:
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
    return f"{what} key {key_path(error, prefix)}: {error.message}{allowed}{hint}"


def validate_config(config: dict, schema: dict | str | os.PathLike | None = None,
                    *, what: str = "config") -> dict:
    """Validate ``config`` in place against the schema, filling defaults; return it.

    Raises ConfigError listing every violation with its key path and the allowed values.
    """
    if schema is None:
        schema = _config_schema()
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    # fill defaults first (the default-filling validator stops at the first error otherwise)
    errors = sorted(_DefaultValidator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [describe_error(e, what) for e in errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return normalize_numbers(config, schema)


def _resolve(spec: Any, defs: Mapping[str, Any]) -> dict:
    if not isinstance(spec, dict):
        return {}
    ref = spec.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return {**defs.get(ref.removeprefix("#/$defs/"), {}), **{k: v for k, v in spec.items() if k != "$ref"}}
    return spec


def _number_types(spec: dict, defs: Mapping[str, Any]) -> set[str]:
    """JSON types a schema node allows (its ``type`` and those of its ``anyOf``/``oneOf``)."""
    kind = spec.get("type")
    types = {kind} if isinstance(kind, str) else set(kind or [])
    for sub in [*spec.get("anyOf", []), *spec.get("oneOf", [])]:
        types |= _number_types(_resolve(sub, defs), defs)
    return types


def normalize_numbers(value: Any, schema: dict, defs: Mapping[str, Any] | None = None) -> Any:
    """Numbers of ``value`` in the type their schema node names, in place: a whole float where an
    integer is allowed becomes an int (``32.0`` -> ``32``; JSON schema counts it as an integer), an
    int where only ``number`` is allowed a float (``1`` -> ``1.0``). So the same setting has one
    spelling in every job's parameters (Snakemake reruns a job whose parameters print
    differently). Free-form mappings (``simulate.params``, a method's parameters) are left as
    written. Returns ``value``."""
    defs = schema.get("$defs", {}) if defs is None else defs
    spec = _resolve(schema, defs)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        types = _number_types(spec, defs)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53 and "integer" in types:
            return int(value)
        if isinstance(value, int) and "number" in types and "integer" not in types:
            return float(value)
        return value
    if isinstance(value, dict):
        properties = spec.get("properties", {})
        extra = spec.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = normalize_numbers(item, sub, defs)
    elif isinstance(value, list) and isinstance(spec.get("items"), dict):
        value[:] = [normalize_numbers(item, spec["items"], defs) for item in value]
    return value


def schema_node(key: str, schema: dict | None = None) -> dict:
    """The schema of a config section or key, by dotted name (``"train"``, ``"synthetic.models"``)."""
    node = _config_schema() if schema is None else schema
    for part in key.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise ConfigError(f"config schema has no section {key!r}") from None
    return node


def check_section(values: dict, section: str, *, key: str | None = None,
                  schema: dict | None = None) -> None:
    """Check ``values`` against the schema of config section ``section`` without changing them.

    For settings that take the shape of a section elsewhere, e.g. the identifiability training
    (``identifiability.train`` merged over ``train``) is checked against the ``train`` section.
    Raises ConfigError naming ``key`` (default: ``section``) and every violation below it.
    """
    node = schema_node(section, schema)
    full = _config_schema() if schema is None else schema
    if "$defs" in full:  # the section may refer to the shared definitions
        node = {**node, "$defs": full["$defs"]}
    errors = sorted(Draft202012Validator(node).iter_errors(values), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [describe_error(e, prefix=key or section) for e in errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _defaults_of(spec: dict) -> Any:
    """The default of one schema node: its ``default``, else the defaults of its properties."""
    if "default" in spec and not ("properties" in spec and spec["default"] == {}):
        return copy.deepcopy(spec["default"])
    if "properties" in spec:
        return {name: _defaults_of(sub) for name, sub in spec["properties"].items()
                if "default" in sub or "properties" in sub}
    return None



#: Schema annotation of a key the Snakefile reads itself (to choose a rule's inputs, an output
#: path, ...) rather than hand to the function implementing its section, e.g. ``train.plates``.
WORKFLOW_ONLY = "x-workflow-only"


def workflow_keys(section: str, schema: dict | None = None) -> list[str]:
    """Keys of ``section`` marked ``x-workflow-only: true`` in the schema."""
    return [name for name, spec in schema_node(section, schema).get("properties", {}).items()
            if spec.get(WORKFLOW_ONLY)]


def section_arguments(section: str, values: Mapping[str, Any], schema: dict | None = None) -> dict:
    """``values`` of config section ``section`` (e.g. ``config["train"]``) without its
    workflow-only keys: the keyword arguments of the function that implements the section."""
    skip = set(workflow_keys(section, schema))
    return {key: value for key, value in values.items() if key not in skip}


def schema_defaults(section: str | None = None, schema: dict | None = None) -> dict:
    """Default values of a config section (``"benchmark"``, ``"train"``, ...), or of the whole
    config, read from the JSON schema: the one place defaults are written.

    Package functions that implement a config section take its keys as explicit keyword-only
    arguments without defaults; callers outside Snakemake (notebooks, tests) fill them with
    ``func(..., **{**schema_defaults("train"), **overrides})``. The defaults of a section leave
    out its workflow-only keys (:data:`WORKFLOW_ONLY`), which are no arguments of that function.
    """
    node = schema_node(section, schema) if section is not None else (schema or _config_schema())
    out = _defaults_of(node)
    if not isinstance(out, dict):
        raise ConfigError(f"config schema section {section!r} has no keyed defaults")
    return section_arguments(section, out, schema) if section is not None else out


def section_values(func: Callable[..., Any], values: Mapping[str, Any]) -> dict:
    """The keyword-only arguments of ``func`` (the keys of the config section it implements)
    with their values from ``values``: inside ``func``, ``section_values(func, locals())``."""
    return {name: values[name] for name, param in inspect.signature(func).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY}


def canonical(value: Any) -> Any:
    """``value`` (a job parameter) in one canonical form: mappings as dicts with sorted keys,
    tuples as lists, sets as sorted lists, numpy scalars as Python numbers, recursively.

    Snakemake compares a job's parameters by their ``repr``, so without this the same settings
    in another key order (a config file's order vs the schema's defaults filled in after it, or
    ``--replace-workflow-config``) rerun the job and everything after it. Every ``params:`` value
    of the workflow's rules goes through it. Numbers are normalised when the config is loaded
    (:func:`validate_config`: ``1`` for a ``number`` key is ``1.0``, ``32.0`` for an ``integer``
    key is ``32``). Lists keep their order: in a list (channels, tasks) the order means something.
    """
    if value is None or isinstance(value, (bool, str, bytes, int, float)):
        return value
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda item: (type(item[0]).__name__, str(item[0])))
        return {key: canonical(item) for key, item in items}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(item) for item in value), key=lambda item: (type(item).__name__, repr(item)))
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return canonical(value.item())  # a numpy scalar
    return value


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


# --- config/README.md, generated from the schema ----------------------------------------------

REFERENCE_HEADER = """# Configuration reference

Generated from `workflow/schemas/config.schema.yaml` by `python -m phenoica.config
config/README.md`; a test keeps the two in step. The workflow validates the config against that
schema when it loads (`snakemake -n` already fails on a wrong key or value, naming the key and
what is allowed) and fills in every default listed here. It then checks what the config names in
the data (the columns of the plate maps or of a profiles table, the channel tokens of the image
file names, at least 2 batches for the held-out-batch benchmarks, enough wells for each
post-processing fit), so a dry run fails with the key, the file and what was found.

**Your own config is complete on its own.** `config/config.yaml` is the built-in demo (simulated
plates), and Snakemake reads it only when no `--configfile` is given: `snakemake --configfile
my.yaml` uses `my.yaml` and, for every key it leaves out, the default listed here (never the
demo's value). So what a config lists is all that runs: `postprocess.methods: {pca: {},
pca_ica: {}}` plans those two methods, `benchmark.tasks: [auroc]` that task, `channels` those
channels. Several files layer: `--configfile base.yaml more.yaml` merges `more.yaml` over
`base.yaml` key by key (mappings such as `postprocess.methods` merge, so a later file adds
methods; lists and values are replaced). `--config key=value` overrides single keys of either,
e.g. `snakemake --cores 2 --config seed=1`. `config/examples/` holds complete configs (BBBC021
profiles, a cluster-sized screen) and one layer (the full identifiability run).
"""


def _type_text(spec: dict) -> str:
    kind = spec.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    text = " or ".join(str(k) for k in kinds)
    if "enum" in spec:
        text += ": " + ", ".join(f"`{v}`" if v is not None else "`null`" for v in spec["enum"])
    bounds = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                      ("exclusiveMaximum", "<")):
        if key in spec:
            bounds.append(f"{sign} {spec[key]}")
    if bounds:
        text += " (" + ", ".join(bounds) + ")"
    return text


def _default_text(spec: dict) -> str:
    if "default" not in spec:
        return "required"
    text = yaml.safe_dump(spec["default"], default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return f"`{text}`"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def undocumented_keys(schema: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the schema without a description (every key should have one)."""
    missing = []
    for name, spec in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if not spec.get("description"):
            missing.append(key)
        missing += undocumented_keys(spec, prefix=f"{key}.")
    return missing


def _methods_reference() -> list[str]:
    from .postprocess.methods import METHOD_NAMES, METHOD_PARAM_DOCS, METHODS

    lines = ["", "### `postprocess.methods`: the algorithms and their parameters", "",
             "Each entry is `output name: {method: <algorithm>, <parameter>: <value>, ...}`; "
             "`method` defaults to the output name, so `pca_ica: {n_components: 32}` runs PCA+ICA and "
             "`ica64: {method: pca_ica, n_components: 64}` adds a second PCA+ICA as `obsm[\"X_phenoica_ica64\"]`.",
             "", "| algorithm | what | parameters (default) |", "|---|---|---|"]
    for name in METHOD_NAMES:
        cls = METHODS[name]
        what = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".")
        params = "; ".join(f"`{k}` ({yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}): "
                           f"{METHOD_PARAM_DOCS[k]}" for k, v in cls.defaults.items()) or "none"
        lines.append(f"| `{name}` | {_cell(what)} | {_cell(params)} |")
    return lines


def _inline_refs(node: Any, defs: dict) -> Any:
    """``node`` with every ``$ref: "#/$defs/<name>"`` replaced by that definition (the node's own
    keys, e.g. its description, win)."""
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _inline_refs(value, defs) for key, value in node.items() if key != "$ref"}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        out = {**_inline_refs(defs[ref.removeprefix("#/$defs/")], defs), **out}
    return out


def config_reference(schema: dict | None = None) -> str:
    """Markdown documenting every config key: type and allowed values, default, meaning."""
    from .simulate.params import DEFAULT_PARAMS, PARAM_DOCS

    if schema is None:
        schema = load_schema(SCHEMA_DIR / "config.schema.yaml")
    schema = _inline_refs(schema, schema.get("$defs", {}))
    lines = [REFERENCE_HEADER]
    top = [(n, s) for n, s in schema["properties"].items() if "properties" not in s]
    lines += ["## Top-level keys", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {_cell(_type_text(s))} | {_cell(_default_text(s))} | "
              f"{_cell(s.get('description', ''))} |" for n, s in top]
    for name, spec in schema["properties"].items():
        if "properties" not in spec:
            continue
        lines += ["", f"## `{name}`", "", _cell(spec.get("description", "")), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, sub in spec["properties"].items():
            lines.append(f"| `{name}.{key}` | {_cell(_type_text(sub))} | {_cell(_default_text(sub))} "
                         f"| {_cell(sub.get('description', ''))} |")
            for key2, sub2 in sub.get("properties", {}).items():
                lines.append(f"| `{name}.{key}.{key2}` | {_cell(_type_text(sub2))} | "
                             f"{_cell(_default_text(sub2))} | {_cell(sub2.get('description', ''))} |")
        if name == "simulate":
            lines += ["", "### `simulate.params`: the simulator's parameters", "",
                      "| key | default | meaning |", "|---|---|---|"]
            lines += [f"| `simulate.params.{k}` | `{_cell(DEFAULT_PARAMS[k])}` | {_cell(PARAM_DOCS[k])} |"
                      for k in DEFAULT_PARAMS]
        if name == "postprocess":
            lines += _methods_reference()
        if name == "resources":
            lines += ["", "Example: `resources: {embed_plate: {threads: 8, mem_mb: 16000, gpu: 1}}`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m phenoica.config config/README.md
    import sys

    text = config_reference()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
    else:
        sys.stdout.write(text)

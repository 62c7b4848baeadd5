"""Check a workflow config against ``config/schema.yaml`` and fill in the defaults.

Errors are one line naming the key, e.g.
``config key 'trian' is not known (in section 'root'); did you mean 'train'?``

The schema is JSON Schema draft 2020-12 in which every object has ``additionalProperties: false``
(or a schema, for a mapping with free keys) and every property has a ``default``. Local ``$ref``s
(``#/$defs/...``) are followed. Text where the schema wants a number, a boolean or null is read as
YAML first: ``snakemake --config 'evaluate={batch_size: 4}'`` hands nested values over as strings.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path

import jsonschema
import yaml

from ssdlite_coco.common.errors import SsdliteError


class ConfigError(SsdliteError):
    """The config does not match the schema; the message is one line naming the key."""


def load_schema(schema_path: str | Path) -> dict:
    return yaml.safe_load(Path(schema_path).read_text())


def _resolve(schema: dict, root: dict) -> dict:
    """Follow local ``$ref``s (``#/$defs/name``), merging the sibling keywords over the target."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ConfigError(f"schema reference {ref!r} is not local (use '#/$defs/...')")
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        merged = {key: value for key, value in schema.items() if key != "$ref"}
        schema = {**target, **merged}
        seen += 1
        if seen > 50:
            raise ConfigError(f"schema reference {ref!r} is circular")
    return schema


def _is_object_schema(schema: dict) -> bool:
    return schema.get("type") == "object" or "properties" in schema


def _section_name(path: list[str]) -> str:
    return ".".join(path) if path else "root"


def _check_unknown_keys(value, schema: dict, root: dict, path: list[str]) -> None:
    schema = _resolve(schema, root)
    if isinstance(value, dict) and _is_object_schema(schema):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            key = str(key)
            if key in properties:
                _check_unknown_keys(item, properties[key], root, path + [key])
            elif extra is False:
                known = sorted(properties)
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known) or 'none'}"
                section = _section_name(path)
                raise ConfigError(f"config key '{key}' is not known (in section '{section}'); {hint}")
            elif isinstance(extra, dict):
                _check_unknown_keys(item, extra, root, path + [key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _check_unknown_keys(item, schema["items"], root, path + [str(index)])


_TYPE_CHECKS = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _coerce(value, schema: dict):
    """Text where the schema wants no string (``--config`` gives nested values as text): its YAML value."""
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if not isinstance(value, str) or not types or "string" in types:
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if any(_TYPE_CHECKS.get(name, lambda _v: False)(parsed) for name in types):
        return parsed
    return value


def _fill_defaults(value, schema: dict, root: dict):
    """Return ``value`` with the defaults of missing properties filled in (and text coerced), recursively."""
    schema = _resolve(schema, root)
    value = _coerce(value, schema)
    if isinstance(value, dict) and _is_object_schema(schema):
        filled = dict(value)
        for key, sub_schema in schema.get("properties", {}).items():
            sub_resolved = _resolve(sub_schema, root)
            if key not in filled and "default" in sub_resolved:
                filled[key] = copy.deepcopy(sub_resolved["default"])
            if key in filled:
                filled[key] = _fill_defaults(filled[key], sub_resolved, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in filled:
                if key not in schema.get("properties", {}):
                    filled[key] = _fill_defaults(filled[key], extra, root)
        return filled
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_fill_defaults(item, schema["items"], root) for item in value]
    return value


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    where = f"config key '{path}'" if path else "config"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    line = f"{where}: {error.message}"
    if description:
        line += f" ({description.strip().splitlines()[0]})"
    return " ".join(line.split())


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Return a copy of ``config`` with defaults filled in; raise ConfigError (one line) if it is invalid."""
    schema = load_schema(schema_path)
    config = dict(config or {})
    _check_unknown_keys(config, schema, schema, [])
    filled = _fill_defaults(config, schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(filled))
    if error is not None:
        raise ConfigError(_describe(error))
    return filled


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


@functools.cache
def schema_defaults() -> dict:
    """The effective config of an empty user config: every key at its schema default."""
    return validate_config({}, SCHEMA_PATH)


def schema_default(key: str):
    """The schema default of a dotted config key (``schema_default("lmdb.readers")``): the one place it is set."""
    value = schema_defaults()
    for part in key.split("."):
        value = value[part]
    return copy.deepcopy(value)


def write_effective_config(config: dict, path: str | Path) -> None:
    """The config a run uses (schema defaults + the user's file + ``--config``), as YAML, atomically."""
    from ssdlite_coco.common.atomic import atomic_write_text

    header = "# The effective config of the last run: schema defaults + the config file(s) + --config values.\n"
    atomic_write_text(path, header + yaml.safe_dump(dict(config), sort_keys=False))

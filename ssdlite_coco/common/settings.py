"""A rule's settings: one frozen dataclass whose fields are keys of one config section, passed as JSON.

A rule passes ``--settings {params.settings:q}`` with ``settings=settings_json(ExportSettings, config["export"])``:
the keys its script reads and no others, so that changing another key re-runs nothing. The script parses them
with ``parse_settings(ExportSettings, args.settings)``: the schema's defaults, overridden by the keys given and
validated by the schema. No default is written anywhere but ``config/schema.yaml``; a new key needs the
schema and a field of its stage's dataclass, nothing in the rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar, get_type_hints

from ssdlite_coco.common.config import SCHEMA_PATH, ConfigError, validate_config

SettingsT = TypeVar("SettingsT")


def setting_names(cls: type) -> list[str]:
    """The config keys a settings dataclass reads (its fields), in their order."""
    return [field.name for field in fields(cls)]


def settings_json(cls: type, section: Mapping[str, Any]) -> str:
    """The keys of ``section`` that ``cls`` reads, as JSON: what a rule passes to its script's ``--settings``."""
    return json.dumps({name: section[name] for name in setting_names(cls)}, sort_keys=True)


def parse_settings(cls: type[SettingsT], text: str = "{}") -> SettingsT:
    """``cls`` from a ``--settings`` JSON: schema defaults for the keys not given; ConfigError (one line) if invalid.

    A whole number given for a ``float`` field becomes a float (JSON and YAML write 1.0 as 1).
    """
    section = cls.SECTION
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"the `{section}` settings are not JSON ({error}); give its keys as one object") from None
    if not isinstance(values, dict):
        raise ConfigError(f"the `{section}` settings must be a JSON object of its keys, not {text!r}")
    names = setting_names(cls)
    for key in values:
        if key not in names:
            raise ConfigError(
                f"settings: '{key}' is not a setting of this step; it reads `{section}`: {', '.join(names)}"
            )
    filled = _nested(validate_config(_nested(values, section, wrap=True), SCHEMA_PATH), section)
    floats = {name for name, hint in get_type_hints(cls).items() if hint is float}
    return cls(**{name: float(filled[name]) if name in floats else filled[name] for name in names})


def _nested(values: dict, section: str, wrap: bool = False) -> dict:
    """``{"a": {"b": values}}`` for section ``a.b`` (``wrap``), or the value at ``a.b`` of a whole config."""
    for part in reversed(section.split(".")) if wrap else section.split("."):
        values = {part: values} if wrap else values[part]
    return values


def add_settings_argument(parser, cls: type, flag: str = "--settings") -> None:
    """``flag JSON``: keys of ``cls.SECTION`` (the rest at their schema defaults)."""
    example = json.dumps({setting_names(cls)[0]: "..."})
    parser.add_argument(
        flag,
        default="{}",
        help=f"keys of the `{cls.SECTION}` config section as JSON, e.g. '{example}'; the others take their "
        f"schema defaults (reads: {', '.join(setting_names(cls))})",
    )

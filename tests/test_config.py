"""config/schema.yaml describes every key, and ssdlite_coco.common.config turns bad configs into one line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ssdlite_coco.common.config import ConfigError, load_schema, validate_config


@pytest.fixture(scope="module")
def schema_path(repo_root: Path) -> Path:
    return repo_root / "config" / "schema.yaml"


@pytest.fixture(scope="module")
def schema(schema_path: Path) -> dict:
    return load_schema(schema_path)


def _resolve(node: dict, root: dict) -> dict:
    while "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _is_object(node: dict) -> bool:
    types = node.get("type")
    return types == "object" or (isinstance(types, list) and "object" in types) or "properties" in node


def _walk(node: dict, root: dict, path: str, problems: list[str]) -> int:
    """Check ``node`` (an object schema) and everything under it; return how many properties were seen."""
    node = _resolve(node, root)
    seen = 0
    if node.get("additionalProperties") is not False:
        problems.append(f"{path}: object without 'additionalProperties: false'")
    for name, prop in node.get("properties", {}).items():
        prop = _resolve(prop, root)
        where = f"{path}.{name}" if path != "root" else name
        seen += 1
        for keyword in ("type", "description", "default"):
            if keyword not in prop:
                problems.append(f"{where}: no '{keyword}'")
        if "description" in prop and not str(prop["description"]).strip():
            problems.append(f"{where}: empty description")
        if _is_object(prop):
            if prop.get("default") != {}:
                problems.append(f"{where}: object whose default is not {{}}")
            seen += _walk(prop, root, where, problems)
        items = prop.get("items")
        if isinstance(items, dict) and _is_object(_resolve(items, root)):
            seen += _walk(items, root, f"{where}[]", problems)
    return seen


def test_every_key_has_type_description_default_and_objects_are_closed(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    problems: list[str] = []
    seen = _walk(schema, schema, "root", problems)
    assert not problems, "config/schema.yaml:\n" + "\n".join(problems)
    assert seen >= 10  # the walk really went through the sections


def test_schema_walk_catches_a_key_without_default(schema):
    broken = copy.deepcopy(schema)
    del broken["properties"]["resources"]["properties"]["default"]["properties"]["mem_mb"]["default"]
    problems: list[str] = []
    _walk(broken, broken, "root", problems)
    assert problems == ["resources.default.mem_mb: no 'default'"]


def test_schema_defaults_are_a_valid_config(schema_path, schema):
    filled = validate_config({}, schema_path)
    assert set(filled) == set(schema["properties"])
    assert filled["resources"]["default"] == {"mem_mb": 4000, "runtime": 120, "cpus_per_task": 1, "gpus": 0}
    assert filled["resources"]["rules"]["train"] == {
        "mem_mb": None,
        "runtime": None,
        "cpus_per_task": None,
        "gpus": None,
    }


def test_the_embedded_config_is_valid(repo_root, schema_path):
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    filled = validate_config(config, schema_path)
    assert filled["caffe"]["device"] == "cpu"
    assert filled["resources"]["rules"]["caffe_build"]["cpus_per_task"] == 2


def _kept(given, filled) -> bool:
    """Whether every value of ``given`` (nested) is in ``filled`` unchanged."""
    if isinstance(given, dict):
        return isinstance(filled, dict) and all(
            key in filled and _kept(value, filled[key]) for key, value in given.items()
        )
    return given == filled


def test_other_config_files_are_valid_and_keep_their_values(repo_root, schema_path):
    sections = set(load_schema(schema_path)["properties"])
    for path in sorted((repo_root / "config").glob("*.yaml")):
        if path.name == "schema.yaml":
            continue
        given = yaml.safe_load(path.read_text()) or {}
        filled = validate_config(given, schema_path)
        assert set(filled) == sections, path
        assert _kept(given, filled), f"{path}: validation changed a value the file gives"


def test_given_values_win_over_defaults_and_the_input_is_not_changed(schema_path):
    config = {"resources": {"rules": {"train": {"gpus": 1}}}}
    before = copy.deepcopy(config)
    filled = validate_config(config, schema_path)
    assert config == before
    assert filled["resources"]["rules"]["train"]["gpus"] == 1
    assert filled["resources"]["rules"]["train"]["mem_mb"] is None
    assert filled["resources"]["default"]["mem_mb"] == 4000


def _error(config: dict, schema_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(config, schema_path)
    message = str(caught.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def test_misspelled_key_gives_one_line_with_the_suggestion(tmp_path):
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "train": {
                "type": "object",
                "description": "t",
                "default": {},
                "additionalProperties": False,
                "properties": {"base_lr": {"type": "number", "description": "lr", "default": 0.01}},
            },
            "evaluate": {"type": "object", "description": "e", "default": {}, "additionalProperties": False},
        },
    }
    schema_path = tmp_path / "schema.yaml"
    schema_path.write_text(yaml.safe_dump(schema))
    assert _error({"trian": {}}, schema_path) == (
        "config key 'trian' is not known (in section 'root'); did you mean 'train'?"
    )
    assert _error({"train": {"base_rl": 0.1}}, schema_path) == (
        "config key 'base_rl' is not known (in section 'train'); did you mean 'base_lr'?"
    )
    assert _error({"zzz": 1}, schema_path) == (
        "config key 'zzz' is not known (in section 'root'); known keys: evaluate, train"
    )


def test_misspelled_key_in_the_real_schema(schema_path):
    assert _error({"resorces": {}}, schema_path) == (
        "config key 'resorces' is not known (in section 'root'); did you mean 'resources'?"
    )
    assert _error({"resources": {"rules": {"trian": {"gpus": 1}}}}, schema_path) == (
        "config key 'trian' is not known (in section 'resources.rules'); did you mean 'train'?"
    )
    assert _error({"resources": {"default": {"mem": 1}}}, schema_path).startswith(
        "config key 'mem' is not known (in section 'resources.default'); did you mean 'mem_mb'?"
    )


def test_wrong_type_or_range_names_the_key(schema_path):
    message = _error({"resources": {"default": {"mem_mb": "lots"}}}, schema_path)
    assert message.startswith("config key 'resources.default.mem_mb': 'lots' is not of type 'integer'")
    message = _error({"resources": {"rules": {"train": {"gpus": -1}}}}, schema_path)
    assert message.startswith("config key 'resources.rules.train.gpus': -1 is less than the minimum of 0")
    message = _error({"caffe": {"device": "gpu"}}, schema_path)
    assert message.startswith("config key 'caffe.device': 'gpu' is not one of ['cpu', 'cuda']")


def test_text_from_the_command_line_becomes_the_schema_type(schema_path):
    # `snakemake --config 'resources={default: {mem_mb: 8000}}'` hands the nested values over as text.
    filled = validate_config(
        {"resources": {"default": {"mem_mb": "8000"}, "rules": {"train": {"gpus": "1", "runtime": "null"}}}},
        schema_path,
    )
    assert filled["resources"]["default"]["mem_mb"] == 8000
    assert filled["resources"]["rules"]["train"]["gpus"] == 1
    assert filled["resources"]["rules"]["train"]["runtime"] is None
    assert filled["caffe"]["device"] == "cpu"
    message = _error({"resources": {"default": {"mem_mb": "8 GB"}}}, schema_path)
    assert message.startswith("config key 'resources.default.mem_mb': '8 GB' is not of type 'integer'")

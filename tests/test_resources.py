"""ssdlite_coco.common.resources: per-rule resources from the config's `resources:` section."""

from __future__ import annotations

import re

import pytest
import yaml

from ssdlite_coco.common.config import validate_config
from ssdlite_coco.common.resources import ResourceConfigError, effective_resources, rule_resources, rule_threads


@pytest.fixture
def config(repo_root):
    return validate_config(
        {
            "resources": {
                "default": {"mem_mb": 1000, "runtime": 30, "cpus_per_task": 1, "gpus": 0},
                "rules": {
                    "train": {"mem_mb": 16000, "runtime": 2880, "cpus_per_task": 8, "gpus": 1},
                    "evaluate": {"gpus": 1},
                    "build_lmdb": {"mem_mb": None, "runtime": 240},
                },
            }
        },
        repo_root / "config" / "schema.yaml",
    )


def test_a_rule_without_overrides_gets_the_defaults(config):
    assert rule_resources(config, "make_model") == {"mem_mb": 1000, "runtime": 30, "cpus_per_task": 1}
    assert rule_threads(config, "make_model") == 1


def test_overrides_replace_single_keys_and_null_takes_the_default(config):
    assert rule_resources(config, "build_lmdb") == {"mem_mb": 1000, "runtime": 240, "cpus_per_task": 1}
    assert rule_resources(config, "evaluate") == {"mem_mb": 1000, "runtime": 30, "cpus_per_task": 1, "gpu": 1}


def test_gpu_rules_ask_for_gpu_and_threads_follow_cpus(config):
    assert rule_resources(config, "train") == {"mem_mb": 16000, "runtime": 2880, "cpus_per_task": 8, "gpu": 1}
    assert rule_threads(config, "train") == 8


def test_no_resources_section_uses_the_schema_defaults(repo_root):
    schema = repo_root / "config" / "schema.yaml"
    expected = {"mem_mb": 4000, "runtime": 120, "cpus_per_task": 1, "gpus": 0}
    assert effective_resources(validate_config({}, schema), "train") == expected
    config = validate_config({"resources": {"default": {"mem_mb": 500}}}, schema)
    assert effective_resources(config, "train") == dict(expected, mem_mb=500)


def test_bad_value_names_the_key(config):
    config["resources"]["rules"]["train"]["runtime"] = 0
    expected = r"config key 'resources.rules.train.runtime' must be an integer >= 1, got 0"
    with pytest.raises(ResourceConfigError, match=expected):
        rule_resources(config, "train")
    config["resources"]["default"]["mem_mb"] = "2G"
    with pytest.raises(ResourceConfigError, match=r"config key 'resources.default.mem_mb'"):
        rule_resources(config, "make_model")
    # build_lmdb.mem_mb is null (the default's): the message names the default, not the rule's key.
    with pytest.raises(ResourceConfigError, match=r"config key 'resources.default.mem_mb'"):
        rule_resources(config, "build_lmdb")


def test_embedded_config_gives_caffe_build_two_cpus(repo_root):
    embedded = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    config = validate_config(embedded, repo_root / "config" / "schema.yaml")
    assert rule_resources(config, "caffe_build")["cpus_per_task"] == 2
    assert rule_threads(config, "caffe_build") == 2
    assert "gpu" not in rule_resources(config, "train")


# `rule NAME:` at the start of a line, indented too (rules/dataset.smk defines some inside if-blocks).
RULE_LINE = re.compile(r"^[ \t]*rule[ \t]+(\w+)[ \t]*:", re.MULTILINE)
RESOURCES_CALL = re.compile(
    r"^[ \t]*resources:[ \t]*\n[ \t]*\*\*(?:rule_resources\(config,[ \t]*|caffe_rule_resources\()\"(\w+)\"\)",
    re.MULTILINE,
)
THREADS_LINE = re.compile(r"^[ \t]*threads:[ \t]*(.+)$", re.MULTILINE)


def workflow_rule_blocks(repo_root) -> dict[str, str]:
    """The text of every rule of rules/*.smk, from its `rule NAME:` line to the next rule (or the file's end)."""
    blocks = {}
    for path in sorted((repo_root / "rules").glob("*.smk")):
        text = path.read_text()
        starts = list(RULE_LINE.finditer(text))
        if not starts:
            continue
        ends = [match.start() for match in starts[1:]] + [len(text)]
        for match, end in zip(starts, ends, strict=True):
            name = match.group(1)
            assert name not in blocks, f"rule {name} is defined twice (again in {path.name})"
            blocks[name] = text[match.start() : end]
    return blocks


def schema_rule_entries(repo_root) -> dict:
    schema = yaml.safe_load((repo_root / "config" / "schema.yaml").read_text())
    return schema["properties"]["resources"]["properties"]["rules"]["properties"]


def test_the_schema_has_a_resources_entry_for_every_rule_and_no_other(repo_root):
    rules = set(workflow_rule_blocks(repo_root))
    assert len(rules) > 10  # the parse found the rules, indented ones included
    assert {"dataset_demo", "dataset_local", "export_int8", "report_model"} <= rules
    entries = schema_rule_entries(repo_root)
    assert sorted(set(entries) - rules) == [], "resources.rules entries without a rule in rules/*.smk"
    assert sorted(rules - set(entries)) == [], "rules without a resources.rules entry in config/schema.yaml"
    shared_keys = entries["caffe_build"]["properties"]
    for name, entry in entries.items():
        assert entry["type"] == "object" and entry["additionalProperties"] is False, name
        assert entry["default"] == {}, name
        assert entry["properties"] == shared_keys, f"resources.rules.{name} does not use *rule_resource_keys"
        assert entry.get("description", "").strip(), f"resources.rules.{name} has no description"


def test_every_rule_asks_for_the_resources_and_threads_of_its_own_name(repo_root):
    for name, block in workflow_rule_blocks(repo_root).items():
        asked = RESOURCES_CALL.findall(block)
        assert asked == [name], f"rule {name}: resources: asks for {asked}, want **rule_resources(config, {name!r})"
        for threads in THREADS_LINE.findall(block):
            assert threads.strip() == f'rule_threads(config, "{name}")', f"rule {name}: threads: {threads.strip()}"


def test_every_rule_can_be_set_in_a_validated_config(repo_root):
    rules = sorted(workflow_rule_blocks(repo_root))
    config = validate_config(
        {"resources": {"rules": {name: {"cpus_per_task": 3} for name in rules}}},
        repo_root / "config" / "schema.yaml",
    )
    assert {name: rule_threads(config, name) for name in rules} == dict.fromkeys(rules, 3)


def test_the_readme_names_every_rule_that_can_be_set(repo_root):
    readme = (repo_root / "config" / "README.md").read_text()
    section = readme.split("\n## resources\n", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in schema_rule_entries(repo_root) if f"`{name}`" not in section]
    assert missing == [], "config/README.md, section resources, does not name these rules"

"""ssdlite_coco.common.resources: per-rule resources from the config's `resources:` section."""

from __future__ import annotations

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


def test_no_resources_section_uses_builtin_defaults():
    assert effective_resources({}, "train") == {"mem_mb": 2000, "runtime": 60, "cpus_per_task": 1, "gpus": 0}


def test_bad_value_names_the_key(config):
    config["resources"]["rules"]["train"]["runtime"] = 0
    expected = r"config key 'resources.rules.train.runtime' must be an integer >= 1, got 0"
    with pytest.raises(ResourceConfigError, match=expected):
        rule_resources(config, "train")
    config["resources"]["default"]["mem_mb"] = "2G"
    with pytest.raises(ResourceConfigError, match=r"config key 'resources.default.mem_mb'"):
        rule_resources(config, "make_model")


def test_embedded_config_gives_caffe_build_two_cpus(repo_root):
    embedded = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    config = validate_config(embedded, repo_root / "config" / "schema.yaml")
    assert rule_resources(config, "caffe_build")["cpus_per_task"] == 2
    assert rule_threads(config, "caffe_build") == 2
    assert "gpu" not in rule_resources(config, "train")

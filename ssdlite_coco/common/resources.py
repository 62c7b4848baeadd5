"""Per-rule cluster resources (memory, run time, CPUs, GPUs) from the ``resources:`` config section.

The section has ``default`` values for every rule and ``rules.<rule name>`` overrides, where a key
left at ``null`` takes the default. Rules use it as::

    threads: rule_threads(config, "train")
    resources:
        **rule_resources(config, "train"),

The keys returned are the standard ones Snakemake and its SLURM executor plugin understand:
``mem_mb``, ``runtime`` (minutes), ``cpus_per_task`` and, only for a rule that asks for GPUs,
``gpu`` (the plugin turns it into ``sbatch --gpus=N``).
"""

from __future__ import annotations

from ssdlite_coco.common.errors import SsdliteError

RESOURCE_KEYS = ("mem_mb", "runtime", "cpus_per_task", "gpus")


class ResourceConfigError(SsdliteError):
    """A resource value in the config is unusable; the message names the key and the fix."""


def effective_resources(config: dict, rule_name: str) -> dict[str, int]:
    """The four resource values for ``rule_name`` in a validated config (schema defaults filled in): its
    overrides on top of ``resources.default``."""
    section = config["resources"]
    overrides = section["rules"].get(rule_name) or {}
    values = dict(section["default"])
    values.update({key: value for key, value in overrides.items() if value is not None})
    for key in RESOURCE_KEYS:
        value = values.get(key)
        minimum = 0 if key == "gpus" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            overridden = overrides.get(key) is not None  # a validated config has every key, null = the default
            where = f"resources.rules.{rule_name}.{key}" if overridden else f"resources.default.{key}"
            raise ResourceConfigError(f"config key '{where}' must be an integer >= {minimum}, got {value!r}")
    return {key: values[key] for key in RESOURCE_KEYS}


def rule_resources(config: dict, rule_name: str) -> dict[str, int]:
    """Keyword arguments for a rule's ``resources:`` directive."""
    values = effective_resources(config, rule_name)
    resources = {
        "mem_mb": values["mem_mb"],
        "runtime": values["runtime"],
        "cpus_per_task": values["cpus_per_task"],
    }
    if values["gpus"] > 0:
        resources["gpu"] = values["gpus"]
    return resources


def rule_threads(config: dict, rule_name: str) -> int:
    """The rule's ``threads:``: as many as the CPUs it asks the cluster for."""
    return effective_resources(config, rule_name)["cpus_per_task"]

"""Each rule's settings: a frozen dataclass of keys of one config section, with defaults only in the schema."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import ssdlite_coco
from ssdlite_coco.common.config import ConfigError, schema_defaults
from ssdlite_coco.common.settings import parse_settings, settings_json
from ssdlite_coco.export.settings import ExportSettings

REPO = Path(__file__).resolve().parents[1]
# Modules that need pycaffe or the runtimes are not settings modules: only these light ones are imported here.
SETTINGS_MODULES = [
    name for _, name, _ in pkgutil.walk_packages(ssdlite_coco.__path__, "ssdlite_coco.") if name.endswith(".settings")
] + ["ssdlite_coco.labelmap"]


def _settings_classes() -> list[type]:
    classes = []
    for name in SETTINGS_MODULES:
        module = importlib.import_module(name)
        classes += [
            value
            for value in vars(module).values()
            if dataclasses.is_dataclass(value) and isinstance(value, type) and hasattr(value, "SECTION")
        ]
    return classes


def _section(config: dict, section: str) -> dict:
    for part in section.split("."):
        config = config[part]
    return config


def test_every_stage_has_settings_and_each_reads_only_keys_of_its_section():
    classes = _settings_classes()
    names = {f"{cls.__module__}.{cls.__name__}" for cls in classes}
    stages = {name.split(".")[1] for name in names}
    assert stages >= {"dataset", "labelmap", "lmdb", "model", "train", "evaluate", "export", "report"}, names
    defaults = schema_defaults()
    for cls in classes:
        section = _section(defaults, cls.SECTION)
        names = [field.name for field in dataclasses.fields(cls)]
        assert set(names) <= set(section), f"{cls.__name__} reads keys {cls.SECTION} does not have"
        assert all(field.default is dataclasses.MISSING for field in dataclasses.fields(cls)), cls  # schema only
        settings = parse_settings(cls)
        assert {name: getattr(settings, name) for name in names} == {name: section[name] for name in names}
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, names[0], None)


def test_a_rule_passes_only_the_keys_its_script_reads_and_the_script_reads_them_back():
    section = dict(schema_defaults()["export"], latency_runs=7, int8_max_ap_drop=0.5)
    text = settings_json(ExportSettings, section)
    assert "int8_max_ap_drop" not in json.loads(text)  # an INT8 key does not re-run the FP32 export
    assert parse_settings(ExportSettings, text).latency_runs == 7
    tolerance = parse_settings(ExportSettings, '{"tolerance": 1}').tolerance
    assert tolerance == 1.0 and isinstance(tolerance, float)  # as the float it is, whatever JSON wrote


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"latency_run": 7}', "'latency_run' is not a setting of this step; it reads `export`: fold_check_images"),
        ('{"latency_runs": 0}', "config key 'export.latency_runs': 0 is less than the minimum of 1"),
        ('{"runtimes": ["tensorrt"]}', "config key 'export.runtimes.0': 'tensorrt' is not one of"),
        ("latency_runs=7", "the `export` settings are not JSON"),
        ("[7]", "the `export` settings must be a JSON object"),
    ],
)
def test_bad_settings_give_one_line_naming_the_key(text, message):
    with pytest.raises(ConfigError) as error:
        parse_settings(ExportSettings, text)
    assert message in str(error.value) and "\n" not in str(error.value)


def _schema_numbers() -> dict[str, set]:
    """Leaf key -> its numeric schema defaults (in any section), 0 and 1 left out (too common to mean anything)."""
    numbers: dict[str, set] = {}

    def walk(value, key=None):
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1):
            numbers.setdefault(key, set()).add(value)

    walk(schema_defaults())
    return numbers


def _repeated_defaults(source: str, numbers: dict[str, set]) -> list[str]:
    """``name = <number>`` defaults (parameters, class fields, keyword arguments, ``--name`` flags) equal to
    the schema default of a key of that name."""
    found = []

    def check(name: str | None, node, line: int) -> None:
        if name and isinstance(node, ast.Constant) and node.value in numbers.get(name, ()):
            found.append(f"line {line}: {name} = {node.value}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            for arg, default in zip(positional[len(positional) - len(node.defaults) :], node.defaults, strict=True):
                check(arg.arg, default, arg.lineno)
            for arg, default in zip(node.kwonlyargs, node.kw_defaults, strict=True):
                check(arg.arg, default, arg.lineno)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            check(node.target.id, node.value, node.lineno)
        elif isinstance(node, ast.Call):
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
            for keyword in node.keywords:
                if keyword.arg == "default" and flags:
                    check(flags[0][2:].replace("-", "_"), keyword.value, node.lineno)
                else:
                    check(keyword.arg, keyword.value, node.lineno)
    return found


def test_no_schema_default_is_written_again_outside_the_schema():
    numbers = _schema_numbers()
    sources = sorted((REPO / "ssdlite_coco").rglob("*.py")) + sorted((REPO / "scripts").glob("*.py"))
    repeated = {
        str(path.relative_to(REPO)): hits for path in sources if (hits := _repeated_defaults(path.read_text(), numbers))
    }
    assert repeated == {}
    uses = [str(path.relative_to(REPO)) for path in sources if "schema_default(" in path.read_text()]
    assert uses == ["ssdlite_coco/common/config.py"], uses  # settings come from --settings, not from a lookup


def test_the_check_for_repeated_defaults_can_fail():
    numbers = {"latency_runs": {50}, "batch_size": {8}}
    source = (
        "def f(latency_runs=50): ...\n"
        "class A:\n    batch_size: int = 8\n"
        "g(latency_runs=50)\n"
        "p.add_argument('--batch-size', default=8)\n"
        "h(latency_runs=3)\n"
    )
    assert len(_repeated_defaults(source, numbers)) == 4

"""The package's shape: one subpackage per stage, imports from stages to the shared layer and never in a
cycle, small modules and functions, one log folder per stage. Pure Python: no Caffe needed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssdlite_coco"
SHARED = {"common", "caffe_tools"}
STAGES = {"dataset", "labelmap", "lmdb", "model", "train", "evaluate", "export", "report"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _unit(module: Path, package: Path = PACKAGE) -> str:
    """The subpackage (or top-level module) a file of ``package`` belongs to."""
    relative = module.relative_to(package)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def import_graph(package: Path) -> dict[str, set[str]]:
    """Unit -> the other units of ``package`` it imports (at any depth of the code)."""
    graph: dict[str, set[str]] = {}
    for module in package.rglob("*.py"):
        unit = _unit(module, package)
        targets = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == package.name and len(parts) > 1 and parts[1] != unit:
                    targets.add(parts[1])
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (as the path that closes it)."""
    found, done = [], set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            found.append(path[path.index(node) :] + [node])
            return
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            walk(target, path + [node])
        done.add(node)

    for node in sorted(graph):
        walk(node, [])
    return found


def test_every_unit_of_the_package_is_a_stage_or_shared():
    units = {_unit(module) for module in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units == SHARED | STAGES


def test_the_shared_layer_imports_no_stage():
    graph = import_graph(PACKAGE)
    for unit in SHARED:
        assert not graph[unit] & STAGES, f"{unit} imports stages {sorted(graph[unit] & STAGES)}"


def test_stages_import_each_other_in_one_direction_only():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    package = tmp_path / "ssdlite_coco"
    (package / "train").mkdir(parents=True)
    (package / "evaluate").mkdir()
    (package / "train" / "runner.py").write_text("from ssdlite_coco.evaluate.test_net import run\n")
    (package / "evaluate" / "test_net.py").write_text("from ssdlite_coco.train import runner\n")
    assert cycles(import_graph(package)) == [["evaluate", "train", "evaluate"]]


@pytest.mark.parametrize("module", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(module):
    text = module.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module} has over {MAX_MODULE_LINES} lines: split it"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{module}:{node.lineno} {node.name} has {length} lines"


def test_the_package_never_imports_snakemake():
    for module in PACKAGE.rglob("*.py"):
        assert not re.search(r"^\s*(import|from) snakemake", module.read_text(), flags=re.M), module


def test_each_rule_logs_to_its_stage_folder_under_its_own_name(repo_root):
    for rules_file in sorted((repo_root / "rules").glob("*.smk")):
        stage = rules_file.stem
        text = rules_file.read_text()
        for rule, log in re.findall(r"^\s*rule (\w+):.*?\n\s+log:\n\s+\"([^\"]+)\"", text, flags=re.M | re.S):
            assert re.fullmatch(rf"logs/{stage}/{rule}(_\{{\w+\}})?\.log", log), (
                f"{rules_file}: rule {rule} logs to {log}"
            )

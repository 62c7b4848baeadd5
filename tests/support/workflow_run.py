"""Run the workflow in a throw-away copy of the checkout (so tests never touch results/ of the checkout)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# Generated or local things at the top of the checkout that a copy of the workflow must not carry along.
NOT_COPIED = {
    ".git",
    ".venv",
    "results",
    "resources",
    "logs",
    ".snakemake",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "bench-out",
}
NOT_COPIED_ANYWHERE = {"__pycache__"}
RULE_LINE = re.compile(r"^(?P<indent>\s*)(?:rule|checkpoint)\s+(?P<name>\w+)\s*:")


def copy_workflow(repo_root: Path, dest: Path) -> Path:
    """Copy the workflow's sources (everything but generated and local folders) to ``dest``."""
    top = str(repo_root)

    def not_copied(directory: str, names: list[str]) -> list[str]:
        skip = NOT_COPIED_ANYWHERE | (NOT_COPIED if directory == top else set())
        return [name for name in names if name in skip]

    shutil.copytree(repo_root, dest, ignore=not_copied, symlinks=True)
    return dest


def run_snakemake(workdir: Path, args: list[str], timeout: float = 600, env: dict | None = None):
    """``snakemake ARGS`` in ``workdir``, with the interpreter that runs the tests."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or dict(os.environ),
    )


def output_tail(result: subprocess.CompletedProcess, lines: int = 40) -> str:
    """The last lines of a run's stdout and stderr, for assertion messages."""
    text = (result.stdout or "") + (result.stderr or "")
    return "\n".join(text.splitlines()[-lines:])


def planned_rules(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry-run: rule -> job count."""
    table = output.split("Job stats:", 1)[-1]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def workflow_rules(repo_root: Path) -> dict[str, tuple[Path, list[str]]]:
    """Every rule (also those inside `if` blocks) of the Snakefile and rules/*.smk: name -> (file, lines)."""
    rules: dict[str, tuple[Path, list[str]]] = {}
    for path in [repo_root / "Snakefile", *sorted((repo_root / "rules").glob("*.smk"))]:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = RULE_LINE.match(line)
            if not match:
                continue
            indent = len(match["indent"])
            body = []
            for following in lines[number + 1 :]:
                stripped = following.strip()
                if stripped and not stripped.startswith("#") and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            # A rule defined in two branches (if/else) appears twice: the second under "name@file:line".
            key = match["name"] if match["name"] not in rules else f"{match['name']}@{path.name}:{number + 1}"
            rules[key] = (path, body)
    return rules

"""Hygiene that CI enforces: ruff (check and format), snakefmt and `snakemake --lint` clean; pinned conda envs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.workflow_run import copy_workflow, output_tail, run_snakemake, workflow_rules

CHANNELS = ["conda-forge", "nodefaults"]
# Rules that run nothing (only gather inputs) need no environment.
ACTION_DIRECTIVES = ("shell:", "script:", "run:", "notebook:", "wrapper:")
CONDA_PIN = re.compile(r"^[A-Za-z0-9_.\-]+(?:\[[\w,]+\])?\s*==?\s*[0-9][\w.*+!]*$")
# conda-forge packages whose PyPI namesake is something else (conda's lmdb is the C library).
CONDA_NOT_PYPI = {"lmdb"}
# conda-forge packages published on PyPI under another name (their versions must still agree).
CONDA_TO_PYPI = {"pytorch": "torch"}
PIP_PIN = re.compile(r"^[A-Za-z0-9_.\-]+(?:\[[\w,]+\])?==[0-9][\w.+!]*$")


def _tool(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=repo_root, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean(repo_root):
    result = _tool(repo_root, "ruff", "check", "--output-format=concise", ".")
    assert result.returncode == 0, f"ruff check .:\n{output_tail(result, 60)}"


def test_ruff_format_is_clean(repo_root):
    result = _tool(repo_root, "ruff", "format", "--check", ".")
    assert result.returncode == 0, f"ruff format --check .:\n{output_tail(result, 60)}"


def test_snakefmt_is_clean(repo_root):
    result = _tool(repo_root, "snakefmt", "--check", "--diff", "Snakefile", "rules")
    assert result.returncode == 0, f"snakefmt --check Snakefile rules:\n{output_tail(result, 60)}"


def test_snakemake_lint_is_clean(repo_root, tmp_path):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    result = run_snakemake(workdir, ["--lint"], timeout=300)
    assert result.returncode == 0, f"snakemake --lint:\n{output_tail(result, 80)}"


def conda_env_of(body: list[str]) -> str | None:
    """The string after a rule's `conda:` directive (on the same or the next line), or None."""
    for index, line in enumerate(body):
        stripped = line.strip()
        if stripped.startswith("conda:"):
            value = stripped.removeprefix("conda:").strip() or body[index + 1].strip()
            literal = re.fullmatch(r"(['\"])(.*)\1,?", value)
            return literal[2] if literal else value
    return None


def conda_problems(repo_root: Path) -> list[str]:
    problems = []
    for name, (path, body) in sorted(workflow_rules(repo_root).items()):
        if not any(line.strip().startswith(ACTION_DIRECTIVES) for line in body):
            continue
        env = conda_env_of(body)
        if env is None:
            problems.append(f"rule {name} ({path.name}) has no conda: directive")
        elif not re.fullmatch(r"\.\./envs/\w+\.yaml", env):
            problems.append(f"rule {name} ({path.name}): conda: {env!r} is not '../envs/<family>.yaml'")
        elif not (path.parent / env).resolve().is_file():
            problems.append(f"rule {name} ({path.name}): conda env {env} does not exist")
    return problems


def test_every_rule_that_runs_something_has_a_conda_env_file(repo_root):
    assert "caffe_build" in workflow_rules(repo_root)  # the parser does find rules
    problems = conda_problems(repo_root)
    assert not problems, "\n".join(problems)


def test_the_conda_check_finds_missing_and_wrong_envs(tmp_path):
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "data.yaml").write_text("channels: [conda-forge, nodefaults]\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "Snakefile").write_text('rule all:\n    input:\n        "a",\n')
    (tmp_path / "rules" / "x.smk").write_text(
        "rule good:\n"
        '    conda:\n        "../envs/data.yaml"\n    shell:\n        "true"\n'
        "\n\nif True:\n\n"
        "    rule nested_bare:\n"
        '        output:\n            "b",\n        shell:\n            "touch {output}"\n'
        "\n\nrule missing_file:\n"
        '    conda: "../envs/nope.yaml"\n    shell:\n        "true"\n'
    )
    assert conda_problems(tmp_path) == [
        "rule missing_file (x.smk): conda env ../envs/nope.yaml does not exist",
        "rule nested_bare (x.smk) has no conda: directive",
    ]


def env_files(repo_root: Path) -> list[Path]:
    files = sorted((repo_root / "envs").glob("*.yaml"))
    assert files, "no envs/*.yaml"
    return files


def test_env_files_use_the_two_channels_and_pin_every_package(repo_root):
    problems = []
    for path in env_files(repo_root):
        env = yaml.safe_load(path.read_text())
        if env.get("channels") != CHANNELS:
            problems.append(f"{path.name}: channels are {env.get('channels')}, not {CHANNELS}")
        dependencies = env.get("dependencies") or []
        if not any(str(dep).startswith("python=") for dep in dependencies):
            problems.append(f"{path.name}: python is not pinned")
        for dep in dependencies:
            if isinstance(dep, dict):
                for pip_dep in dep.get("pip", []):
                    if not PIP_PIN.match(pip_dep):
                        problems.append(f"{path.name}: pip package {pip_dep!r} is not pinned with ==")
            elif not CONDA_PIN.match(str(dep)):
                problems.append(f"{path.name}: package {dep!r} is not pinned (name=version)")
    assert not problems, "\n".join(problems)


def _requirements(repo_root: Path) -> dict[str, str]:
    pins = {}
    for line in (repo_root / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[_canonical(name)] = version.strip()
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def test_env_versions_agree_with_requirements(repo_root):
    """A package in an env file and requirements.txt has the same version (a conda pin may stop at X.Y)."""
    wanted = _requirements(repo_root)
    problems = []
    for path in env_files(repo_root):
        for dep in yaml.safe_load(path.read_text()).get("dependencies") or []:
            entries = dep.get("pip", []) if isinstance(dep, dict) else [dep]
            for entry in entries:
                name, _, version = re.split(r"(==?)", str(entry), maxsplit=1)
                name, version = _canonical(name), version.strip()
                if not isinstance(dep, dict) and name in CONDA_NOT_PYPI:
                    continue
                if not isinstance(dep, dict):
                    name = CONDA_TO_PYPI.get(name, name)
                if name in wanted and not (wanted[name] == version or wanted[name].startswith(version + ".")):
                    problems.append(f"{path.name}: {entry} but requirements.txt has {name}=={wanted[name]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_profiles_parse_and_dry_run(repo_root, tmp_path, profile):
    workdir = copy_workflow(repo_root, tmp_path / "workflow")
    result = run_snakemake(workdir, ["--profile", f"profiles/{profile}", "-n", "resources/caffe/manifest.json"])
    assert result.returncode == 0, f"snakemake --profile profiles/{profile} -n:\n{output_tail(result)}"
    assert "caffe_build" in result.stdout

"""Fixtures shared by the test modules: where the repository, ../shared and its datasets are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("SSDLITE_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    shared = _shared_dir()
    if not shared.is_dir():
        pytest.fail(f"{shared} is missing: the tests need ../shared next to the checkout (or SSDLITE_SHARED)")
    return shared


@pytest.fixture(scope="session")
def coco_mini_dir(shared_dir: Path) -> Path:
    return shared_dir / "datasets" / "coco-mini"


@pytest.fixture(scope="session")
def demo_run(repo_root: Path, tmp_path_factory) -> Path:
    """The whole default workflow (the demo), run once per session in a copy of the checkout."""
    from tests.workflow_run import copy_workflow, output_tail, run_snakemake

    workdir = copy_workflow(repo_root, tmp_path_factory.mktemp("demo") / "workflow")
    result = run_snakemake(workdir, ["--cores", "2"], timeout=3600)
    assert result.returncode == 0, f"the demo run failed:\n{output_tail(result)}"
    return workdir

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
    from tests.support.workflow_run import copy_workflow, output_tail, run_snakemake

    workdir = copy_workflow(repo_root, tmp_path_factory.mktemp("demo") / "workflow")
    result = run_snakemake(workdir, ["--cores", "2"], timeout=3600)
    assert result.returncode == 0, f"the demo run failed:\n{output_tail(result)}"
    return workdir


# Test modules that need no Caffe build: pure Python, or Snakemake without a Caffe rule. Every other
# module's tests are marked `caffe`, so `pytest -m "not caffe"` runs without building Caffe.
CAFFE_FREE_MODULES = {
    "test_coco_dataset",
    "test_coco_eval",
    "test_config",
    "test_dataset_rules",
    "test_demo_dataset",
    "test_download",
    "test_edge_plumbing",
    "test_image_modes",
    "test_dryrun",
    "test_layout",
    "test_lint",
    "test_report",
    "test_resources",
    "test_rule_commands",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] not in CAFFE_FREE_MODULES:
            item.add_marker(pytest.mark.caffe)


def pytest_ignore_collect(collection_path, config):
    """With ``-m "not caffe"``, do not even import the modules that need Caffe (they import pycaffe)."""
    name = collection_path.stem
    if name.startswith("test_") and name not in CAFFE_FREE_MODULES:
        return "not caffe" in (config.option.markexpr or "") or None
    return None

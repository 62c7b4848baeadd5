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


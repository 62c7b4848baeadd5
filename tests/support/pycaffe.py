"""pycaffe for the test modules: skipped only outside scripts/with-caffe, imported for real inside it.

``pytest.importorskip("caffe")`` would skip a module whose pycaffe is broken (a missing shared library, a
stale build) as if Caffe were simply not set up. Here the skip depends only on whether the tests run
through ``scripts/with-caffe`` (which exports ``SSDLITE_CAFFE_PREFIX``); there, any import error fails the
module, and so does a ``caffe`` that is not the build under that prefix (e.g. the checkout's ``caffe/``
folder, which Python imports as an empty namespace package).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

SKIP_REASON = "run the tests through scripts/with-caffe (make test does)"


def require_caffe(module: str = "caffe") -> ModuleType:
    """The project's pycaffe (or ``module`` of it); a skip when the tests do not run through scripts/with-caffe."""
    prefix = os.environ.get("SSDLITE_CAFFE_PREFIX")
    if not prefix:
        pytest.skip(SKIP_REASON, allow_module_level=True)
    caffe = importlib.import_module("caffe")
    expected = (Path(prefix) / "python" / "caffe").resolve()
    found = Path(caffe.__file__).resolve().parent if getattr(caffe, "__file__", None) else None
    if found != expected:
        raise ImportError(f"`import caffe` found {found or list(caffe.__path__)}, not the build at {expected}")
    importlib.import_module("caffe._caffe")  # the compiled module: a broken build fails here, not in a test
    return importlib.import_module(module)

"""Where the project keeps what it builds once per machine: ``~/.cache/ssdlite-coco/<kind>``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str, override_variable: str) -> Path:
    """``$override_variable`` if set, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/ssdlite-coco/<kind>``."""
    explicit = os.environ.get(override_variable)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ssdlite-coco" / kind

"""File digests, read in blocks (archives and weights are large)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ssdlite_coco.common.progress import progress_bar


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", progress: bool = False) -> str:
    """The hex digest of the file at ``path`` (``progress``: a bar in bytes on stderr)."""
    path = Path(path)
    digest = hashlib.new(algorithm)
    bar = progress_bar(total=path.stat().st_size, description=f"{algorithm} {path.name}", unit="B", enabled=progress)
    with bar, path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()

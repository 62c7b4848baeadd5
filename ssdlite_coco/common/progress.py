"""The one progress bar of long steps: on stderr, redrawn often on a terminal and every 10 s in a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def progress_bar(
    iterable: Iterable | None = None, *, total: int | None = None, description: str, unit: str, enabled: bool = True
):
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``); ``unit="B"`` counts bytes as KiB, MiB."""
    from tqdm import tqdm

    in_bytes = unit == "B"
    return tqdm(
        iterable,
        total=total,
        desc=description,
        unit=unit,
        unit_scale=in_bytes,
        unit_divisor=1024 if in_bytes else 1000,
        disable=not enabled,
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )

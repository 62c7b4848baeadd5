"""What every script's ``__main__`` does: parse its arguments, run ``main``, print errors as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ssdlite_coco.common.errors import SsdliteError


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser) -> None:
    """Exit with ``main(args)``'s status (0 for None); an ``SsdliteError`` prints ``error: <message>``, exits 1."""
    args = parser.parse_args()
    try:
        status = main(args)
    except SsdliteError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(status or 0)

"""The one base class of the workflow's errors: what a script prints as ``error: <message>``.

Every stage raises its own subclass, with a one-line message that names the file, the record and the
fix; ``ssdlite_coco.common.cli.run`` turns any of them into that line and exit status 1.
"""

from __future__ import annotations


class SsdliteError(Exception):
    """A user-facing failure: bad input, a missing file, a setting that cannot work."""

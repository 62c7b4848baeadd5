"""The report's self-contained HTML pages: one style, one number format."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from ssdlite_coco.common.errors import SsdliteError


class ReportError(SsdliteError):
    """An input of the report cannot be read; the message names the file and the fix."""


def read_json(path: str | os.PathLike, what: str, fix: str) -> dict[str, Any]:
    """A stage's JSON result, or one line naming the file, what it is and ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: cannot read the {what} ({error}); {fix}") from None


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: floats to ``digits`` decimals (n/a when NaN or negative, COCOeval's "no ground truth")."""
    if isinstance(value, float):
        return "n/a" if (math.isnan(value) or value < 0) else f"{value:.{digits}f}"
    return html.escape(str(value))


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """A table of already formatted (escaped) cells."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:2px 8px;text-align:right}} th{{background:#eee}}
.warning{{color:#a00;font-weight:bold}}</style></head>
<body>
{body}</body></html>
"""

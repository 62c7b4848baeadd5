"""The report's self-contained HTML pages: one style, one number format."""

from __future__ import annotations

import html
import math
from typing import Any


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

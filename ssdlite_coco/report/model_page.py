"""The model stage's page of the report: how many training boxes the priors can match (prior_coverage.json)."""

from __future__ import annotations

import html
import os

from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.model.prior_coverage import COVERAGE_COLUMNS, coverage_rows
from ssdlite_coco.report.html_page import html_page, html_table, read_json


def prior_coverage_html(coverage_json: str | os.PathLike, out_html: str | os.PathLike) -> None:
    """The coverage table per COCO size bucket, and the model stage's warning when coverage is low."""
    report = read_json(coverage_json, "prior coverage", "re-run rule make_model")
    rows = [[html.escape(cell) for cell in row] for row in coverage_rows(report)]
    warning = report.get("warning")
    body = (
        f"<h2>Training boxes the {report['num_priors']} priors can match at IoU {report['overlap_threshold']:g}</h2>"
        + html_table(list(COVERAGE_COLUMNS), rows)
        + "<p>A box no prior matches never trains a detector: its coverage is the ceiling of the recall "
        "(MultiBoxLoss's matching, crowd boxes left out).</p>"
        + (f"<p class='warning'>{html.escape(warning)}</p>" if warning else "<p>Coverage above the warning level.</p>")
    )
    atomic_write_text(out_html, html_page("Prior coverage", body))

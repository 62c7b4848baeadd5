"""The `evaluate` keys the report's figures read (``--settings`` of scripts/plot_report.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class DetectionGridSettings:
    """Rule plot_report: how many test images the detection grid shows, and the lowest score drawn."""

    SECTION: ClassVar[str] = "evaluate"
    report_images: int
    report_score_threshold: float

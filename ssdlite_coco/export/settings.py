"""The `export` keys each rule of the export stage reads (``--settings`` of scripts/export.py, export_int8.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ExportSettings:
    """Rule export: the folding check, the calibration set and the check in every runtime."""

    SECTION: ClassVar[str] = "export"
    fold_check_images: int
    fold_tolerance: float
    fold_noise_factor: float
    calibration_images: int
    verify_images: int
    tolerance: float
    ap_tolerance: float
    reduced_precision_ap_tolerance: float
    latency_runs: int
    match_score_threshold: float
    runtimes: list[str]
    rknn_target: str


@dataclass(frozen=True)
class Int8Settings:
    """Rule export_int8: the INT8 variants and how they are judged."""

    SECTION: ClassVar[str] = "export"
    int8_variants: list[str]
    int8_max_ap_drop: float
    int8_activations: str
    verify_images: int
    latency_runs: int
    match_score_threshold: float
    rknn_target: str
